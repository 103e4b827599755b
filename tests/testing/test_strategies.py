"""loomx.testing.strategies: generated Loom content, written with ``write_loom_h5py``, is a
file loompy's LoomValidator accepts, and h5py reads back exactly the generated content.

The examples are those of the ``ci`` profile (derandomized: the same on every run), fewer.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import h5py
import loompy
import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis.errors import NoSuchExample

from loomx.testing.strategies import loom_contents, texts

FEW = settings(settings.get_profile("ci"), max_examples=12)
XML_REFERENCE = re.compile(r"&#(\d+);")


def read_text(dset: h5py.Dataset) -> np.ndarray:
    """Strings as stored: vlen UTF-8, or ASCII with XML character references (2.0.1)."""
    if h5py.check_string_dtype(dset.dtype).length is None:
        return dset.asstr()[()]
    unescape = lambda raw: XML_REFERENCE.sub(lambda m: chr(int(m[1])), raw.decode("ascii"))  # noqa: E731
    return np.vectorize(unescape, otypes=[object])(dset[()])


def assert_attr_equal(dset: h5py.Dataset, values: np.ndarray) -> None:
    assert dset.shape == values.shape, dset.name
    if values.dtype.kind == "O":
        assert list(read_text(dset).ravel()) == list(values.ravel()), dset.name
    elif values.dtype.kind == "b":
        assert dset.dtype == np.uint8, dset.name
        np.testing.assert_array_equal(dset[()], values.astype(np.uint8))
    else:
        assert dset.dtype == values.dtype, dset.name
        np.testing.assert_array_equal(dset[()], values)


@FEW
@given(loom_contents(max_side=12))
def test_generated_content_is_valid_and_reads_back(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.loom"
        content.write(path)
        validator = loompy.LoomValidator()
        assert validator.validate(str(path)), validator.errors
        with h5py.File(path, "r") as f:
            n, m = f["matrix"].shape
            for name, values in content.layers.items():
                dset = f["matrix" if name == "" else f"layers/{name}"]
                assert dset.dtype == values.dtype and dset.shape == (n, m)
                np.testing.assert_array_equal(dset[()], values)  # NaN equals NaN
                if content.chunks is not None:
                    assert dset.chunks == content.chunks
            for group, attrs in (
                ("row_attrs", content.row_attrs),
                ("col_attrs", content.col_attrs),
            ):
                assert set(f[group]) == set(attrs)
                for name, values in attrs.items():
                    assert_attr_equal(f[f"{group}/{name}"], values)
            for group, graphs in (
                ("row_graphs", content.row_graphs),
                ("col_graphs", content.col_graphs),
            ):
                assert set(f[group]) == set(graphs)
                for name, (a, b, w) in graphs.items():
                    for part, values in zip("abw", (a, b, w), strict=True):
                        np.testing.assert_array_equal(f[f"{group}/{name}/{part}"][()], values)
            if content.version == "3.0.0":
                assert f["attrs/Title"].asstr()[()] == content.global_attrs["Title"]
                stored_version = f["attrs/LOOM_SPEC_VERSION"].asstr()[()]
                numbers = f["attrs/Numbers"][()]
            else:
                title = f.attrs["Title"]
                title = title.decode("ascii") if isinstance(title, bytes) else title
                assert (
                    XML_REFERENCE.sub(lambda x: chr(int(x[1])), title)
                    == (content.global_attrs["Title"])
                )
                stored_version = f.attrs["LOOM_SPEC_VERSION"]
                numbers = f.attrs["Numbers"]
            assert stored_version == content.version
            np.testing.assert_array_equal(numbers, content.global_attrs["Numbers"])


@FEW
@given(loom_contents(max_side=6))
def test_generated_content_is_consistent(content):
    """Shapes agree across layers, attributes and graph vertices; graphs hold a
    duplicate edge; legacy text holds no ``&``."""
    n, m = content.layers[""].shape
    assert 1 <= n <= 6 and 1 <= m <= 6
    assert all(v.shape == (n, m) for v in content.layers.values())
    assert all(len(v) == n for v in content.row_attrs.values())
    assert all(len(v) == m for v in content.col_attrs.values())
    assert not set(content.row_attrs) & set(content.col_attrs)
    for graphs, size in ((content.row_graphs, n), (content.col_graphs, m)):
        for a, b, w in graphs.values():
            assert len(a) == len(b) == len(w)
            assert np.all((a >= 0) & (a < size) & (b >= 0) & (b < size))
            if len(a):
                assert (a[-1], b[-1]) == (a[0], b[0])
    if content.version != "3.0.0":
        texts = [content.global_attrs["Title"]]
        for v in [*content.row_attrs.values(), *content.col_attrs.values()]:
            if v.dtype.kind == "O":
                texts.extend(v)
        assert not any("&" in t for t in texts)
    if content.chunks is not None:
        assert 1 <= content.chunks[0] <= n and 1 <= content.chunks[1] <= m


def test_both_versions_and_many_shapes_are_generated():
    seen = []

    @settings(settings.get_profile("ci"), max_examples=40)
    @given(loom_contents(max_side=5))
    def collect(content):
        seen.append((content.version, content.layers[""].shape))

    collect()
    assert {version for version, _ in seen} == {"3.0.0", "2.0.1"}
    shapes = {shape for _, shape in seen}
    assert (1, 1) in shapes and len(shapes) > 5, shapes


def test_legacy_text_holds_no_ampersand():
    """2.0.1 files store text as XML character references: a literal ``&`` would read
    back ambiguously, so legacy text never holds one (3.0.0 text may)."""
    search = settings(settings.get_profile("ci"), max_examples=1000)
    assert "&" in find(texts(legacy=False), lambda t: "&" in t, settings=search)
    with pytest.raises(NoSuchExample):
        find(texts(legacy=True), lambda t: "&" in t, settings=search)

"""Properties: random Loom content written with h5py reads back identically, loomx's writer
reproduces it (new file and write-back), and results do not depend on ``chunks=``."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import h5py
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import loomx
from loomx.testing import assert_loom_identical, write_loom_h5py
from loomx.testing.strategies import loom_contents


def lookup(ds, space: str, name: str):
    """The variable that holds ``/{space}/{name}``, whatever the naming rule made of it."""
    if name == "":
        return ds["matrix"]
    for var in ds.variables.values():
        if var.encoding.get("loom_path") == f"/{space}/{name}":
            return var
    raise AssertionError(f"/{space}/{name} not found in {list(ds.variables)}")


def expected_attr(values: np.ndarray) -> np.ndarray:
    return values.astype(np.uint8) if values.dtype == np.bool_ else values


@given(loom_contents(), st.sampled_from(["auto", None, 1, {"row": 3, "col": 5}]))
def test_h5py_written_content_reads_back_identically(content, chunks):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.loom"
        content.write(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", loomx.LoomFormatWarning)
            ds = loomx.open_loom(path, chunks=chunks)
        for name, values in content.layers.items():
            var = lookup(ds, "layers", name)
            assert var.dtype == values.dtype
            np.testing.assert_array_equal(var.values, values)
        for space, attrs in (("row_attrs", content.row_attrs), ("col_attrs", content.col_attrs)):
            for name, values in attrs.items():
                var = lookup(ds, space, name)
                np.testing.assert_array_equal(var.values, expected_attr(values))
        for space, graphs in (("row", content.row_graphs), ("col", content.col_graphs)):
            for name, (a, b, w) in graphs.items():
                edges = ds.loom.graphs(space).edges(name)
                np.testing.assert_array_equal(edges["a"].values, a)
                np.testing.assert_array_equal(edges["b"].values, b)
                np.testing.assert_array_equal(edges["w"].values, w)
        assert ds.attrs["Title"] == content.global_attrs["Title"]
        np.testing.assert_array_equal(ds.attrs["Numbers"], content.global_attrs["Numbers"])
        assert ds.attrs["LOOM_SPEC_VERSION"] == content.version
        ds.close()


@given(
    loom_contents(max_side=60),
    st.tuples(st.integers(1, 70), st.integers(1, 70)),
    st.lists(st.integers(0, 59), min_size=1, max_size=10),
)
def test_results_do_not_depend_on_chunks(content, chunks, picks):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.loom"
        content.write(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", loomx.LoomFormatWarning)
            a = loomx.open_loom(path, chunks={"row": chunks[0], "col": chunks[1]})
            b = loomx.open_loom(path)
            c = loomx.open_loom(path, chunks=None)
        m = a.sizes["col"]
        cols = [p % m for p in picks]
        results = []
        exact_sum = np.dtype(content.layers[""].dtype).kind in "iu"  # modular: any order
        for ds in (a, b, c):
            matrix = ds["matrix"]
            results.append(
                (
                    matrix.sum("col").values if exact_sum else matrix.min("col").values,
                    matrix.max("row").values,
                    ds["matrix"].isel(col=cols).values,
                    ds["matrix"].isel(row=slice(None, None, 2), col=cols[::-1]).values,
                )
            )
        for other in results[1:]:
            for x, y in zip(results[0], other, strict=True):
                np.testing.assert_array_equal(x, y)


@settings(max_examples=200)  # more than the profile's default, in every profile
@given(loom_contents(max_side=8))
def test_loomx_writer_reproduces_h5py_written_content(content):
    """``to_loom`` to a new file, and write-back into a file of the same spec version that
    holds other values (an all-ones ``/matrix``, no attributes, no graphs, another title),
    both give a file identical to the one h5py wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        reference, new, back = (Path(tmp) / f"{k}.loom" for k in ("ref", "new", "back"))
        content.write(reference)
        matrix = content.layers[""]
        write_loom_h5py(
            back,
            {"": np.ones(matrix.shape, matrix.dtype)},
            global_attrs={"Title": "base"},
            version=content.version,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", loomx.LoomFormatWarning)
            with loomx.open_loom(reference) as ds:
                loomx.to_loom(ds, new)
                loomx.to_loom(ds, back, mode="a")
        assert_loom_identical(new, reference, check_spec_version=False)  # new files: 3.0.0
        with h5py.File(new, "r") as f:
            assert f["attrs/LOOM_SPEC_VERSION"][()] == b"3.0.0"
        assert_loom_identical(back, reference)  # write-back keeps the file's version

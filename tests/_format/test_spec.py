"""loomx._format.spec: spec versions and allowed layer dtypes, against loompy.

``read_version`` is compared with loompy's own ``get_loom_spec_version`` on the files from
the wild in tests/data and on files that store the version in either place;
``parse_version`` with ``packaging.version``; ``is_layer_dtype`` with loompy's
``LoomValidator`` on files holding a layer of each numpy dtype.
"""

from __future__ import annotations

import itertools
import warnings

import h5py
import numpy as np
import pytest
from conftest import WILD_FILES
from loompy.utils import compare_loom_spec_version, get_loom_spec_version
from packaging.version import Version

from loomx._format import spec as _spec


@pytest.mark.parametrize("path", WILD_FILES, ids=lambda p: p.name)
def test_read_version_of_files_from_the_wild_is_loompys(path):
    with h5py.File(path, "r") as f:
        version, location = _spec.read_version(f)
        assert version == get_loom_spec_version(f)
        expected = "/" if "LOOM_SPEC_VERSION" in f.attrs else None
        if expected is None and "attrs" in f and "LOOM_SPEC_VERSION" in f["attrs"]:
            expected = "/attrs"
        assert location == expected
        # 3.0.0 files store strings as vlen UTF-8: loompy writes object strings into them
        assert _spec.uses_vlen_utf8(version) == (compare_loom_spec_version(f, "3.0.0") >= 0)


@pytest.mark.parametrize(
    ("root", "group", "location"),
    [
        (None, "3.0.0", "/attrs"),
        (np.array([b"2.0.1"]), None, "/"),  # a 1-element byte array, as LoomExperiment writes
        ("2.0.1", "3.0.0", "/"),  # the root attribute wins, as in loompy
        (b" 3.0.0 ", None, "/"),
        (None, None, None),
    ],
)
def test_read_version_finds_it_where_loompy_does(tmp_path, root, group, location):
    path = tmp_path / "v.loom"
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", data=np.ones((2, 3)))
        if group is not None:
            f.create_group("attrs").create_dataset(
                "LOOM_SPEC_VERSION", data=group, dtype=h5py.string_dtype()
            )
        if root is not None:
            f.attrs["LOOM_SPEC_VERSION"] = root
    with h5py.File(path, "r") as f:
        version, found = _spec.read_version(f)
        assert version == str(get_loom_spec_version(f)).strip()
        assert found == location


@pytest.mark.parametrize(
    "versions",
    [["0.0.1", "1.0.0", "2.0.1", "2.0.10", "3.0.0", "3.1.0", "10.0.0"], ["2.0", "2.0.1", "3"]],
)
def test_parse_version_orders_as_packaging_does(versions):
    for low, high in itertools.pairwise(versions):
        assert (Version(low) < Version(high)) == (
            _spec.parse_version(low) < _spec.parse_version(high)
        )
    assert [_spec.parse_version(v) for v in versions] == [Version(v).release for v in versions]


@pytest.mark.parametrize("text", ["", "abc", "3.x.0", "..", None])
def test_unparsable_versions_read_as_zero(text):
    assert _spec.parse_version(text) == (0, 0, 0)
    assert not _spec.uses_vlen_utf8(text)


DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
DTYPES += ["float16", "float32", "float64", "complex64", "complex128", "longdouble"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_dtypes_are_those_loompys_validator_accepts(tmp_path, dtype):
    import loompy

    path = tmp_path / "d.loom"
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", data=np.zeros((3, 4), dtype=dtype))
        for group in ("layers", "row_attrs", "col_attrs", "row_graphs", "col_graphs"):
            f.create_group(group)
        f.create_group("attrs").create_dataset(
            "LOOM_SPEC_VERSION", data="3.0.0", dtype=h5py.string_dtype()
        )
    validator = loompy.LoomValidator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accepted = validator.validate(str(path), strictness="speconly")
    assert _spec.is_layer_dtype(np.dtype(dtype)) == accepted, validator.errors

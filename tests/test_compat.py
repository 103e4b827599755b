"""Every file in tests/data (copied from public repositories, see SOURCES.md) opens
read-only, unmodified, with values equal to what h5py holds."""

from __future__ import annotations

import os
import warnings

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import WILD_FILES, sha256

import loomx
from loomx import LoomFormatWarning
from loomx._format.values import xml_unescape


def open_quietly(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoomFormatWarning)
        return loomx.open_loom(path, **kwargs)


@pytest.mark.parametrize("wild_file", WILD_FILES, ids=lambda p: p.name, indirect=True)
def test_wild_file_opens_and_matches_h5py(wild_file):
    before = (sha256(wild_file), os.stat(wild_file).st_mtime_ns)
    ds = open_quietly(wild_file)
    with h5py.File(wild_file, "r") as f:
        np.testing.assert_array_equal(ds["matrix"].values, f["matrix"][:])
        assert ds["matrix"].dtype == f["matrix"].dtype
        for space, dim in (("row_attrs", "row"), ("col_attrs", "col")):
            for name, dset in f[space].items():
                var = ds[name] if name in ds.variables else ds[f"{space}:{name}"]
                assert var.dims[0] == dim
                raw = dset[()]
                if dset.dtype.names:
                    for k, field in enumerate(dset.dtype.names):
                        np.testing.assert_array_equal(var.values[:, k], raw[field])
                elif dset.dtype.kind in "SO":
                    strings = [s.decode() if isinstance(s, bytes) else s for s in raw]
                    if dset.dtype.kind == "S" and ds.encoding["loom_spec_version"] < "3":
                        strings = [xml_unescape(s) for s in strings]
                    assert list(var.values) == strings
                else:
                    np.testing.assert_array_equal(var.values, raw)
    assert float(ds["matrix"].sum()) == pytest.approx(float(ds["matrix"].values.sum()))
    ds.close()
    assert (sha256(wild_file), os.stat(wild_file).st_mtime_ns) == before


@pytest.mark.parametrize(
    "wild_file",
    [p for p in WILD_FILES if p.name.startswith("LoomExperiment")],
    ids=lambda p: p.name,
    indirect=True,
)
def test_loomexperiment_legacy_file(wild_file):
    with pytest.warns(LoomFormatWarning, match="float64"):
        ds = loomx.open_loom(wild_file)
    assert ds.encoding["loom_spec_version"] == "2.0.1"  # stored as [b'2.0.1']
    assert ds.attrs["LOOM_SPEC_VERSION"] == "2.0.1"
    assert ds.attrs["CreatedWith"] == "LoomExperiment-1.3.3"
    # the same attribute name on both axes is qualified on both
    assert "row_attrs:X_LogCV" in ds.variables and "col_attrs:X_LogCV" in ds.variables
    assert ds["row_attrs:X_LogCV"].dims == ("row",)
    knn = ds.loom.col_graphs["KNN"]
    with h5py.File(wild_file, "r") as f:
        a, b, w = (f[f"col_graphs/KNN/{p}"][:] for p in "abw")
    assert knn.shape == (20, 20)
    edges = ds.loom.col_graphs.edges("KNN")
    np.testing.assert_array_equal(edges["a"].values, a.astype(np.int64))
    np.testing.assert_array_equal(edges["b"].values, b.astype(np.int64))
    np.testing.assert_array_equal(edges["w"].values, w)
    assert edges["a"].dtype.kind == "i"
    dense = np.zeros((20, 20))
    np.add.at(dense, (a.astype(int), b.astype(int)), w)
    np.testing.assert_allclose(knn.data.todense(), dense)


@pytest.mark.parametrize(
    "wild_file",
    [p for p in WILD_FILES if p.name.startswith("SCope")],
    ids=lambda p: p.name,
    indirect=True,
)
def test_scope_file_compound_and_legacy_edges(wild_file):
    with pytest.warns(LoomFormatWarning) as record:
        ds = loomx.open_loom(wild_file)
    messages = " ".join(str(r.message) for r in record)
    assert "compound" in messages and "LOOM_SPEC_VERSION" in messages
    assert ds.encoding["loom_spec_version"] == "0.0.0"
    assert ds["Embedding"].dims == ("col", "Embedding_dim_1")
    assert list(ds["Embedding_dim_1"].values) == ["_X", "_Y"]
    assert ds["Embedding"].encoding["loom_compound_fields"] == ["_X", "_Y"]
    # the field names are a dimension coordinate: open_loom indexes it as xarray would
    assert "Embedding_dim_1" in ds.xindexes
    assert ds.sel(Embedding_dim_1="_Y")["Embedding"].dims == ("col",)
    with pytest.warns(LoomFormatWarning):
        plain = xr.open_dataset(wild_file, engine="loom")
    assert list(plain.xindexes) == list(ds.xindexes)
    assert ds["CellID"].values[0] == "cell_1"  # vlen UTF-8 in a file without a version
    assert ds.attrs["Genome"] == "Mouse"
    with h5py.File(wild_file, "r") as f:
        assert "row_edges" in f and "col_edges" in f and "col_graphs" not in f


def test_legacy_graph_groups_are_read_as_graphs(tmp_path):
    path = tmp_path / "edges.loom"
    with h5py.File(path, "w") as f:
        f["matrix"] = np.ones((3, 4))
        f.create_group("row_attrs")
        f.create_group("col_attrs")
        g = f.create_group("col_edges/nn")
        g["a"], g["b"], g["w"] = np.array([0, 3]), np.array([1, 2]), np.array([1.0, 0.5])
    with pytest.warns(LoomFormatWarning, match="legacy graph group"):
        ds = loomx.open_loom(path)
    knn = ds.loom.col_graphs["nn"]
    np.testing.assert_array_equal(knn.data.todense()[3], [0, 0, 0.5, 0])
    with h5py.File(path, "r") as f:
        assert "col_graphs" not in f  # never renamed


def test_legacy_2_0_1_strings_are_unescaped(tmp_path):
    from loomx.testing import write_loom_h5py

    path = tmp_path / "legacy.loom"
    write_loom_h5py(
        path,
        {"": np.ones((2, 3))},
        {"Gene": np.array(["café", "β-actin"])},
        {"CellID": np.array(["a", "b", "c"])},
        global_attrs={"Title": "Tëst"},
        version="2.0.1",
    )
    with h5py.File(path, "r") as f:
        assert f["row_attrs/Gene"].dtype.kind == "S"
        assert f["row_attrs/Gene"][0] == b"caf&#233;"
        assert "attrs" not in f
    ds = loomx.open_loom(path)
    assert list(ds["Gene"].values) == ["café", "β-actin"]
    assert ds.attrs["Title"] == "Tëst"
    assert ds.encoding["loom_global_attrs_location"] == "/"


def test_3_0_0_strings_are_not_unescaped(tmp_path):
    from loomx.testing import write_loom_h5py

    path = tmp_path / "v3.loom"
    write_loom_h5py(path, {"": np.ones((2, 1))}, {"Gene": np.array(["a&#233;", "日本"])})
    ds = loomx.open_loom(path)
    assert list(ds["Gene"].values) == ["a&#233;", "日本"]

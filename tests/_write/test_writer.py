"""loomx._write.writer.to_loom: complete new files and write-back into existing ones, checked
with h5py, loompy and anndata on the written files; atomic replacement, refusals while the
file is held, and ``compute=False``.
"""

from __future__ import annotations

import warnings

import h5py
import loompy
import numpy as np
import pytest
import xarray as xr
from conftest import (
    CELLS,
    GENES,
    KNN_A,
    KNN_B,
    KNN_W,
    WILD_FILES,
    anndata_read_loom,
    assert_loompy_valid,
    data_offsets,
    make_ds,
    sha256,
    temp_files,
)
from dask.delayed import Delayed

import loomx
from loomx._hdf5.filesystem import TEMPORARY_TAG
from loomx._write import stream as _stream
from loomx._write.writer import to_loom
from loomx.errors import (
    LoomFormatWarning,
    LoomWriteError,
)
from loomx.testing import assert_loom_identical, write_loom_h5py

N, M = len(GENES), len(CELLS)


# --------------------------------------------------------------------------- new files


def test_new_file_layout(tmp_path):
    path = tmp_path / "new.loom"
    ds = make_ds()
    assert to_loom(ds, path) is None
    with h5py.File(path, "r") as f:
        for group in ("attrs", "layers", "row_attrs", "col_attrs", "row_graphs", "col_graphs"):
            assert isinstance(f[group], h5py.Group)
        version = f["attrs/LOOM_SPEC_VERSION"]
        assert version.shape == () and version[()] == b"3.0.0"
        assert h5py.check_string_dtype(version.dtype).length is None
        for name, dtype in (("matrix", np.float32), ("layers/spliced", np.int32)):
            dset = f[name]
            assert dset.dtype == dtype and dset.shape == (N, M)
            assert dset.chunks == (64, 64) and dset.compression == "gzip"
            assert dset.compression_opts == 2 and dset.maxshape == (N, None)
        np.testing.assert_array_equal(f["matrix"][:], ds["matrix"].values)
        gene = f["row_attrs/Gene"]
        info = h5py.check_string_dtype(gene.dtype)
        assert info.encoding == "utf-8" and info.length is None
        assert gene.asstr()[:].tolist() == GENES.tolist()
        assert f["col_attrs/CellID"].asstr()[:].tolist() == CELLS.tolist()
        assert f["col_attrs/Valid"].dtype == np.uint8
        np.testing.assert_array_equal(f["col_attrs/Valid"][:], ds["Valid"].values.astype(np.uint8))
        assert f["col_attrs/PCA"].shape == (M, 3)
        np.testing.assert_array_equal(f["row_attrs/Score"][:], ds["row_attrs:Score"].values)
        np.testing.assert_array_equal(f["col_attrs/Score"][:], ds["col_attrs:Score"].values)
        knn = f["col_graphs/KNN"]
        assert knn["a"].dtype == np.int32 and knn["w"].dtype == np.float64
        np.testing.assert_array_equal(knn["a"][:], KNN_A)
        np.testing.assert_array_equal(knn["b"][:], KNN_B)
        np.testing.assert_array_equal(knn["w"][:], KNN_W)
        assert f["attrs/Title"].shape == () and f["attrs/Title"].asstr()[()] == "β-test é"
        assert f["attrs/Year"][()] == 2024 and f["attrs/Flag"][()] == 1
        np.testing.assert_array_equal(f["attrs/Weights"][:], np.arange(3.0))
        assert not any(k in f for k in ("row", "col", "PCA_dim_1"))  # no dimension scales
    assert temp_files(tmp_path) == []


def test_new_file_opens_in_loompy(tmp_path):
    import loompy

    path = tmp_path / "lp.loom"
    ds = make_ds()
    to_loom(ds, path)
    assert_loompy_valid(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with loompy.connect(str(path), "r") as c:
            assert c.shape == (N, M)
            np.testing.assert_array_equal(c[:, :], ds["matrix"].values)
            np.testing.assert_array_equal(c.layers["spliced"][:, :], ds["spliced"].values)
            np.testing.assert_array_equal(c.ca["PCA"], ds["PCA"].values)
            np.testing.assert_array_equal(c.ca["Valid"], ds["Valid"].values.astype(np.uint8))
            np.testing.assert_array_equal(c.ra["Score"], ds["row_attrs:Score"].values)
            assert set(c.ca.keys()) == {"CellID", "Valid", "PCA", "Score"}
            assert c.attrs["Year"] == 2024
            knn = c.col_graphs["KNN"]
            np.testing.assert_array_equal(knn.row, KNN_A)
            np.testing.assert_array_equal(knn.col, KNN_B)
            np.testing.assert_array_equal(knn.data, KNN_W)


def test_new_file_loads_in_anndata(tmp_path):
    pytest.importorskip("anndata")
    path = tmp_path / "ad.loom"
    ds = make_ds()
    to_loom(ds.rename_vars(Gene="var_names_"), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = anndata_read_loom(path, X_name="", obs_names="CellID", var_names="var_names_")
    assert adata.shape == (M, N)
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X
    np.testing.assert_allclose(x, ds["matrix"].values.T)
    assert adata.obsm["PCA"].shape == (M, 3)
    spliced = adata.layers["spliced"]
    spliced = spliced.toarray() if hasattr(spliced, "toarray") else spliced
    np.testing.assert_array_equal(spliced, ds["spliced"].values.T)


def test_roundtrip_through_reader(tmp_path):
    path = tmp_path / "rt.loom"
    ds = make_ds()
    to_loom(ds, path)
    back = loomx.open_loom(path)
    for name, var in ds.variables.items():
        expected = var.values.astype(np.uint8) if var.dtype == bool else var.values
        np.testing.assert_array_equal(back[name].values, expected, err_msg=str(name))
    assert back["Valid"].dtype == np.uint8
    assert list(back["Gene"].values) == list(GENES)  # "é", "β", "日本" survive
    assert back.attrs["Title"] == "β-test é" and back.attrs["LOOM_SPEC_VERSION"] == "3.0.0"
    assert back.attrs["Flag"] == 1
    again = tmp_path / "rt2.loom"
    to_loom(back, again)
    assert_loom_identical(again, path, check_global_dtypes=False)


def test_nan_and_inf_are_stored(tmp_path):
    ds = make_ds()
    ds["matrix"][0, :3] = [np.nan, np.inf, -np.inf]
    to_loom(ds, tmp_path / "nan.loom")
    with h5py.File(tmp_path / "nan.loom", "r") as f:
        np.testing.assert_array_equal(f["matrix"][0, :3], [np.nan, np.inf, -np.inf])


def _compound_names(path) -> list[str]:
    with h5py.File(path, "r") as f:
        return [
            name
            for group in ("row_attrs", "col_attrs")
            for name, obj in f[group].items()
            if obj.dtype.names is not None
        ]


@pytest.mark.parametrize("wild", WILD_FILES, ids=lambda p: p.name)
def test_files_from_the_wild_are_rewritten_valid(tmp_path, wild):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = loomx.open_loom(wild)
        out = tmp_path / "out.loom"
        to_loom(ds, out)
        compound = _compound_names(wild)
        if compound:  # kept compound, as SCope reads them; loompy's validator refuses those
            validator = loompy.LoomValidator()
            validator.validate(str(out))
            refused = [e for e in validator.errors if "is not allowed" in e]
            assert len(refused) == len(compound), validator.errors
            assert all(any(f"'{n}' dtype" in e for e in refused) for n in compound)
            assert validator.errors[len(refused) :] == [
                "For help, see http://linnarssonlab.org/loompy/format/"
            ]
        else:
            assert_loompy_valid(out)
        back = loomx.open_loom(out)
    for name, var in ds.variables.items():
        if name in ds.dims and name not in ds.coords:
            continue
        if name in back.variables:
            np.testing.assert_array_equal(back[name].values, var.values, err_msg=str(name))
        else:  # coordinates of compound attribute fields are not attributes
            assert set(var.dims) - {"row", "col"} == {name}
    attrs = {k: v for k, v in ds.attrs.items() if k != "LOOM_SPEC_VERSION"}
    assert {k: back.attrs[k] for k in attrs}.keys() == attrs.keys()


def test_failure_midway_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "old.loom"
    to_loom(make_ds(), path)
    digest = sha256(path)
    calls = []

    def failing(self, key, value):
        calls.append(key)
        if len(calls) > 2:
            raise OSError("disk full")
        return original(self, key, value)

    original = _stream.Sink.__setitem__
    monkeypatch.setattr(_stream.Sink, "__setitem__", failing)
    with pytest.raises(LoomWriteError, match="disk full"):
        to_loom(make_ds(seed=5), path)
    blocks = make_ds(seed=5)["matrix"].data.npartitions  # the blocks of /matrix alone
    assert 3 <= len(calls) < blocks  # failed midway (a block in flight on a thread may land)
    assert sha256(path) == digest
    assert temp_files(tmp_path) == []


def test_stale_temp_files_are_removed(tmp_path):
    stale = tmp_path / f".x.loom{TEMPORARY_TAG}999999999-new-abc"
    stale.write_bytes(b"junk")
    to_loom(make_ds(), tmp_path / "x.loom")
    assert not stale.exists()


# --------------------------------------------------------------------------- write-back


def test_write_back_new_attribute_into_open_file(tmp_path):
    path = tmp_path / "wb.loom"
    write_loom_h5py(
        path,
        {"": np.arange(N * M, dtype=np.float32).reshape(N, M), "u": np.ones((N, M), np.uint16)},
        {"Gene": GENES.astype(str)},
        {"CellID": CELLS},
        col_graphs={"KNN": (KNN_A, KNN_B, KNN_W)},
        global_attrs={"Title": "t"},
    )
    with h5py.File(path, "a") as f:  # one contiguous dataset as well
        f.create_dataset("col_attrs/Plain", data=np.arange(M))
    before = data_offsets(path)
    ds = loomx.open_loom(path, chunks={"row": 64, "col": 64})
    total = float(ds["matrix"].sum())  # the reader now holds a cached read-only handle
    to_loom(ds.assign_coords(Size=("col", np.arange(M) * 2.0)), path, mode="a")
    after = data_offsets(path)
    assert after.pop("col_attrs/Size") > 0
    assert after == before
    for name in ("CellID", "col_graphs:KNN:a", "col_graphs:KNN:w"):
        assert not ds[name].variable._in_memory  # recognised unchanged without reading it
    assert float(ds["matrix"].sum()) == total  # the live Dataset reopens and reads on
    back = loomx.open_loom(path)
    np.testing.assert_array_equal(back["Size"].values, np.arange(M) * 2.0)
    assert_loompy_valid(path)


def test_write_back_into_legacy_file_follows_its_version(tmp_path):
    path = tmp_path / "old.loom"
    write_loom_h5py(
        path, {"": np.ones((4, 3))}, {"Gene": np.array(["a", "b", "c", "d"])}, version="2.0.1"
    )
    ds = loomx.open_loom(path)
    ds = ds.assign_coords(Name=("col", np.array(["é1", "x", "日"]))).assign_attrs(Note="café")
    to_loom(ds, path, mode="a")
    with h5py.File(path, "r") as f:
        name = f["col_attrs/Name"]
        assert name.dtype.kind == "S"
        assert name[:].tolist() == [b"&#233;1", b"x", b"&#26085;"]
        assert "attrs" not in f and f.attrs["Note"] == b"caf&#233;"
        assert f.attrs["LOOM_SPEC_VERSION"] == "2.0.1"
    back = loomx.open_loom(path)
    assert back["Name"].values.tolist() == ["é1", "x", "日"]
    assert back.attrs["Note"] == "café"
    assert_loompy_valid(path)


def test_write_back_keeps_legacy_graph_group(tmp_path):
    path = tmp_path / "edges.loom"
    edges = (np.array([0, 1, 1]), np.array([1, 2, 2]), np.array([1.0, 2.0, 3.0]))
    write_loom_h5py(path, {"": np.ones((2, 3))}, col_graphs={"KNN": edges}, version="2.0.1")
    with h5py.File(path, "a") as f:
        f.move("col_graphs", "col_edges")
    with pytest.warns(LoomFormatWarning, match="legacy graph group"):
        ds = loomx.open_loom(path)
    weights = ds["col_graphs:KNN:w"].values * 10
    to_loom(
        ds.assign_coords({"col_graphs:KNN:w": ("col_graphs:KNN:edge", weights)}), path, mode="a"
    )
    with h5py.File(path, "r") as f:
        assert "col_graphs" not in f
        np.testing.assert_array_equal(f["col_edges/KNN/w"][:], [10.0, 20.0, 30.0])
        np.testing.assert_array_equal(f["col_edges/KNN/a"][:], edges[0])


def test_write_back_refused_while_file_is_open_elsewhere(tmp_path):
    path = tmp_path / "busy.loom"
    to_loom(make_ds(), path)
    digest = sha256(path)
    ds = loomx.open_loom(path).assign_coords(New=("col", np.zeros(M)))
    with h5py.File(path, "r"), pytest.raises(LoomWriteError, match="cannot open for writing"):
        to_loom(ds, path, mode="a")
    assert sha256(path) == digest
    assert temp_files(tmp_path) == []


def test_write_back_refused_during_a_read_in_progress(tmp_path):
    from loomx._read.store import LoomStore

    path = tmp_path / "pinned.loom"
    to_loom(make_ds(), path)
    digest = sha256(path)
    ds = loomx.open_loom(path).assign_coords(New=("col", np.zeros(M)))
    reading = LoomStore(path).handle.acquire()  # what a read in another thread pins
    with reading, pytest.raises(LoomWriteError, match="read of this file is in progress"):
        to_loom(ds, path, mode="a")
    assert sha256(path) == digest
    to_loom(ds, path, mode="a")  # once the read is over
    assert "New" in loomx.open_loom(path)


def test_mode_a_creates_missing_file(tmp_path):
    path = tmp_path / "fresh.loom"
    to_loom(make_ds(), path, mode="a")
    assert_loompy_valid(path)


# --------------------------------------------------------------------------- compute=False


def test_compute_false_returns_delayed(tmp_path):
    path = tmp_path / "lazy.loom"
    delayed = to_loom(make_ds(), path, compute=False)
    assert isinstance(delayed, Delayed)
    assert not path.exists()
    delayed.compute()
    assert_loompy_valid(path)
    np.testing.assert_array_equal(
        loomx.open_loom(path)["matrix"].values, make_ds()["matrix"].values
    )


def test_delayed_write_keeps_in_memory_layers_as_they_were(tmp_path):
    values = np.ones((70, 130), np.float32)
    write = to_loom(
        xr.Dataset({"matrix": (("row", "col"), values)}), tmp_path / "d.loom", compute=False
    )
    values[:] = 7
    write.compute()
    with h5py.File(tmp_path / "d.loom", "r") as f:
        np.testing.assert_array_equal(f["matrix"][:], 1)

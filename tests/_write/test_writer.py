"""loomx._write.writer.to_loom: new files, write-back, validation, atomicity and schedulers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings
import zlib
from pathlib import Path

import dask
import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import WILD_FILES, anndata_read_loom, sha256
from dask.delayed import Delayed
from hypothesis import given, settings
from hypothesis import strategies as st

import loomx
from loomx._hdf5 import codecs as _codecs
from loomx._hdf5.filesystem import TEMPORARY_TAG
from loomx._read import chunking as _chunking
from loomx._write import packing as _packing
from loomx._write import stream as _stream
from loomx._write.writer import to_loom
from loomx.errors import (
    LoomFormatError,
    LoomFormatWarning,
    LoomInvalidNameError,
    LoomWriteError,
)
from loomx.testing import assert_loom_identical, write_loom_h5py

N, M = 70, 130
GENES = np.array([f"g{i}-{'éβ日本'[i % 4]}" for i in range(N)], dtype=object)
CELLS = np.array([f"c{j}{'xé日本'[j % 4]}" for j in range(M)])
KNN_A = np.array([0, 1, 1, 5, 129, 3], dtype=np.int32)
KNN_B = np.array([1, 2, 2, 6, 0, 3], dtype=np.int32)
KNN_W = np.array([1.0, 2.0, 2.0, 3.0, 0.5, 1.5])


def make_ds(seed: int = 0, chunks: tuple[int, int] = (30, 50)) -> xr.Dataset:
    """A Dataset in loomx's model, built by hand."""
    rng = np.random.default_rng(seed)
    matrix = rng.random((N, M)).astype(np.float32)
    return xr.Dataset(
        {
            "matrix": (("row", "col"), da.from_array(matrix, chunks=chunks)),
            "spliced": (("row", "col"), rng.integers(0, 5, (N, M)).astype(np.int32)),
            "row_attrs:Score": ("row", rng.normal(size=N)),
        },
        coords={
            "Gene": ("row", GENES),
            "CellID": ("col", CELLS),
            "Valid": ("col", rng.random(M) < 0.5),
            "PCA": (("col", "PCA_dim_1"), rng.normal(size=(M, 3))),
            "col_attrs:Score": ("col", rng.normal(size=M).astype(np.float32)),
            "col_graphs:KNN": ("col", np.arange(M)),
            "col_graphs:KNN:a": ("col_graphs:KNN:edge", KNN_A),
            "col_graphs:KNN:b": ("col_graphs:KNN:edge", KNN_B),
            "col_graphs:KNN:w": ("col_graphs:KNN:edge", KNN_W),
        },
        attrs={"Title": "β-test é", "Year": 2024, "Weights": np.arange(3.0), "Flag": True},
    )


def offsets(path: str | Path) -> dict[str, int]:
    """File offset of every dataset's data (first chunk when chunked)."""
    out: dict[str, int] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and obj.size:
                info = obj.id.get_chunk_info(0) if obj.chunks else None
                out[name] = info.byte_offset if info else obj.id.get_offset()

        f.visititems(visit)
    return out


def temp_files(folder: Path) -> list[str]:
    return [p for p in os.listdir(folder) if TEMPORARY_TAG in p]


def validate(path: str | Path) -> None:
    import loompy

    validator = loompy.LoomValidator()
    assert validator.validate(str(path)), validator.errors


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
    validate(path)
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


def test_custom_dims_are_honoured(tmp_path):
    path = tmp_path / "dims.loom"
    to_loom(make_ds(), path)
    ds = loomx.open_loom(path, dims=("gene", "cell"))
    out = tmp_path / "dims2.loom"
    to_loom(ds, out)
    assert_loom_identical(out, path, check_global_dtypes=False)
    renamed = make_ds().rename({"row": "g", "col": "c"})
    third = tmp_path / "dims3.loom"
    to_loom(renamed, third)  # inferred from the dims of matrix
    assert_loom_identical(third, path)
    fourth = tmp_path / "dims4.loom"
    to_loom(loomx.open_loom(path).rename({"row": "gene"}), fourth)  # renamed after opening
    assert_loom_identical(fourth, path, check_global_dtypes=False)


def test_nan_and_inf_are_stored(tmp_path):
    ds = make_ds()
    ds["matrix"][0, :3] = [np.nan, np.inf, -np.inf]
    to_loom(ds, tmp_path / "nan.loom")
    with h5py.File(tmp_path / "nan.loom", "r") as f:
        np.testing.assert_array_equal(f["matrix"][0, :3], [np.nan, np.inf, -np.inf])


@pytest.mark.parametrize("wild", WILD_FILES, ids=lambda p: p.name)
def test_files_from_the_wild_are_rewritten_valid(tmp_path, wild):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = loomx.open_loom(wild)
        out = tmp_path / "out.loom"
        to_loom(ds, out)
        validate(out)
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


# --------------------------------------------------------------------------- graphs


def test_unmodified_graph_roundtrips_edge_exact(tmp_path):
    src = tmp_path / "g.loom"
    a = np.array([3, 3, 0, 3, 9, 1], dtype=np.int32)
    b = np.array([4, 4, 1, 4, 2, 1], dtype=np.int32)
    w = np.array([1.0, 1.0, 2.0, 0.25, 1.0, 3.0], dtype=np.float32)
    write_loom_h5py(src, {"": np.ones((5, 10))}, col_graphs={"KNN": (a, b, w)})
    out = tmp_path / "g2.loom"
    to_loom(loomx.open_loom(src), out)
    with h5py.File(out, "r") as f:
        for name, expected in zip("abw", (a, b, w), strict=True):
            got = f[f"col_graphs/KNN/{name}"]
            assert got.dtype == expected.dtype
            np.testing.assert_array_equal(got[:], expected)


def test_selected_graph_is_induced_and_renumbered(tmp_path):
    src = tmp_path / "g.loom"
    a = np.array([0, 1, 2, 3, 3])
    b = np.array([1, 2, 3, 0, 3])
    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    write_loom_h5py(src, {"": np.ones((2, 4))}, col_graphs={"G": (a, b, w)})
    ds = loomx.open_loom(src).isel(col=[3, 0, 3, 2])
    out = tmp_path / "sel.loom"
    to_loom(ds, out)
    with h5py.File(out, "r") as f:
        got = {
            (int(x), int(y), float(z))
            for x, y, z in zip(*(f[f"col_graphs/G/{p}"][:] for p in "abw"), strict=True)
        }
    # positions: 0 -> vertex 3, 1 -> vertex 0, 2 -> vertex 3, 3 -> vertex 2
    expected = {(3, 0, 3.0), (3, 2, 3.0), (0, 1, 4.0), (2, 1, 4.0)} | {
        (i, j, 5.0) for i in (0, 2) for j in (0, 2)
    }
    assert got == expected


def test_graph_out_of_range_is_refused(tmp_path):
    ds = make_ds()
    ds = ds.assign_coords({"col_graphs:KNN:a": ("col_graphs:KNN:edge", KNN_A + M)})
    with pytest.raises(LoomFormatError, match=r"/col_graphs/KNN/a.*out of range"):
        to_loom(ds, tmp_path / "bad.loom")
    assert not os.listdir(tmp_path)


# --------------------------------------------------------------------------- validation


def _bool_layer(ds):
    return ds.assign(mask=ds["spliced"] > 2)


def _slash_name(ds):
    return ds.assign_coords({"a/b": ("col", np.zeros(M))})


def _complex_attr(ds):
    return ds.assign_coords(Z=("col", np.zeros(M, dtype=complex)))


def _object_attr(ds):
    return ds.assign_coords(Z=("col", np.array([None] * M, dtype=object)))


def _unequal_graph(ds):
    return ds.drop_vars("col_graphs:KNN:w").assign_coords(
        {"col_graphs:KNN:w": ("other_edge", np.ones(2))}
    )


def _bad_global(ds):
    return ds.assign_attrs(Meta={"a": 1})


def _stray_data_var(ds):
    return ds.assign(stray=("PCA_dim_1", np.zeros(3)))


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (_bool_layer, LoomFormatError, r"/layers/mask.*bool.*uint8"),
        (_slash_name, LoomInvalidNameError, r"/col_attrs/a/b.*without '/'"),
        (_complex_attr, LoomFormatError, r"/col_attrs/Z.*complex"),
        (_object_attr, LoomFormatError, r"/col_attrs/Z.*NoneType"),
        (_unequal_graph, LoomFormatError, r"/col_graphs/KNN.*shapes"),
        (_bad_global, LoomFormatError, r"/attrs/Meta.*dict"),
        (_stray_data_var, LoomFormatError, r"'stray'"),
    ],
)
@pytest.mark.parametrize("mode", ["w", "a"])
def test_invalid_dataset_leaves_file_unchanged(tmp_path, change, error, message, mode):
    path = tmp_path / "keep.loom"
    to_loom(make_ds(), path)
    digest = sha256(path)
    ds = loomx.open_loom(path) if mode == "a" else make_ds(seed=1)
    with pytest.raises(error, match=message) as info:
        to_loom(change(ds), path, mode=mode)
    assert str(path) in str(info.value)
    assert sha256(path) == digest
    assert temp_files(tmp_path) == []


def test_missing_matrix_and_wrong_length(tmp_path):
    path = tmp_path / "m.loom"
    with pytest.raises(LoomFormatError, match="/matrix"):
        to_loom(make_ds().drop_vars("matrix"), path)
    assert not path.exists()
    to_loom(make_ds(), path)
    digest = sha256(path)
    with pytest.raises(LoomFormatError, match=r"/matrix.*shape \(70, 130\)"):
        to_loom(make_ds().isel(col=slice(10)), path, mode="a")
    assert sha256(path) == digest


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
    before = offsets(path)
    ds = loomx.open_loom(path, chunks={"row": 64, "col": 64})
    total = float(ds["matrix"].sum())  # the reader now holds a cached read-only handle
    to_loom(ds.assign_coords(Size=("col", np.arange(M) * 2.0)), path, mode="a")
    after = offsets(path)
    assert after.pop("col_attrs/Size") > 0
    assert after == before
    for name in ("CellID", "col_graphs:KNN:a", "col_graphs:KNN:w"):
        assert not ds[name].variable._in_memory  # recognised unchanged without reading it
    assert float(ds["matrix"].sum()) == total  # the live Dataset reopens and reads on
    back = loomx.open_loom(path)
    np.testing.assert_array_equal(back["Size"].values, np.arange(M) * 2.0)
    validate(path)


def _read_values(ds: xr.Dataset) -> xr.Dataset:
    ds["matrix"].values  # noqa: B018  (without dask, the values are now cached in memory)
    return ds


@pytest.mark.parametrize(
    ("chunks", "change", "reads"),
    [
        ("auto", None, False),
        (None, None, False),
        ({"col": 40}, None, False),
        ("auto", lambda ds: ds.chunk({"col": 30}), True),
        ("auto", lambda ds: ds.load(), True),
        (None, _read_values, True),
    ],
)
def test_write_back_of_unchanged_dataset_is_a_no_op(tmp_path, monkeypatch, chunks, change, reads):
    path = tmp_path / "same.loom"
    to_loom(make_ds(), path)
    digest = sha256(path)
    ds = loomx.open_loom(path, chunks=chunks)
    if chunks is not None:
        ds["matrix"].sum().compute()
    ds = change(ds) if change else ds
    blocks = []
    original = _stream.Sink.__setitem__

    def counting(self, key, value):
        blocks.append(key)
        return original(self, key, value)

    monkeypatch.setattr(_stream.Sink, "__setitem__", counting)
    to_loom(ds, path, mode="a")
    assert bool(blocks) == reads  # lazily read layers are recognised without reading them
    assert sha256(path) == digest
    assert temp_files(tmp_path) == []


def test_write_back_sees_values_changed_in_place(tmp_path):
    path = tmp_path / "inplace.loom"
    to_loom(make_ds(), path)
    ds = loomx.open_loom(path, chunks=None)
    ds["matrix"].values[0, 0] = 99.0  # same variable, same encoding, new values
    to_loom(ds, path, mode="a")
    with h5py.File(path, "r") as f:
        assert f["matrix"][0, 0] == 99.0
        np.testing.assert_array_equal(f["matrix"][1:], make_ds()["matrix"].values[1:])


def test_write_back_reads_no_attribute_it_can_tell_is_unchanged(tmp_path, monkeypatch):
    from loomx._read.store import LoomStore

    path = tmp_path / "attrs.loom"
    to_loom(make_ds(), path)
    reads = []
    original = LoomStore.read_attr

    def spy(self, attr):
        reads.append(attr.info.h5path)
        return original(self, attr)

    monkeypatch.setattr(LoomStore, "read_attr", spy)
    ds = loomx.open_loom(path)
    to_loom(ds.assign_coords(Seen=("col", np.ones(M, np.uint8))), path, mode="a")
    assert reads == []  # Gene, CellID, ... are known to be the disk's without reading them
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["col_attrs/Seen"][()], np.ones(M))


def test_write_back_of_a_held_copy_restores_what_a_later_write_replaced(tmp_path):
    """A persisted Dataset keeps the dask names open_loom gave it; once another write has
    replaced the layer on disk, writing the held copy back must restore its values."""
    path = tmp_path / "held.loom"
    to_loom(make_ds(), path)
    held = loomx.open_loom(path).persist()
    other = loomx.open_loom(path)
    to_loom(other.assign(matrix=other["matrix"] * 2), path, mode="a")
    other.close()
    to_loom(held, path, mode="a")
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["matrix"][()], make_ds()["matrix"].values)


def test_write_back_sees_attribute_values_changed_through_another_view(tmp_path):
    """Two views of one lazily read attribute share the values once read: a change made
    through one is a change of the other, and write-back must see it."""
    path = tmp_path / "views.loom"
    to_loom(make_ds(), path)
    ds = loomx.open_loom(path)
    view = ds.isel(col=slice(0, M))  # another lazily indexed view of the same attribute
    ds["CellID"].values[0] = "changed"  # reads the values (shared), then changes them
    to_loom(view, path, mode="a")  # view itself was never loaded
    assert view["CellID"].values[0] == "changed"
    with h5py.File(path, "r") as f:
        assert f["col_attrs/CellID"][0].decode() == "changed"
        assert [c.decode() for c in f["col_attrs/CellID"][1:]] == list(CELLS[1:])


def test_write_back_of_a_reordered_attribute_is_written(tmp_path):
    path = tmp_path / "sorted.loom"
    to_loom(make_ds(), path)
    ds = loomx.open_loom(path)
    reordered = ds.assign_coords(CellID=ds["CellID"][::-1].variable)
    assert reordered["CellID"].encoding.get("loom_path") == "/col_attrs/CellID"
    to_loom(reordered, path, mode="a")
    with h5py.File(path, "r") as f:
        assert [c.decode() for c in f["col_attrs/CellID"][()]] == list(CELLS[::-1])


@pytest.mark.parametrize("wild_file", WILD_FILES, ids=lambda p: p.name, indirect=True)
def test_write_back_of_unchanged_wild_file_is_a_no_op(wild_file):
    digest = sha256(wild_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = loomx.open_loom(wild_file)
        to_loom(ds.load(), wild_file, mode="a")  # in memory: every value is compared
    assert sha256(wild_file) == digest


def test_write_back_of_reordered_dataset_matches_a_new_file(tmp_path):
    path = tmp_path / "rev.loom"
    to_loom(make_ds(), path)
    ds = loomx.open_loom(path).isel(col=slice(None, None, -1))
    fresh = tmp_path / "fresh.loom"
    to_loom(ds, fresh)
    to_loom(ds, path, mode="a")  # same encodings, different data: everything is rewritten
    assert_loom_identical(path, fresh, check_global_dtypes=False)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["col_graphs/KNN/a"][:], M - 1 - KNN_A)


def test_write_back_replaces_changed_objects_only(tmp_path):
    path = tmp_path / "chg.loom"
    to_loom(make_ds(), path)
    before = offsets(path)
    ds = loomx.open_loom(path)
    expected = ds["spliced"].values * 2
    changed = ds.assign(spliced=ds["spliced"] * 2).assign_attrs(Year=2025)
    changed = changed.assign_coords(CellID=("col", np.array([f"n{j}ü" for j in range(M)])))
    to_loom(changed, path, mode="a")
    after = offsets(path)
    moved = {k for k in after if after[k] != before.get(k)}
    assert moved == {"layers/spliced", "col_attrs/CellID", "attrs/Year"}
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["layers/spliced"][:], expected)
        assert f["layers/spliced"].chunks == (64, 64)
        assert f["col_attrs/CellID"].asstr()[0] == "n0ü"
        assert f["attrs/Year"][()] == 2025
        assert not any(TEMPORARY_TAG in name for name in f["layers"])
    validate(path)
    assert temp_files(tmp_path) == []


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
    validate(path)


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
    validate(path)


# --------------------------------------------------------------------------- dask


def test_compute_false_returns_delayed(tmp_path):
    path = tmp_path / "lazy.loom"
    delayed = to_loom(make_ds(), path, compute=False)
    assert isinstance(delayed, Delayed)
    assert not path.exists()
    delayed.compute()
    validate(path)
    np.testing.assert_array_equal(
        loomx.open_loom(path)["matrix"].values, make_ds()["matrix"].values
    )


def test_unaligned_blocks_are_written_correctly(tmp_path):
    ds = make_ds(chunks=(7, 33))
    to_loom(ds, tmp_path / "u.loom")
    with h5py.File(tmp_path / "u.loom", "r") as f:
        np.testing.assert_array_equal(f["matrix"][:], ds["matrix"].values)


def _source_and_derived(tmp_path: Path) -> tuple[Path, xr.Dataset]:
    src = tmp_path / "src.loom"
    to_loom(make_ds(), src)
    ds = loomx.open_loom(src, chunks={"row": 64, "col": 64})
    ds["scaled"] = ds["matrix"] * 2 + 1
    return src, ds


@pytest.mark.parametrize("scheduler", ["threads", "sync", "processes"])
def test_local_schedulers_give_identical_files(tmp_path, scheduler):
    src, ds = _source_and_derived(tmp_path)
    reference = tmp_path / "ref.loom"
    with dask.config.set(scheduler="sync"):
        to_loom(ds, reference)
    out = tmp_path / "out.loom"
    with dask.config.set(scheduler=scheduler, num_workers=2):
        to_loom(ds, out)
        to_loom(ds.assign(back=ds["matrix"] - 1), src, mode="a")  # reads src, writes src
    assert_loom_identical(out, reference)
    with h5py.File(src, "r") as f, h5py.File(reference, "r") as r:
        np.testing.assert_array_equal(f["layers/back"][:], r["matrix"][:] - 1)


def _hold_read_handle(path: str, dask_worker: object = None) -> None:
    from loomx._read.store import LoomStore

    store = LoomStore(path)
    with store.open() as f:
        assert f["matrix"].shape == (N, M)
    dask_worker.loomx_test_store = store  # type: ignore[attr-defined]


def test_distributed_cluster_gives_identical_files(tmp_path):
    distributed = pytest.importorskip("distributed")
    src, ds = _source_and_derived(tmp_path)
    reference = tmp_path / "ref.loom"
    with dask.config.set(scheduler="sync"):
        to_loom(ds, reference)
    out = tmp_path / "out.loom"
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        to_loom(ds, out)
        ds["matrix"].sum().compute()
        client.run(_hold_read_handle, str(src))  # as a worker keeping a Dataset alive does
        to_loom(ds.assign(back=ds["matrix"] - 1), src, mode="a")
        delayed = to_loom(ds, tmp_path / "delayed.loom", compute=False)
        delayed.compute()
    assert_loom_identical(out, reference)
    assert_loom_identical(tmp_path / "delayed.loom", reference)
    with h5py.File(src, "r") as f, h5py.File(reference, "r") as r:
        np.testing.assert_array_equal(f["layers/back"][:], r["matrix"][:] - 1)


# --------------------------------------------------------------------------- chunk compression


def _h5py_reference(path: Path, values: np.ndarray, level: int = 2) -> None:
    """The layer as h5py's own gzip filter writes it, with loompy's storage settings."""
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "matrix",
            data=values,
            chunks=(min(64, values.shape[0]), min(64, values.shape[1])),
            maxshape=(values.shape[0], None),
            compression="gzip",
            compression_opts=level,
        )


def _chunk_table(dset: h5py.Dataset) -> dict[tuple[int, ...], tuple[int, bytes]]:
    out = {}
    for i in range(dset.id.get_num_chunks()):
        info = dset.id.get_chunk_info(i)
        out[info.chunk_offset] = (info.filter_mask, dset.id.read_direct_chunk(info.chunk_offset)[1])
    return out


def _chunk_box(offset: tuple[int, int], chunks: tuple[int, int] = (64, 64)) -> tuple[slice, ...]:
    return tuple(slice(o, o + c) for o, c in zip(offset, chunks, strict=True))


def _awkward_values(dtype: str, shape: tuple[int, int] = (150, 260)) -> np.ndarray:
    """Values with all-zero chunks, a chunk of -0.0, NaN and partial edge chunks."""
    rng = np.random.default_rng(3)
    values = (rng.poisson(0.3, shape) * (rng.random(shape) < 0.2)).astype(dtype)
    values[:64, 64:128] = 0
    if values.dtype.kind == "f":
        values[64:128, :64] = -0.0
        values[1, 1] = np.nan
        values[2, 2] = np.inf
        values = np.log1p(values, where=values > 0, out=values.copy())
    return values


@pytest.mark.parametrize("codec", _codecs.CODECS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int8", "uint16", "int64"])
@pytest.mark.parametrize("lazy", [True, False])
def test_compressed_chunks_read_as_h5py_gzip(tmp_path, monkeypatch, codec, dtype, lazy):
    monkeypatch.setattr(_codecs, "DEFAULT_CODEC", codec)
    values = _awkward_values(dtype)
    data = da.from_array(values, chunks=(100, 70)) if lazy else values
    path, reference = tmp_path / "out.loom", tmp_path / "h5py.h5"
    to_loom(xr.Dataset({"matrix": (("row", "col"), data)}), path)
    _h5py_reference(reference, values)
    with h5py.File(path, "r") as f, h5py.File(reference, "r") as r:
        mine, theirs = f["matrix"], r["matrix"]
        assert (mine.dtype, mine.shape, mine.chunks, mine.maxshape) == (
            theirs.dtype,
            theirs.shape,
            theirs.chunks,
            theirs.maxshape,
        )
        plist, ref_plist = mine.id.get_create_plist(), theirs.id.get_create_plist()
        filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
        assert filters == [ref_plist.get_filter(i) for i in range(ref_plist.get_nfilters())]
        assert filters == [(h5py.h5z.FILTER_DEFLATE, 1, (2,), b"deflate")]
        assert (mine.compression, mine.compression_opts, mine.shuffle) == ("gzip", 2, False)
        table, ref_table = _chunk_table(mine), _chunk_table(theirs)
        zero = {k for k in ref_table if not values[_chunk_box(k)].view(f"u{values.itemsize}").any()}
        assert (0, 64) in zero  # all-zero chunks are not stored: they read as the fill value
        assert sorted(table) == sorted(set(ref_table) - zero)
        assert len(ref_table) == 3 * 5
        assert {mask for mask, _ in table.values()} == {0}  # the deflate filter applies
        np.testing.assert_array_equal(mine[:], theirs[:])
        assert mine[:].tobytes() == values.tobytes()  # -0.0 and NaN bits kept
        assert mine[64:128, :64].tobytes() == values[64:128, :64].tobytes()
        same_stream = zlib.compress(values[:64, :64].tobytes(), 2) == ref_table[(0, 0)][1]
        if codec == "zlib" and same_stream:  # byte for byte what HDF5's own filter wrote
            assert table == {k: v for k, v in ref_table.items() if k not in zero}
    back = loomx.open_loom(path)
    np.testing.assert_array_equal(back["matrix"].values, values)


def test_compressed_layers_open_in_loompy(tmp_path):
    import loompy

    values = _awkward_values("float32")
    ds = xr.Dataset(
        {"matrix": (("row", "col"), values), "norm": (("row", "col"), da.from_array(values * 2))},
        coords={"Gene": ("row", [f"g{i}" for i in range(values.shape[0])])},
    )
    to_loom(ds, tmp_path / "l.loom")
    to_loom(ds.assign(more=ds["matrix"] + 1), tmp_path / "l.loom", mode="a")
    validate(tmp_path / "l.loom")
    with loompy.connect(str(tmp_path / "l.loom"), "r") as lp:
        np.testing.assert_array_equal(lp[:, :], values)
        np.testing.assert_array_equal(lp.layers["norm"][:, :], values * 2)
        np.testing.assert_array_equal(lp.layers["more"][:, :], values + 1)


@pytest.mark.parametrize(
    ("compression", "opts", "level"),
    [("gzip", 2, 2), ("gzip", None, 4), ("gzip", 9, 9), ("gzip", 0, 0), (None, None, None)],
)
def test_compression_settings(tmp_path, compression, opts, level):
    values = _awkward_values("float32")
    path = tmp_path / "c.loom"
    ds = xr.Dataset({"matrix": (("row", "col"), da.from_array(values, chunks=(64, 128)))})
    to_loom(ds, path, compression=compression, compression_opts=opts)
    assert _codecs.deflate_level(compression, opts) == level
    with h5py.File(path, "r") as f:
        assert f["matrix"].compression == compression
        assert f["matrix"].compression_opts == level
        np.testing.assert_array_equal(f["matrix"][:], values)


def test_lzf_layers_go_through_h5py(tmp_path):
    values = _awkward_values("float32")
    path = tmp_path / "lzf.loom"
    ds = xr.Dataset({"matrix": (("row", "col"), values)})
    to_loom(ds, path, compression="lzf", compression_opts=None)
    assert _codecs.deflate_level("lzf", None) is None
    with h5py.File(path, "r") as f:
        assert f["matrix"].compression == "lzf"
        np.testing.assert_array_equal(f["matrix"][:], values)


def test_blocks_are_compressed_where_computed(tmp_path, monkeypatch):
    packed_in, written_in = [], []
    pack, write = _codecs.pack_block, _codecs.write_packed

    def packing(*args, **kwargs):
        packed_in.append(threading.get_ident())
        return pack(*args, **kwargs)

    def writing(dset, block):
        assert all(isinstance(c, bytes) for c in block.chunks)
        written_in.append(threading.get_ident())
        return write(dset, block)

    monkeypatch.setattr(_codecs, "pack_block", packing)
    monkeypatch.setattr(_codecs, "write_packed", writing)
    values = _awkward_values("float32", (640, 640))
    ds = xr.Dataset({"matrix": (("row", "col"), da.from_array(values, chunks=(128, 128)))})
    with dask.config.set(scheduler="threads", num_workers=4):
        to_loom(ds, tmp_path / "t.loom")
    assert len(packed_in) == len(written_in) == 25  # one task per block
    assert threading.get_ident() not in packed_in  # in dask's worker threads
    with h5py.File(tmp_path / "t.loom", "r") as f:
        np.testing.assert_array_equal(f["matrix"][:], values)


def test_in_memory_layers_are_packed_in_bounded_blocks():
    values = np.zeros((5000, 6000), np.float32)
    arr = _packing.in_blocks(values, (64, 64))
    assert max(arr.chunks[0]) * max(arr.chunks[1]) * 4 <= _chunking.block_bytes()
    assert all(c % 64 == 0 for c in arr.chunks[0][:-1] + arr.chunks[1][:-1])
    assert arr.numblocks[0] * arr.numblocks[1] > 1


@settings(deadline=None)
@given(
    shape=st.tuples(st.integers(1, 150), st.integers(1, 150)),
    chunk_shape=st.tuples(st.integers(1, 70), st.integers(1, 70)),
    dtype=st.sampled_from(["float32", "int16", "uint8", "float64"]),
    permute=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_packed_chunks_are_the_blocks_values_in_hdf5_chunk_layout(
    shape, chunk_shape, dtype, permute, seed
):
    rng = np.random.default_rng(seed)
    values = (rng.random(shape) * 4 * (rng.random(shape) < 0.4)).astype(dtype)
    rows = rng.permutation(shape[0]) if permute else None
    expected = values if rows is None else values[rows]
    block = _codecs.pack_block(values, (0, 0), chunk_shape, np.dtype(dtype), 2, rows=rows)
    cr, cc = chunk_shape
    assert block.grid == (-(-shape[0] // cr), -(-shape[1] // cc))
    padded = np.zeros((block.grid[0] * cr, block.grid[1] * cc), dtype)
    padded[: shape[0], : shape[1]] = expected
    for (r, c), data in zip(block.offsets(chunk_shape), block.chunks, strict=True):
        tile = np.frombuffer(zlib.decompress(data), dtype).reshape(chunk_shape)
        np.testing.assert_array_equal(tile, padded[r : r + cr, c : c + cc])


def test_pack_block_row_order_must_index_the_block():
    values = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="index the block"):
        _codecs.pack_block(values, (0, 0), (2, 2), values.dtype, 1, rows=np.array([0, 4]))
    rows = np.array([3, 1])  # a subset is allowed: the block's rows in this order
    block = _codecs.pack_block(
        values * np.arange(4)[:, None], (0, 0), (2, 2), values.dtype, 1, rows=rows, keep_raw=True
    )
    np.testing.assert_array_equal(block.raw[:, 0], [3, 1])


def test_in_memory_blocks_are_views_not_a_copy():
    values = np.arange(200 * 300, dtype=np.float32).reshape(200, 300)
    arr = _packing.in_blocks(values, (64, 64))
    graph = dict(arr.__dask_graph__())
    blocks = [v for v in graph.values() if isinstance(v, np.ndarray)]
    assert blocks and all(np.shares_memory(b, values) for b in blocks)
    np.testing.assert_array_equal(arr.compute(), values)


def test_delayed_write_keeps_in_memory_layers_as_they_were(tmp_path):
    values = np.ones((70, 130), np.float32)
    write = to_loom(
        xr.Dataset({"matrix": (("row", "col"), values)}), tmp_path / "d.loom", compute=False
    )
    values[:] = 7
    write.compute()
    with h5py.File(tmp_path / "d.loom", "r") as f:
        np.testing.assert_array_equal(f["matrix"][:], 1)


def test_pack_block_refuses_bad_levels_and_codecs():
    with pytest.raises(ValueError, match="0-9"):
        _codecs.compressor(10)
    with pytest.raises(ValueError, match="not installed"):
        _codecs.compressor(2, "snappy")
    block = _codecs.pack_block(np.ones((3, 5), np.uint8), (64, 128), (4, 4), np.uint8, 1)
    assert block.grid == (1, 2)
    assert block.offsets((4, 4)) == [(64, 128), (64, 132)]
    assert zlib.decompress(block.chunks[1]) == bytes([1, 0, 0, 0] * 3 + [0] * 4)


def test_lzf_compression_needs_no_level(tmp_path):
    ds = xr.Dataset({"matrix": (("row", "col"), np.arange(12.0).reshape(3, 4))})
    loomx.to_loom(ds, tmp_path / "lzf.loom", compression="lzf")
    with h5py.File(tmp_path / "lzf.loom", "r") as f:
        assert f["matrix"].compression == "lzf"
    np.testing.assert_array_equal(
        loomx.open_loom(tmp_path / "lzf.loom")["matrix"].values, ds["matrix"].values
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"compression": "foo"}, {"compression_opts": 12}, {"chunks": (0, 64)}, {"chunks": (64,)}],
)
def test_bad_storage_options_refused_before_writing(tmp_path, kwargs):
    ds = xr.Dataset({"matrix": (("row", "col"), np.ones((3, 4)))})
    with pytest.raises(ValueError, match=r"compression|chunks"):
        loomx.to_loom(ds, tmp_path / "x.loom", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_writing_without_a_cluster_does_not_import_distributed(tmp_path):
    code = (
        "import sys, dask, numpy as np, xarray as xr, loomx\n"
        "ds = xr.Dataset({'matrix': (('row', 'col'), np.ones((100, 300), 'float32'))})\n"
        f"loomx.to_loom(ds.chunk({{'col': 70}}), {str(tmp_path / 'x.loom')!r})\n"
        "with dask.config.set(scheduler='sync'):\n"
        f"    loomx.to_loom(ds.chunk({{'col': 70}}), {str(tmp_path / 'z.loom')!r})\n"
        f"loomx.combine([{str(tmp_path / 'x.loom')!r}] * 2, {str(tmp_path / 'y.loom')!r})\n"
        "print('distributed' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # importing it costs about 0.15 s per process

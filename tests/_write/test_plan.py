"""loomx._write.plan: what a Dataset becomes on disk, decided before anything is written.

Dims, validation (bad input is refused and the file stays byte for byte as it was),
graphs (checked, induced on a selection, edge-exact when unmodified) and, for write-back,
what equals the disk and is left alone; checked with h5py on the written files.
"""

from __future__ import annotations

import os
import warnings

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import (
    CELLS,
    GENES,
    KNN_A,
    WILD_FILES,
    assert_loompy_valid,
    data_offsets,
    make_ds,
    sha256,
    temp_files,
)

import loomx
from loomx._hdf5.filesystem import TEMPORARY_TAG
from loomx._write import stream as _stream
from loomx._write.writer import to_loom
from loomx.errors import (
    LoomFormatError,
    LoomInvalidNameError,
)
from loomx.testing import assert_loom_identical, write_loom_h5py

N, M = len(GENES), len(CELLS)


# --------------------------------------------------------------------------- dims


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


# ------------------------------------------------------------------- what write-back leaves alone


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
    before = data_offsets(path)
    ds = loomx.open_loom(path)
    expected = ds["spliced"].values * 2
    changed = ds.assign(spliced=ds["spliced"] * 2).assign_attrs(Year=2025)
    changed = changed.assign_coords(CellID=("col", np.array([f"n{j}ü" for j in range(M)])))
    to_loom(changed, path, mode="a")
    after = data_offsets(path)
    moved = {k for k in after if after[k] != before.get(k)}
    assert moved == {"layers/spliced", "col_attrs/CellID", "attrs/Year"}
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["layers/spliced"][:], expected)
        assert f["layers/spliced"].chunks == (64, 64)
        assert f["col_attrs/CellID"].asstr()[0] == "n0ü"
        assert f["attrs/Year"][()] == 2025
        assert not any(TEMPORARY_TAG in name for name in f["layers"])
    assert_loompy_valid(path)
    assert temp_files(tmp_path) == []

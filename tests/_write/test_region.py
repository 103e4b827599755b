"""Region writes (``to_loom(mode="r+", region=...)``), deletes, repack and empty layers,
checked with h5py and loompy on the same files."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import chunk_places, sha256, temp_links

import loomx
from loomx._read import pending as _pending
from loomx._write import transaction as _journal
from loomx.errors import LoomFileError, LoomFormatError, LoomNameError, LoomWriteError
from loomx.testing import assert_loom_identical, write_loom_h5py

N, M = 150, 300


def base_file(path: Path, chunks: tuple[int, int] | None = (64, 64)) -> Path:
    rng = np.random.default_rng(0)
    write_loom_h5py(
        path,
        {"": rng.poisson(2.0, (N, M)).astype(np.float32), "spliced": rng.poisson(1.0, (N, M))},
        {"Gene": np.array([f"g{i}" for i in range(N)], dtype=object), "Len": np.arange(N)},
        {"CellID": np.array([f"c{j}" for j in range(M)], dtype=object), "Score": rng.random(M)},
        col_graphs={"KNN": (np.arange(M - 1), np.arange(1, M), np.ones(M - 1))},
        chunks=chunks,
    )
    return path


def region_ds(rows: slice, cols: slice, seed: int = 5) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    n, m = rows.stop - rows.start, cols.stop - cols.start
    return xr.Dataset(
        {
            "matrix": (("row", "col"), rng.random((n, m)).astype(np.float32)),
            "spliced": (("row", "col"), rng.integers(0, 9, (n, m))),
        }
    )


@pytest.mark.parametrize(
    ("rows", "cols"),
    [(slice(0, N), slice(100, 130)), (slice(70, 90), slice(0, M)), (slice(10, 140), slice(5, 299))],
)
def test_region_write_changes_only_the_chunks_it_touches(tmp_path, rows, cols):
    path = base_file(tmp_path / "r.loom")
    with h5py.File(path, "r") as f:
        expected = {name: f[name][:] for name in ("matrix", "layers/spliced")}
    before = {h5path: chunk_places(path, h5path) for h5path in expected}
    new = region_ds(rows, cols)
    loomx.to_loom(new, path, mode="r+", region={"row": rows, "col": cols})
    expected["matrix"][rows, cols] = new["matrix"].values
    expected["layers/spliced"][rows, cols] = new["spliced"].values
    with h5py.File(path, "r") as f:
        for h5path, values in expected.items():
            np.testing.assert_array_equal(f[h5path][:], values)
    r_lo, r_hi = rows.start // 64 * 64, rows.stop
    c_lo, c_hi = cols.start // 64 * 64, cols.stop
    for h5path, places in before.items():
        after = chunk_places(path, h5path)
        assert sorted(after) == sorted(places)
        for offset, place in places.items():
            touched = r_lo <= offset[0] < r_hi and c_lo <= offset[1] < c_hi
            if not touched:
                assert after[offset] == place, (h5path, offset)  # not rewritten, not moved
    assert temp_links(path) == []
    import loompy

    with loompy.connect(str(path), "r") as lp:
        np.testing.assert_array_equal(lp[:, :], expected["matrix"])


def test_region_write_of_attributes_and_a_lazy_selection(tmp_path):
    path = base_file(tmp_path / "r.loom")
    with h5py.File(path, "r") as f:
        matrix, score = f["matrix"][:], f["col_attrs/Score"][:]
    ds = loomx.open_loom(path)
    part = ds.isel(col=slice(40, 80))
    part = part.assign(matrix=np.log1p(part["matrix"]))
    part = part.assign_coords(Score=part["Score"] * 0 + 2.5, CellID=part["CellID"].str.upper())
    keep = ["matrix", "Score", "CellID"]
    part = part.drop_vars([v for v in part.variables if v not in keep])
    loomx.to_loom(part, path, mode="r+", region={"col": slice(40, 80)})
    ds.close()
    with h5py.File(path, "r") as f:
        expected = matrix.copy()
        expected[:, 40:80] = np.log1p(matrix[:, 40:80])
        np.testing.assert_array_equal(f["matrix"][:], expected)
        score[40:80] = 2.5
        np.testing.assert_array_equal(f["col_attrs/Score"][:], score)
        cells = [c.decode() for c in f["col_attrs/CellID"][:]]
        assert cells[39:41] == ["c39", "C40"] and cells[79:81] == ["C79", "c80"]
        assert f["col_attrs/Score"].dtype == np.float64


def test_contiguous_layers_are_rewritten_whole(tmp_path):
    path = base_file(tmp_path / "r.loom", chunks=None)
    new = region_ds(slice(0, N), slice(10, 20))
    loomx.to_loom(new, path, mode="r+", region={"col": slice(10, 20)})
    with loomx.open_loom(path) as ds:
        np.testing.assert_array_equal(ds["matrix"].values[:, 10:20], new["matrix"].values)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda ds: ds.isel(col=slice(0, 5)), LoomFormatError, "expected \\(150, 10\\)"),
        (lambda ds: ds.assign(extra=ds["matrix"]), LoomNameError, "not in the file"),
        (lambda ds: ds.assign_coords(Score=("col", ["x"] * 10)), LoomFormatError, "keeps"),
    ],
)
def test_bad_region_writes_are_refused_and_change_nothing(tmp_path, make, error, match):
    path = base_file(tmp_path / "r.loom")
    digest = sha256(path)
    new = make(region_ds(slice(0, N), slice(10, 20)))
    with pytest.raises(error, match=match):
        loomx.to_loom(new, path, mode="r+", region={"col": slice(10, 20)})
    assert sha256(path) == digest


def test_region_arguments_are_checked(tmp_path):
    path = base_file(tmp_path / "r.loom")
    new = region_ds(slice(0, N), slice(10, 20))
    with pytest.raises(ValueError, match="step 1"):
        loomx.to_loom(new, path, mode="r+", region={"col": slice(10, 20, 2)})
    with pytest.raises(ValueError, match="needs mode='r\\+'"):
        loomx.to_loom(new, path, mode="a", region={"col": slice(10, 20)})
    with pytest.raises(LoomNameError, match="region dim 'cell'"):
        loomx.to_loom(new, path, mode="r+", region={"cell": slice(10, 20)})
    with pytest.raises(LoomFormatError, match="graph"):
        ds = loomx.open_loom(path).isel(col=slice(10, 20))
        loomx.to_loom(ds, path, mode="r+", region={"col": slice(10, 20)})


def test_failed_region_write_leaves_the_file_unchanged(tmp_path, monkeypatch):
    path = base_file(tmp_path / "r.loom")
    before = tmp_path / "before.loom"
    before.write_bytes(path.read_bytes())

    def broken(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(h5py.Group, "copy", broken)
    with pytest.raises(LoomWriteError, match="region write failed, the file is unchanged"):
        loomx.to_loom(
            region_ds(slice(0, N), slice(0, 30)), path, mode="r+", region={"col": slice(0, 30)}
        )
    monkeypatch.undo()
    assert temp_links(path) == []
    assert_loom_identical(path, before)


def test_committed_patch_is_read_through_until_recovered(tmp_path, monkeypatch):
    path = base_file(tmp_path / "r.loom")
    with h5py.File(path, "r") as f:
        expected = f["matrix"][:]
    new = region_ds(slice(0, N), slice(60, 140))
    expected[:, 60:140] = new["matrix"].values
    original = _pending.apply_patch
    calls: list = []

    def half_applied(target, patch, origin, extent=None):  # copies some chunks, then fails
        calls.append(1)
        stored: list = []
        patch.id.chunk_iter(lambda info: stored.append(info.chunk_offset))
        for offset in stored[:3]:
            mask, raw = patch.id.read_direct_chunk(offset)
            target.id.write_direct_chunk((offset[0] + origin[0], offset[1] + origin[1]), raw, mask)
        raise OSError("power cut")

    monkeypatch.setattr(_journal, "apply_patch", half_applied)
    with pytest.raises(LoomWriteError, match="commit is recorded"):
        loomx.to_loom(new[["matrix"]], path, mode="r+", region={"col": slice(60, 140)})
    monkeypatch.setattr(_journal, "apply_patch", original)
    assert len(calls) == 2  # tried, then retried once
    with loomx.open_loom(path) as ds:  # readers overlay the pending patch
        np.testing.assert_array_equal(ds["matrix"].values, expected)
        np.testing.assert_array_equal(ds["matrix"][:, 50:150].values, expected[:, 50:150])
        np.testing.assert_array_equal(ds["matrix"][7, 139].values, expected[7, 139])
    assert temp_links(path)
    assert loomx.recover(path) == 1
    assert temp_links(path) == []
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["matrix"][:], expected)


def test_delete_is_all_or_nothing_and_repack_reclaims_the_space(tmp_path):
    path = base_file(tmp_path / "r.loom")
    big = np.random.default_rng(2).random((N, M))
    with loomx.open_loom(path) as ds:
        loomx.to_loom(ds.assign(big=(("row", "col"), big)), path, mode="a")
    size_with = os.path.getsize(path)
    expected = tmp_path / "expected.loom"
    expected.write_bytes(path.read_bytes())
    with h5py.File(expected, "r+") as f:
        del f["layers/big"], f["row_attrs/Len"], f["col_graphs/KNN"]
    with pytest.raises(LoomNameError, match="no variable 'nope'"):
        loomx.delete(path, ["big", "nope"])
    with pytest.raises(LoomNameError, match="main matrix"):
        loomx.delete(path, "matrix")
    with loomx.open_loom(path) as ds:
        assert "big" in ds
    loomx.delete(path, ["big", "Len", "col_graphs:KNN"])
    assert_loom_identical(path, expected)
    assert os.path.getsize(path) >= size_with  # HDF5 keeps the space
    loomx.repack(path)
    assert_loom_identical(path, expected)
    assert os.path.getsize(path) < size_with - big.nbytes // 2  # the layer's space is back
    with h5py.File(path, "r") as f, h5py.File(expected, "r") as g:
        for h5path in ("matrix", "layers/spliced"):
            assert f[h5path].chunks == g[h5path].chunks
            assert f[h5path].compression == g[h5path].compression
            assert chunk_places(path, h5path).keys() == chunk_places(expected, h5path).keys()


def test_committed_delete_reads_as_done_until_recovered(tmp_path, monkeypatch):
    path = base_file(tmp_path / "r.loom")
    original = h5py.Group.__delitem__
    seen: list = []

    def fail_after_journal(self, name):
        seen.append(name)
        if name in ("spliced", "Len"):
            raise OSError("disk on fire")
        return original(self, name)

    monkeypatch.setattr(h5py.Group, "__delitem__", fail_after_journal)
    with pytest.raises(LoomWriteError, match="commit is recorded"):
        loomx.delete(path, ["spliced", "Len"])
    monkeypatch.undo()
    with h5py.File(path, "r") as f:
        assert "spliced" in f["layers"]  # on disk: not yet deleted
    with loomx.open_loom(path) as ds:
        assert "spliced" not in ds and "Len" not in ds.coords
    assert loomx.recover(path) == 1
    with h5py.File(path, "r") as f:
        assert "spliced" not in f["layers"] and "Len" not in f["row_attrs"]


def test_repack_to_another_file_keeps_the_source(tmp_path):
    path = base_file(tmp_path / "r.loom")
    digest = sha256(path)
    loomx.repack(path, tmp_path / "out.loom")
    assert sha256(path) == digest
    assert_loom_identical(tmp_path / "out.loom", path)


def test_empty_layer_costs_no_chunks_until_written(tmp_path):
    import loompy

    path = base_file(tmp_path / "r.loom")
    with loomx.open_loom(path) as ds:
        empty = xr.zeros_like(ds["matrix"], dtype="int64")
        loomx.to_loom(ds.assign(empty=empty), path, mode="a")
    with h5py.File(path, "r") as f:
        assert f["layers/empty"].dtype == np.int64
        assert f["layers/empty"].id.get_num_chunks() == 0  # nothing stored: the fill value
    with loompy.connect(str(path), "r") as lp:
        np.testing.assert_array_equal(lp.layers["empty"][:, :], np.zeros((N, M), np.int64))
    part = xr.Dataset({"empty": (("row", "col"), np.full((N, 10), 3, np.int64))})
    loomx.to_loom(part, path, mode="r+", region={"col": slice(64, 74)})
    with h5py.File(path, "r") as f:
        assert f["layers/empty"].id.get_num_chunks() == 3  # one chunk column of 3 rows
        expected = np.zeros((N, M), np.int64)
        expected[:, 64:74] = 3
        np.testing.assert_array_equal(f["layers/empty"][:], expected)


def test_a_dataset_opened_before_a_region_write_refuses_to_mix_old_and_new(tmp_path):
    path = base_file(tmp_path / "r.loom")
    before = loomx.open_loom(path)
    old_attr = before["Score"].values  # loaded: an in-memory copy, not re-read
    new = region_ds(slice(0, N), slice(0, 70))
    loomx.to_loom(new, path, mode="r+", region={"col": slice(0, 70)})
    with pytest.raises(LoomFileError, match="region write changed its values in place"):
        _ = before["matrix"].values
    before.close()
    with loomx.open_loom(path) as after:  # opened again: the new values
        np.testing.assert_array_equal(after["matrix"].values[:, :70], new["matrix"].values)
        np.testing.assert_array_equal(after["Score"].values, old_attr)
        grown = xr.Dataset({"matrix": (("row", "col"), np.ones((N, 5), np.float32))})
    cells = {"Score": ("col", np.zeros(5)), "CellID": ("col", list("abcde"))}
    loomx.append(path, grown.assign_coords(cells), fill_values="auto")
    with loomx.open_loom(path) as after:  # an append changes no existing value: no error
        assert after.sizes["col"] == M + 5

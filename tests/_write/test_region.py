"""Region writes (``to_loom(mode="r+", region=...)``) and empty layers, checked with h5py and
loompy on the same files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import REGION_SHAPE, chunk_places, region_ds, region_file, sha256, temp_links

import loomx
from loomx.errors import LoomFileError, LoomFormatError, LoomNameError, LoomWriteError
from loomx.testing import assert_loom_identical

N, M = REGION_SHAPE


@pytest.mark.parametrize(
    ("rows", "cols"),
    [(slice(0, N), slice(100, 130)), (slice(70, 90), slice(0, M)), (slice(10, 140), slice(5, 299))],
)
def test_region_write_changes_only_the_chunks_it_touches(tmp_path, rows, cols):
    path = region_file(tmp_path / "r.loom")
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
    path = region_file(tmp_path / "r.loom")
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
    path = region_file(tmp_path / "r.loom", chunks=None)
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
    path = region_file(tmp_path / "r.loom")
    digest = sha256(path)
    new = make(region_ds(slice(0, N), slice(10, 20)))
    with pytest.raises(error, match=match):
        loomx.to_loom(new, path, mode="r+", region={"col": slice(10, 20)})
    assert sha256(path) == digest


def test_region_arguments_are_checked(tmp_path):
    path = region_file(tmp_path / "r.loom")
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
    path = region_file(tmp_path / "r.loom")
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


def test_empty_layer_costs_no_chunks_until_written(tmp_path):
    import loompy

    path = region_file(tmp_path / "r.loom")
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
    path = region_file(tmp_path / "r.loom")
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


@pytest.mark.parametrize("fail", [False, True])
def test_region_chunks_are_written_by_the_writer_thread(tmp_path, monkeypatch, fail):
    """A region is packed while one writer thread writes its chunks into the spool (a file
    no reader sees); a failing chunk write fails the write and leaves the file as it was."""
    from conftest import record_writer_threads

    path = region_file(tmp_path / "r.loom")
    before = path.read_bytes()
    writers = record_writer_threads(monkeypatch, fail_at=2 if fail else None)
    rows, cols = slice(0, N), slice(0, 200)
    new = region_ds(rows, cols).chunk({"col": 64})
    if fail:
        with pytest.raises(OSError, match="disk full"):
            loomx.to_loom(new, path, mode="r+", region={"row": rows, "col": cols})
        assert path.read_bytes() == before
        return
    loomx.to_loom(new, path, mode="r+", region={"row": rows, "col": cols})
    assert writers and set(writers) == {"loomx-writer"}
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["matrix"][:, cols], new["matrix"].values)

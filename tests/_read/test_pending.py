"""loomx._read.pending: readers overlay a commit that is recorded in the file but not
carried out (grown and patched layers and attributes, deleted objects), without changing
the file, until ``loomx.recover`` carries it out; checked with h5py on the file's bytes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import (
    MORE_CELLS,
    REGION_SHAPE,
    SMALL_SHAPE,
    assert_appended,
    more_cells,
    region_ds,
    region_file,
    small_file,
    temp_links,
)

import loomx
from loomx._read import pending as _pending
from loomx._write import transaction as _transaction
from loomx.errors import LoomWriteError

(N, M), K = SMALL_SHAPE, MORE_CELLS


def test_commit_recorded_but_not_finished_reads_as_new_and_recovers(tmp_path, monkeypatch):
    path = small_file(tmp_path / "a.loom")
    applied: list = []

    def resized_only(target, patch, origin, extent=None):  # grows the layer, copies nothing
        applied.append(target.name)
        target.resize(extent)
        raise OSError("disk on fire")

    monkeypatch.setattr(_transaction, "apply_patch", resized_only)
    with pytest.raises(LoomWriteError, match=r"commit is recorded.*loomx\.recover"):
        loomx.append(path, more_cells())
    monkeypatch.undo()
    assert len(applied) == 2 and applied[0] == applied[1]  # tried, then retried once
    grown, other = applied[0], {"/matrix", "/layers/spliced"} - {applied[0]}
    with h5py.File(path, "r") as f:  # on disk: one grown, new columns not copied in yet
        assert f[grown].shape == (N, M + K)
        np.testing.assert_array_equal(f[grown][:, M:], 0)
        assert f[other.pop()].shape == (N, M)
        assert len(_pending.read_pending_commits(f)) == 1
    assert_appended(path)  # readers apply the journal (grown, patched) without changing it
    assert len(temp_links(path)) > 1
    assert loomx.recover(path) == 1
    assert temp_links(path) == []
    assert_appended(path)
    with h5py.File(path, "r") as f:
        assert f["matrix"].shape == f["layers/spliced"].shape == (N, M + K)
        np.testing.assert_array_equal(f["matrix"][:, M:], more_cells()["matrix"].values)


def test_pending_patches_of_layers_and_attributes_read_as_appended(tmp_path, monkeypatch):
    path = tmp_path / "a.loom"
    with loomx.open_loom(small_file(tmp_path / "h5py.loom")) as ds:
        ds = ds.load()
        for var in ds.variables.values():
            var.encoding = {}  # loomx's storage: chunked attributes that grow in place
        loomx.to_loom(ds, path)
    calls: list = []

    def resized_only(target, patch, origin, extent=None):
        calls.append(target.name)
        target.resize(extent)
        raise OSError("disk on fire")

    monkeypatch.setattr(_transaction, "apply_patch", resized_only)
    with pytest.raises(LoomWriteError, match="commit is recorded"):
        loomx.append(path, more_cells())
    monkeypatch.undo()
    with h5py.File(path, "r") as f:
        patched = {
            p.h5path
            for j in _pending.read_pending_commits(f)
            for ps in j.patches(f).values()
            for p in ps
        }
        assert any("CellID" in p for p in patched) and any("matrix" in p for p in patched)
    assert_appended(path)  # grown attributes and layers, read through their patches
    assert loomx.recover(path) == 1
    assert_appended(path)
    assert temp_links(path) == []


def test_committed_patch_is_read_through_until_recovered(tmp_path, monkeypatch):
    path = region_file(tmp_path / "r.loom")
    with h5py.File(path, "r") as f:
        expected = f["matrix"][:]
    new = region_ds(slice(0, REGION_SHAPE[0]), slice(60, 140))
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

    monkeypatch.setattr(_transaction, "apply_patch", half_applied)
    with pytest.raises(LoomWriteError, match="commit is recorded"):
        loomx.to_loom(new[["matrix"]], path, mode="r+", region={"col": slice(60, 140)})
    monkeypatch.setattr(_transaction, "apply_patch", original)
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


def test_committed_delete_reads_as_done_until_recovered(tmp_path, monkeypatch):
    path = region_file(tmp_path / "r.loom")
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

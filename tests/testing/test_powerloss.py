"""loomx.testing.powerloss, the power-cut model itself on small inputs: what it records
of a write replays to the bytes the write left on disk when nothing is dropped; fsynced
writes stay, unsynced ones are lost, kept, torn or kept in part; a new name needs its
folder fsynced.  (Every write path of loomx under this model: tests/safety.)"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

import loomx
from loomx.testing.hostile import small_loom
from loomx.testing.powerloss import Op, RecordingDisk, RecordingFile, crash_states, record


def final_state(ops: list[Op], files: dict[str, bytes], path: str, view: str = ""):
    """The state after every operation with every write kept (``view`` "+rename": with
    every name change too).  Equal states are given once: "kept" is left out when it
    equals "lost" (everything synced)."""
    states = {s.variant: s for s in crash_states(ops, files, path, steps=[len(ops)], subsets=0)}
    return states.get("kept" + view) or states["lost" + view]


def test_replay_model(tmp_path):
    """The replay itself: synced writes stay, unsynced ones go, renames need the folder
    fsynced."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ops = [
        Op("write", a, 0, b"xy"),
        Op("sync", a),
        Op("write", a, 1, b"zzzz"),
        Op("create", b),
        Op("write", b, 0, b"new"),
        Op("sync", b),
        Op("rename", b, target=a),
        Op("sync", str(tmp_path)),
    ]
    states = {(s.step, s.variant): s.data for s in crash_states(ops, {a: b"old"}, a, subsets=1)}
    assert states[(0, "lost")] == b"old"
    assert states[(1, "lost")] == b"old" and states[(1, "kept")] == b"xyd"
    assert states[(3, "lost")] == b"xyd" and states[(3, "kept")] == b"xzzzz"
    assert states[(3, "torn")] == b"xzz"  # the first half of the unsynced write
    assert states[(7, "lost")] == b"xyd"  # the rename may not have reached the disk
    assert states[(7, "lost+rename")] == b"new"
    assert states[(8, "lost")] == b"new"
    assert (8, "lost+rename") not in states


def test_truncate_and_subsets(tmp_path):
    a = str(tmp_path / "a")
    ops = [Op("write", a, 4, b"EF"), Op("truncate", a, 2), Op("write", a, 0, b"Z")]
    states = list(crash_states(ops, {a: b"abcd"}, a, steps=[3], subsets=6, seed=1))
    found = {s.data for s in states}
    assert b"abcd" in found and b"Zb" in found  # all lost, all kept
    assert found <= {b"abcd", b"Zb", b"abcdEF", b"ab", b"Zbcd", b"ZbcdEF"}
    assert len(found) == len(states)  # each crash state once
    again = list(crash_states(ops, {a: b"abcd"}, a, steps=[3], subsets=6, seed=1))
    assert [(s.variant, s.data) for s in again] == [(s.variant, s.data) for s in states]


def test_a_new_name_needs_its_folder_fsynced(tmp_path):
    new = str(tmp_path / "new")
    ops = [Op("create", new), Op("write", new, 0, b"data"), Op("sync", new)]
    states = {s.variant: s.data for s in crash_states(ops, {}, new, steps=[3])}
    assert states["lost"] is None  # the name is not durable: no file
    assert states["lost+rename"] == b"data"
    ops.append(Op("sync", str(tmp_path)))
    assert {s.data for s in crash_states(ops, {}, new, steps=[4])} == {b"data"}


def test_h5py_through_a_recording_file_replays_to_its_bytes(tmp_path):
    path = str(tmp_path / "r.h5")
    log: list[Op] = []
    with h5py.File(RecordingFile(path, "w", log), "w") as f:
        f.create_dataset("x", data=np.arange(1000.0), chunks=(100,), compression="gzip")
        f.attrs["a"] = "b"
    assert log[0] == Op("create", os.path.abspath(path))
    assert {op.kind for op in log[1:]} <= {"write", "truncate"}
    data = Path(path).read_bytes()
    assert final_state(log, {}, path, "+rename").data == data
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["x"][()], np.arange(1000.0))


def test_recorded_new_file_replays_to_the_written_bytes(tmp_path):
    target = str(tmp_path / "x.loom")
    ds = xr.Dataset({"matrix": (("row", "col"), np.arange(35, dtype=np.float32).reshape(5, 7))})
    ops = record(lambda: loomx.to_loom(ds, target))
    written = Path(target).read_bytes()
    assert {"create", "write", "sync", "rename"} <= {op.kind for op in ops}
    assert final_state(ops, {}, target).data == written
    assert crash_states(ops, {}, target, steps=[0]).__next__().data is None
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["matrix"][()], ds["matrix"].values)


def test_recorded_write_back_replays_to_the_written_bytes(tmp_path):
    target = small_loom(str(tmp_path / "x.loom"))
    before = Path(target).read_bytes()
    score = np.arange(12) * 3.0
    ops = record(
        lambda: loomx.to_loom(xr.Dataset(coords={"Score": ("row", score)}), target, mode="a")
    )
    written = Path(target).read_bytes()
    assert written != before
    assert final_state(ops, {target: before}, target).data == written
    assert next(iter(crash_states(ops, {target: before}, target, steps=[0]))).data == before
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["row_attrs/Score"][()], score)


def test_recording_disk_logs_and_follows_renames(tmp_path):
    log: list[Op] = []
    disk = RecordingDisk(log)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    fd = disk.open(a, os.O_RDWR | os.O_CREAT)
    disk.write(fd, b"hello", 0)
    disk.sync(fd)
    disk.rename(a, b)
    disk.write(fd, b"J", 0)  # the open file now has the new name
    disk.truncate(fd, 3)
    disk.sync_folder(b)
    disk.close(fd)
    disk.remove(b)
    assert [(op.kind, op.path) for op in log] == [
        ("create", a),
        ("write", a),
        ("sync", a),
        ("rename", a),
        ("write", b),
        ("truncate", b),
        ("sync", str(tmp_path)),
        ("remove", b),
    ]
    assert log[3].target == b and not os.path.exists(b)
    assert final_state(log[:-1], {}, b).data == b"Jel"

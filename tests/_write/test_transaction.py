"""Commits into existing files are all-or-nothing: journal, roll forward, roll back, recover."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import MORE_CELLS, SMALL_SHAPE, assert_appended, more_cells, small_file, temp_links

import loomx
from loomx._hdf5.filesystem import TEMPORARY_TAG
from loomx._read import pending as _pending
from loomx._write import append as _append
from loomx._write import transaction as _transaction
from loomx.cli import main as cli_main
from loomx.errors import LoomWriteError

(N, M), K = SMALL_SHAPE, MORE_CELLS
DEAD_PID = 999_999_999


def fail_moves_after(monkeypatch, calls: int, times: int | None = None) -> list:
    """Make ``h5py.Group.move`` raise from call ``calls + 1`` on (``times`` times)."""
    original = h5py.Group.move
    seen: list = []

    def move(self, source, dest):
        seen.append((source, dest))
        failures = len(seen) - calls
        if failures > 0 and (times is None or failures <= times):
            raise OSError("disk on fire")
        return original(self, source, dest)

    monkeypatch.setattr(h5py.Group, "move", move)
    return seen


def test_error_during_swap_is_retried_and_the_append_completes(tmp_path, monkeypatch):
    path = small_file(tmp_path / "a.loom")
    seen = fail_moves_after(monkeypatch, calls=1, times=1)  # the journal's rename, then one
    loomx.append(path, more_cells())
    monkeypatch.undo()
    assert len(seen) > 2
    assert_appended(path)
    assert temp_links(path) == []


def test_next_write_finishes_a_dead_writers_commit_before_comparing(tmp_path, monkeypatch):
    path = small_file(tmp_path / "a.loom")
    fail_moves_after(monkeypatch, calls=1)
    with pytest.raises(LoomWriteError, match="commit is recorded"):
        loomx.append(path, more_cells())
    monkeypatch.undo()
    _rename_owner(path, os.getpid(), DEAD_PID)
    ds = loomx.open_loom(path)
    assert ds.sizes["col"] == M + K
    # write back a column attribute of the new width: the commit must be finished first
    loomx.to_loom(ds.assign_coords(Score=("col", np.arange(M + K) / 3)), path, mode="a")
    ds.close()
    assert temp_links(path) == []
    back = loomx.open_loom(path)
    np.testing.assert_array_equal(back["Score"].values, np.arange(M + K) / 3)
    assert_appended(path)


def _rename_owner(path: Path, pid: int, new_pid: int) -> None:
    """Make every temporary link of ``pid`` look as if ``new_pid`` had left it."""
    old, new = f"{TEMPORARY_TAG}{pid}-", f"{TEMPORARY_TAG}{new_pid}-"
    with h5py.File(path, "r+") as f:
        for journal in _pending.read_pending_commits(f):
            rows = np.array(
                [[p, s.replace(old, new), n] for p, s, n in journal.entries], dtype=object
            )
            dset = f[journal.name]
            dset[...] = rows
        groups = ["/"] + [g for g in f if isinstance(f[g], h5py.Group)]
        for g in groups:
            for name in [k for k in f[g] if k.startswith(old)]:
                f[g].move(name, name.replace(old, new))


def test_staged_objects_without_journal_are_rolled_back(tmp_path):
    path = small_file(tmp_path / "a.loom")
    tag = f"{TEMPORARY_TAG}{DEAD_PID}-0badcafe-"
    with h5py.File(path, "r+") as f:  # a dead writer staged a replacement and a new object
        f["col_attrs"].create_dataset(tag + "CellID", data=np.arange(M))
        f["col_attrs"].create_dataset(tag + "Fresh", data=np.arange(M))
    ds = loomx.open_loom(path)
    assert "Fresh" not in ds and ds["CellID"].dtype == object
    ds.close()
    assert loomx.recover(path) == 0
    assert temp_links(path) == []
    ds = loomx.open_loom(path)
    assert "Fresh" not in ds and ds["CellID"].values[0] == "c0"


def test_legacy_root_attributes_are_part_of_the_commit(tmp_path, monkeypatch):
    path = small_file(tmp_path / "old.loom", version="2.0.1")
    ds = loomx.open_loom(path)
    assert ds.encoding["loom_spec_version"] == "2.0.1"
    changed = ds.assign_coords(Score=("col", np.arange(M) * 1.0))
    changed.attrs = {**ds.attrs, "Title": "after"}
    ds.close()
    fail_moves_after(monkeypatch, calls=1)
    with pytest.raises(LoomWriteError, match="commit is recorded"):
        loomx.to_loom(changed, path, mode="a")
    monkeypatch.undo()
    with h5py.File(path, "r") as f:
        assert "Score" not in f["col_attrs"]
    seen = loomx.open_loom(path)
    assert seen.attrs["Title"] == "after"
    np.testing.assert_array_equal(seen["Score"].values, np.arange(M) * 1.0)
    seen.close()
    assert cli_main(["recover", str(path)]) == 0
    with h5py.File(path, "r") as f:
        title = f.attrs["Title"]
        assert (title.decode() if isinstance(title, bytes) else title) == "after"
        assert "Score" in f["col_attrs"]
    assert temp_links(path) == []


def test_keyboard_interrupt_while_staging_rolls_back(tmp_path, monkeypatch):
    path = small_file(tmp_path / "a.loom")

    original = _append.create_attr

    def interrupted(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(_append, "create_attr", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loomx.append(path, more_cells())
    monkeypatch.undo()
    assert temp_links(path) == []
    assert loomx.open_loom(path).sizes["col"] == M


def test_keyboard_interrupt_after_the_commit_point_finishes_it(tmp_path, monkeypatch):
    path = small_file(tmp_path / "a.loom")
    original = h5py.Group.move
    calls: list = []

    def move(self, source, dest):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, source, dest)

    monkeypatch.setattr(h5py.Group, "move", move)
    with pytest.raises(KeyboardInterrupt):
        loomx.append(path, more_cells())
    monkeypatch.undo()
    assert temp_links(path) == []
    assert_appended(path)


def test_leftovers_of_this_process_are_stale_once_their_write_has_ended(tmp_path):
    path = small_file(tmp_path / "a.loom")
    tag = f"{TEMPORARY_TAG}{os.getpid()}-feedf00d-"
    with h5py.File(path, "r+") as f:
        f["col_attrs"].create_dataset(tag + "Fresh", data=np.arange(M))
    loomx.recover(path)
    assert temp_links(path) == []


def test_without_file_locking_a_live_writers_links_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "FALSE")  # then only pids tell who is alive
    path = small_file(tmp_path / "a.loom")
    parent = os.getppid()  # alive, and not this process
    tag = f"{TEMPORARY_TAG}{parent}-feedf00d-"
    with h5py.File(path, "r+") as f:
        f["col_attrs"].create_dataset(tag + "Fresh", data=np.arange(M))
    loomx.recover(path)
    assert temp_links(path) == [f"col_attrs/{tag}Fresh"]


def _pending_score(path: Path, pid: int, value: float) -> None:
    """A commit of process ``pid`` recorded in ``path`` but not carried out: Score."""
    tag = f"{TEMPORARY_TAG}{pid}-0ddba11a-"
    with h5py.File(path, "r+") as f:
        f["col_attrs"].create_dataset(tag + "Score", data=np.full(M, value))
        rows = np.array([["/col_attrs", tag + "Score", "Score"]], dtype=object)
        f.create_dataset(tag[:-1] + ".journal", data=rows, dtype=h5py.string_dtype())


def test_with_file_locking_any_other_writers_commit_is_finished_first(tmp_path):
    path = small_file(tmp_path / "a.loom")
    _pending_score(path, 1, 111.0)  # pid 1 is alive, but it cannot hold the file: locking
    ds = loomx.open_loom(path)
    np.testing.assert_array_equal(ds["Score"].values, 111.0)
    assert ds["Score"].encoding["loom_path"] == "/col_attrs/Score"  # its final name
    loomx.to_loom(ds.assign_coords(Score=("col", np.full(M, 222.0))), path, mode="a")
    ds.close()
    assert temp_links(path) == []
    with loomx.open_loom(path) as back:  # the later write wins, readers and disk agree
        np.testing.assert_array_equal(back["Score"].values, 222.0)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["col_attrs/Score"][()], 222.0)


def test_a_failure_before_the_journal_is_renamed_leaves_nothing_applied(tmp_path, monkeypatch):
    path = small_file(tmp_path / "old.loom", version="2.0.1")
    ds = loomx.open_loom(path)
    changed = ds.assign_coords(Score=("col", np.arange(M) * 1.0))
    changed.attrs = {**ds.attrs, "Title": "after"}
    ds.close()
    calls: list = []

    def fsync(name):
        calls.append(name)
        raise OSError("disk on fire")

    monkeypatch.setattr(_transaction, "fsync", fsync)
    with pytest.raises(LoomWriteError, match=r"unchanged.*disk on fire"):
        loomx.to_loom(changed, path, mode="a")
    monkeypatch.undo()
    assert calls  # failed with the journal drafted, before its rename
    assert temp_links(path) == []
    with loomx.open_loom(path) as back:
        assert back.attrs["Title"] == "before" and "Score" not in back


def test_missing_groups_are_staged_too(tmp_path, monkeypatch):
    path = small_file(tmp_path / "a.loom")
    with h5py.File(path, "r+") as f:
        del f["layers"]  # a file without the group
    ds = loomx.open_loom(path).assign(norm=lambda d: d["matrix"] * 2)
    fail_moves_after(monkeypatch, calls=0)  # the commit fails before its point
    with pytest.raises(LoomWriteError, match="unchanged"):
        loomx.to_loom(ds, path, mode="a")
    monkeypatch.undo()
    with h5py.File(path, "r") as f:
        assert "layers" not in f and temp_links(path) == []
    loomx.to_loom(ds, path, mode="a")
    with loomx.open_loom(path) as back:
        np.testing.assert_array_equal(back["norm"].values, back["matrix"].values * 2)
    ds.close()


def test_globals_stay_where_the_file_keeps_them(tmp_path):
    path = small_file(tmp_path / "a.loom")
    with h5py.File(path, "r+") as f:  # a 3.0.0 file with globals as root attributes
        del f["attrs"]
        f.attrs["LOOM_SPEC_VERSION"] = "3.0.0"
        f.attrs["Title"] = "root title"
    ds = loomx.open_loom(path)
    assert ds.attrs["Title"] == "root title"
    changed = ds.copy()
    changed.attrs = {**ds.attrs, "Year": 2026}
    loomx.to_loom(changed, path, mode="a")
    ds.close()
    with loomx.open_loom(path) as back:
        assert back.attrs["Title"] == "root title" and back.attrs["Year"] == 2026
    with h5py.File(path, "r") as f:
        assert "attrs" not in f


def test_unreadable_journal_and_unreadable_files_give_loomx_errors(tmp_path):
    path = small_file(tmp_path / "a.loom")
    with h5py.File(path, "r+") as f:
        f.create_dataset(f"{TEMPORARY_TAG}{DEAD_PID}-0badf00d.journal", data=np.arange(4))
    with pytest.warns(loomx.LoomFormatWarning, match="ignored a pending loomx commit"):
        loomx.open_loom(path).close()  # an unreadable journal is not applied
    with pytest.warns(loomx.LoomFormatWarning, match="journal"):
        loomx.recover(path)  # and is removed
    with h5py.File(path, "r") as f:
        assert not [name for name in f if TEMPORARY_TAG in name]
    junk = tmp_path / "junk.loom"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(loomx.LoomFileError, match="not an HDF5 file"):
        loomx.append(junk, more_cells())
    with pytest.raises(loomx.LoomFileError, match="no such file"):
        loomx.recover(tmp_path / "missing.loom")

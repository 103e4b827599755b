"""Simulated power loss for every write path (loomx.testing.powerloss).

Each writer runs once with its file operations recorded; then the target is rebuilt as a
crash at every recorded step would leave it, and must hold the old or the new content
after ``loomx.recover``, read completely with h5py, hold no temporary objects and take the
next write.  Writes already fsynced are on disk; unsynced ones are lost, or (for new
files renamed into place) lost, kept, torn or kept in any part.

In-place writers (write-back, append, region writes, delete) go through the rollback
journal below HDF5 (``loomx._hdf5.rollback``): the file and its journal are rebuilt together,
with the unsynced writes of both lost, kept, torn or kept in part, crash points inside
HDF5's flushes included (HDF5 rewrites existing metadata in place there).  A file left
with a journal is refused by readers until ``loomx.recover`` restores it.

``LOOMX_POWERLOSS_STEPS`` caps the crash points per write path (default 0: every step);
``LOOMX_POWERLOSS_SUBSETS`` sets how many random subsets of the unsynced writes are kept
per crash point (default 3; the full run takes 30).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

import loomx
from loomx._hdf5.filesystem import TEMPORARY_TAG
from loomx._hdf5.journal import SUFFIX, journal_path
from loomx.testing import assert_loom_identical
from loomx.testing.hostile import small_loom
from loomx.testing.powerloss import CrashState, crash_states, record, tag_from_journal

STEPS = int(os.environ.get("LOOMX_POWERLOSS_STEPS", "0"))
SUBSETS = int(os.environ.get("LOOMX_POWERLOSS_SUBSETS", "3"))
N, M = 12, 20


def write_back(folder: Path, target: str) -> None:
    with loomx.open_loom(target) as src:
        ds = src.load()
    ds = ds.assign_coords(Score=("row", np.arange(N) * 3.0), New=("col", np.arange(M)))
    ds["extra"] = ds["matrix"] * 2
    loomx.to_loom(ds, target, mode="a")


def new_file(folder: Path, target: str) -> None:
    ds = xr.Dataset({"matrix": (("row", "col"), np.ones((5, 7), np.float32))})
    loomx.to_loom(ds, target)


def append(folder: Path, target: str) -> None:
    more = xr.Dataset(
        {
            "matrix": (("row", "col"), np.ones((N, 6), np.float32)),
            "spliced": (("row", "col"), np.ones((N, 6), np.int64)),
        },
        coords={
            "Gene": ("row", [f"g{i}é" for i in range(N)]),
            "CellID": ("col", [f"n{j}" for j in range(6)]),
            "X": (("col", "X_dim_1"), np.zeros((6, 2))),
        },
    )
    loomx.append(target, more, key="Gene")


def combine(folder: Path, target: str) -> None:
    second = small_loom(str(folder / "second.loom"))
    loomx.combine([str(folder / "first.loom"), second], target, key="Gene")


def region(folder: Path, target: str) -> None:
    values = xr.Dataset(
        {
            "matrix": (("row", "col"), np.full((N, 8), 7, np.float32)),
            "spliced": (("row", "col"), np.full((N, 8), 3, np.int64)),
        }
    )
    loomx.to_loom(values, target, mode="r+", region={"col": slice(4, 12)})


def delete(folder: Path, target: str) -> None:
    loomx.delete(target, ["Score", "spliced"])


WRITERS: dict[str, Callable[[Path, str], None]] = {
    "write-back": write_back,
    "new-file": new_file,
    "append": append,
    "combine": combine,
    "region": region,
    "delete": delete,
}
IN_PLACE = {"write-back", "append", "region", "delete"}


def replay(tmp_path: Path, name: str) -> tuple[list, bytes, str, Path, Path]:
    """Record the writer ``name`` on a fresh target; return its operations, the old
    bytes, the target, and copies of the old and the new file."""
    folder = tmp_path / "work"
    folder.mkdir()
    small_loom(str(folder / "first.loom"))
    target = str(folder / "x.loom")
    small_loom(target, chunks=(4, 4))  # the old content (combine replaces it)
    before = Path(target).read_bytes()
    ops = record(lambda: WRITERS[name](folder, target))
    after = Path(target).read_bytes()
    assert before != after
    assert not os.path.exists(journal_path(target))  # committed: no journal left
    old, new = tmp_path / "old.loom", tmp_path / "new.loom"
    old.write_bytes(before)
    new.write_bytes(after)
    return ops, before, target, old, new


def check_state(state: CrashState, folder: Path, old: Path, new: Path, next_write: bool) -> str:
    """Recover the crashed file (with its rollback journal, if the crash left one); it
    must be the old or the new content, complete."""
    assert state.data is not None, f"step {state.step} {state.variant}: the file is gone"
    path = folder / "state.loom"
    path.write_bytes(state.data)
    journal = Path(journal_path(path))
    saved = [v for k, v in state.files.items() if k.endswith(SUFFIX)]
    if saved and saved[0] is not None:
        journal.write_bytes(saved[0])
        tag_from_journal(path)  # the crashed file itself, rebuilt here
        with pytest.raises(loomx.LoomFileError, match="loomx recover"):  # readers refuse it
            loomx.open_loom(path)
    else:
        journal.unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loomx.recover(path)
    assert not journal.exists()
    outcome = "old"
    try:
        assert_loom_identical(path, old)
    except AssertionError:
        assert_loom_identical(path, new)
        outcome = "new"
    with h5py.File(path, "r") as f:  # every object readable by other tools
        found: list[str] = []
        f.visititems(lambda n, obj: found.append(n) if TEMPORARY_TAG in n else None)
        f.visititems(lambda n, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
    assert found == []
    if next_write:
        with loomx.open_loom(path) as ds:
            width = ds.sizes["col"]
        later = xr.Dataset(coords={"Later": ("col", np.arange(width) * 1.5)})
        loomx.to_loom(later, path, mode="a")
        with loomx.open_loom(path) as ds:
            np.testing.assert_array_equal(ds["Later"].values, np.arange(width) * 1.5)
    return outcome


def crash_points(ops: list) -> list[int]:
    every = list(range(len(ops) + 1))
    if STEPS <= 0 or len(every) <= STEPS:
        return every
    syncs = {i for i, op in enumerate(ops) if op.kind in ("sync", "rename", "remove")}
    around = {k for i in syncs for k in (i, i + 1)}
    spread = {round(i * len(ops) / (STEPS - 1)) for i in range(STEPS)}
    return sorted((around | spread) & set(every))


def replay_all(tmp_path: Path, name: str) -> tuple[list, list[tuple[int, str]], Counter]:
    """Check every crash state of the writer ``name``; return its operations, the
    (step, outcome) of the states whose names are durable, and counts."""
    ops, before, target, old, new = replay(tmp_path, name)
    after = new.read_bytes()
    counts: Counter = Counter()
    seen: list[tuple[int, str]] = []
    states = crash_states(
        ops,
        {target: before},
        target,
        crash_points(ops),
        subsets=SUBSETS,
        also=(journal_path(target),),
    )
    for i, state in enumerate(states):
        try:
            outcome = check_state(state, tmp_path, old, new, next_write=i % 7 == 0)
        except Exception as err:
            raise AssertionError(f"{name}: crash at step {state.step} ({state.variant})") from err
        counts[outcome] += 1
        counts["states"] += 1
        if any(v is not None for k, v in state.files.items() if k.endswith(SUFFIX)):
            counts["with journal"] += 1
            counts["half-written file"] += state.data not in (before, after)
        if "rename" not in state.variant:
            seen.append((state.step, outcome))
    print(f"{name}: {len(ops)} operations, {dict(counts)}")
    assert counts["old"] and counts["new"], counts
    # all old up to the commit point, all new after it
    first_new = min(step for step, outcome in seen if outcome == "new")
    assert all((outcome == "new") == (step >= first_new) for step, outcome in seen), seen
    counts["original size"] = len(before)
    return ops, seen, counts


@pytest.mark.parametrize("name", ["new-file", "combine"])
def test_crash_at_every_step_leaves_old_or_new(tmp_path, name):
    ops, seen, _ = replay_all(tmp_path, name)
    first_new = min(step for step, outcome in seen if outcome == "new")
    renames = [i for i, op in enumerate(ops) if op.kind == "rename"]
    assert first_new == renames[-1] + 2  # the rename, made durable by its folder's fsync


@pytest.mark.parametrize("name", sorted(IN_PLACE))
def test_in_place_writes_survive_partial_flushes(tmp_path, name):
    """Crashes anywhere, inside HDF5's flushes too, with any part of the unsynced writes
    of the file and of its rollback journal on disk: recover gives the old or new file."""
    ops, seen, counts = replay_all(tmp_path, name)
    journal = journal_path(tmp_path / "work" / "x.loom")
    assert counts["half-written file"], counts  # crashes inside flushes were replayed
    # the commit point: the journal's removal, made durable by its folder's fsync
    removed = max(i for i, op in enumerate(ops) if op.kind == "remove" and op.path == journal)
    folder = os.path.dirname(journal)
    commit = min(i for i, op in enumerate(ops) if i > removed and op.path == folder)
    first_new = min(step for step, outcome in seen if outcome == "new")
    assert first_new == commit + 1, (first_new, commit)
    # the journal is durable before the file's first byte inside its original size
    # changes: created under another name, fsynced, renamed, its folder fsynced
    created = min(i for i, op in enumerate(ops) if op.kind == "rename" and op.target == journal)
    assert ops[created - 1].kind == "sync" and ops[created + 1].path == folder
    target = str(tmp_path / "work" / "x.loom")
    overwrites = [
        i
        for i, op in enumerate(ops)
        if op.kind in ("write", "truncate")
        and op.path == target
        and op.offset < counts["original size"]
    ]
    assert overwrites and created + 1 < overwrites[0], (created, overwrites[:3])


def test_recording_sees_the_commit_protocol(tmp_path):
    """The recorded write-back has the journal's fsyncs after its flushes; a new file is
    fsynced before it is renamed into place and its folder after."""
    (tmp_path / "a").mkdir()
    ops = replay(tmp_path / "a", "write-back")[0]
    assert [op.kind for op in ops].count("sync") >= 3
    (tmp_path / "b").mkdir()
    kinds = [op.kind for op in replay(tmp_path / "b", "new-file")[0]]
    assert kinds.index("sync") < kinds.index("rename") < len(kinds) - 1
    assert kinds[-1] == "sync"

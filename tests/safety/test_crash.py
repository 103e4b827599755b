"""Writers killed with SIGKILL leave the previous data readable, and the next write succeeds.

A child process runs ``to_loom`` (``mode="w"``, ``mode="a"``, a ``mode="r+"`` region write),
``append`` or ``delete`` with every
file-changing step wrapped: before and after each block written, object copied, link moved
or deleted, flush, fsync and rename, it prints the step and waits for a line on stdin.  The
parent kills the child's whole process group (its dask worker processes too) with SIGKILL
when the chosen step is reached, so each kill point is deterministic.  Blocks are computed
by the sync scheduler, by worker processes (``-processes``) or by a ``LocalCluster``
(``-distributed``).  ``-inside`` scenarios also step at every single write, truncation,
fsync and removal of the rollback layer below HDF5 (``loomx._hdf5.rollback``), so that kills
fall inside HDF5's flushes.  A kill that leaves a rollback journal leaves a file readers
refuse until ``loomx.recover`` restores the old bytes.  After each kill the file must read
as all old or all new, say the same after ``loomx.recover``, and take the next write.
``LOOMX_CRASH_ROUNDS`` sets how many kill points each scenario tries (default 4, spread
over the whole write; 0 means every step).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import temp_links

import loomx
from loomx._hdf5.filesystem import TEMPORARY_TAG
from loomx._hdf5.journal import journal_path
from loomx._write.writer import to_loom
from loomx.testing import assert_loom_identical

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

ROUNDS = int(os.environ.get("LOOMX_CRASH_ROUNDS", "4"))
N, M = 150, 260

CHILD = r"""
import functools, os, sys, threading
import dask, h5py, numpy as np, xarray as xr
import loomx
from loomx._hdf5 import filesystem as _filesystem
from loomx._write import transaction as _transaction
from loomx._write import stream as _stream

path, scenario, n, m = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lock = threading.RLock()


def step(name):
    with lock:
        sys.stdout.write(name + "\n")
        sys.stdout.flush()
        if not sys.stdin.readline():
            os._exit(3)


def wrap(owner, attr, name):
    original = getattr(owner, attr)

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        step("before " + name)
        out = original(*args, **kwargs)
        step("after " + name)
        return out

    setattr(owner, attr, wrapped)


for owner, attr in [
    (_stream.Sink, "__setitem__"),
    (h5py.Group, "copy"),
    (h5py.Group, "move"),
    (h5py.Group, "__delitem__"),
    (h5py.File, "flush"),
    (_transaction, "fsync"),
    (_filesystem, "fsync"),
    (os, "replace"),
    (_transaction, "apply_patch"),
]:
    wrap(owner, attr, f"{getattr(owner, '__name__', owner)}.{attr}")

if scenario.endswith("-inside"):  # kill points between the writes of HDF5's flushes
    from loomx._hdf5 import journal as _rollback_journal

    for attr in ("write", "truncate", "sync", "remove"):
        wrap(_rollback_journal.Disk, attr, f"Disk.{attr}")
    scenario = scenario[: -len("-inside")]
if scenario.endswith("-flushed"):  # a test build: every link swap reaches the file at once
    for attr in ("move", "__delitem__"):
        swap = getattr(h5py.Group, attr)

        def flushed(self, *args, _swap=swap, **kwargs):
            out = _swap(self, *args, **kwargs)
            self.file.flush()
            return out

        setattr(h5py.Group, attr, flushed)
    scenario = scenario[: -len("-flushed")]
rng = np.random.default_rng(1)
scenario, _, scheduler = scenario.partition("-")
scheduler = scheduler or "sync"  # sync: the same steps in the same order every run
if scheduler == "distributed":  # steps in this process come in the same number every run
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    scheduler = client.get
with dask.config.set(scheduler=scheduler):
    if scenario == "w":
        matrix = rng.random((n, m)).astype(np.float32)
        ds = xr.Dataset({"matrix": (("row", "col"), matrix)}, {"Score": ("col", -rng.random(m))})
        loomx.to_loom(ds.chunk({"row": 64, "col": 128}), path)
    elif scenario == "region":
        region = xr.Dataset(
            {"matrix": (("row", "col"), np.full((n, 130), 7, np.float32))},
            {"Score": ("col", np.full(130, 0.25))},
        )
        loomx.to_loom(region.chunk({"col": 64}), path, mode="r+", region={"col": slice(70, 200)})
    elif scenario == "delete":
        loomx.delete(path, ["Score", "Gene"])
    elif scenario == "a":
        ds = loomx.open_loom(path, chunks={"row": 64, "col": 128})
        ds = ds.assign(norm=np.log1p(ds["matrix"]))
        loomx.to_loom(ds.assign_coords(Score=("col", np.arange(m) / 7)), path, mode="a")
    else:
        k = m // 2
        more = xr.Dataset(
            {"matrix": (("row", "col"), np.full((n, k), 5, np.float32))},
            {"Score": ("col", np.arange(k) + 0.5)},
        )
        loomx.append(path, more.chunk({"col": 64}))
print("done", flush=True)
"""


def original_ds() -> xr.Dataset:
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {"matrix": (("row", "col"), rng.poisson(1.0, (N, M)).astype(np.float32))},
        coords={
            "Gene": ("row", [f"g{i}" for i in range(N)]),
            "Score": ("col", rng.random(M)),
        },
        attrs={"Title": "before"},
    )


def new_w_ds() -> xr.Dataset:
    rng = np.random.default_rng(1)
    matrix = rng.random((N, M)).astype(np.float32)
    return xr.Dataset(
        {"matrix": (("row", "col"), matrix)}, coords={"Score": ("col", -rng.random(M))}
    )


def run_child(path: Path, scenario: str, kill_at: int | None) -> tuple[list[str], bool]:
    """Run the writer; kill it with SIGKILL on step ``kill_at`` (1-based).

    Returns the steps seen and whether the child was killed.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), scenario, str(N), str(M)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # SIGKILL the whole group: its worker processes die too
    )
    steps: list[str] = []
    killed = False
    try:
        for line in child.stdout:
            line = line.strip()
            if line == "done":
                break
            steps.append(line)
            if len(steps) == kill_at:
                os.killpg(child.pid, signal.SIGKILL)
                killed = True
                break
            child.stdin.write("\n")
            child.stdin.flush()
    finally:
        child.stdin.close()
        rc = child.wait(timeout=60)
        child.stdout.close()
        if killed:
            _wait_for_group_exit(child.pid)
    assert rc == (-signal.SIGKILL if killed else 0), (rc, steps)
    return steps, killed


def _wait_for_group_exit(pgid: int, timeout: float = 30.0) -> None:
    """Wait until every process of group ``pgid`` (the writer's dask worker processes too)
    has exited: a killed process holds its HDF5 file lock until then."""
    import time

    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for proc in psutil.process_iter(["pid", "status"]):
            try:
                if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc.pid)
            except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
                continue
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes {alive} of the killed writer are still running")


def read_everything(path: Path) -> dict[str, np.ndarray]:
    """Every dataset read in full with h5py (a damaged object fails here)."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return out


def temp_files(folder: Path) -> list[str]:
    return [p for p in os.listdir(folder) if TEMPORARY_TAG in p]


def as_read(path: Path) -> dict[str, np.ndarray]:
    """Layers, attributes and globals as loomx reads them."""
    with loomx.open_loom(path) as ds:
        out = {str(k): v.values for k, v in ds.variables.items()}
        out.update({f"attrs:{k}": np.asarray(v) for k, v in ds.attrs.items()})
    return out


def kill_points(steps: list[str], around: tuple[str, ...] = ("os.replace",)) -> list[int]:
    """Kill points (1-based step numbers): ``ROUNDS`` spread over the whole write, plus
    every step naming one of ``around`` (the rename of a new file into place; the link
    swaps where each is flushed)."""
    total = len(steps)
    if ROUNDS <= 0 or total <= ROUNDS:
        return list(range(1, total + 1))
    spread = {round(1 + i * (total - 1) / (ROUNDS - 1)) for i in range(ROUNDS)}
    named = {i + 1 for i, step in enumerate(steps) if any(a in step for a in around)}
    return sorted(spread | named)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "scenario",
    [
        "w",
        "a",
        "append",
        "region",
        "delete",
        "a-processes",
        "append-distributed",
        "region-processes",
        "a-flushed",
        "a-inside",
        "append-inside",
    ],
)
def test_sigkill_keeps_previous_data(tmp_path, scenario):
    kind = scenario.partition("-")[0]  # what is written; after "-", the dask scheduler
    path = tmp_path / "x.loom"
    base = original_ds()
    to_loom(base, path)
    pristine = path.read_bytes()
    before = tmp_path / "before.loom"
    before.write_bytes(pristine)
    matrix, score = base["matrix"].values, base["Score"].values
    new = new_w_ds()

    steps, killed = run_child(path, scenario, None)  # a complete run: count the steps
    assert not killed and len(steps) > 6, steps
    assert temp_files(tmp_path) == []
    outcomes = set()
    flushed = scenario.endswith("-flushed")  # kill between swaps that each reached the file
    around = ("os.replace", "Group.move", "Group.__delitem__") if flushed else ("os.replace",)
    points = kill_points(steps, around)
    if scenario.endswith("-inside"):  # kills between single writes of the file and journal
        writes = [i + 1 for i, step in enumerate(steps) if step == "before Disk.write"]
        stride = 1 if ROUNDS <= 0 else max(1, len(writes) // ROUNDS)
        points = sorted(set(points) | set(writes[::stride]))
    rolled_back = Counter()  # kills that left a rollback journal, by the step killed at
    for kill_at in points:
        path.write_bytes(pristine)
        seen, killed = run_child(path, scenario, kill_at)
        assert killed and seen == steps[:kill_at]
        if os.path.exists(journal_path(path)):  # killed mid-write: maybe half written
            with pytest.raises(loomx.LoomFileError, match="loomx recover"):
                loomx.open_loom(path)  # readers refuse it and never change it
            loomx.recover(path)  # the journal's bytes back: the old file
            assert not os.path.exists(journal_path(path))
            assert_loom_identical(path, before)
            rolled_back[steps[kill_at - 1].split(" ", 1)[-1]] += 1
        if kind not in ("region", "append"):
            read_everything(path)  # every object on disk readable with h5py
        # killed while a committed patch (region write, appended columns) is copied in, the
        # layer is mixed on disk until recover(): loomx readers overlay the patch, h5py
        # reads it after recover
        with h5py.File(path, "r") as f:
            journal_left = any(name.endswith(".journal") for name in f)
        ds = loomx.open_loom(path)
        if scenario == "w":
            old = np.array_equal(ds["matrix"].values, matrix)
            if old:
                assert temp_links(path) == []
                assert_loom_identical(path, before)
            else:  # renamed into place: the complete new file
                np.testing.assert_array_equal(ds["matrix"].values, new["matrix"].values)
                np.testing.assert_array_equal(ds["Score"].values, new["Score"].values)
            outcomes.add("old" if old else "new")
        elif kind == "a":
            np.testing.assert_array_equal(ds["matrix"].values, matrix)
            np.testing.assert_array_equal(ds["Gene"].values, base["Gene"].values)
            assert ds.attrs["Title"] == "before"
            replaced = not np.array_equal(ds["Score"].values, score)
            assert ("norm" in ds) == replaced  # all or nothing
            if replaced:
                np.testing.assert_array_equal(ds["Score"].values, np.arange(M) / 7)
                np.testing.assert_array_equal(ds["norm"].values, np.log1p(matrix))
            outcomes.add(replaced)
            assert not (journal_left and replaced)  # rolled back below HDF5 instead
        elif kind == "region":
            written = not np.array_equal(ds["Score"].values, score)
            expected, expected_score = matrix.copy(), score.copy()
            if written:  # all or nothing: every chunk of the region and the attribute
                expected[:, 70:200], expected_score[70:200] = 7, 0.25
            np.testing.assert_array_equal(ds["matrix"].values, expected)
            np.testing.assert_array_equal(ds["Score"].values, expected_score)
            outcomes.add(written)
        elif kind == "delete":
            assert ("Score" in ds.coords) == ("Gene" in ds.coords)  # all or nothing
            np.testing.assert_array_equal(ds["matrix"].values, matrix)
            outcomes.add("Score" in ds.coords)
        else:
            width = ds.sizes["col"]
            assert width in (M, M + M // 2)
            np.testing.assert_array_equal(ds["matrix"].values[:, :M], matrix)
            np.testing.assert_array_equal(ds["Score"].values[:M], score)
            if width > M:
                np.testing.assert_array_equal(ds["matrix"].values[:, M:], 5)
                np.testing.assert_array_equal(ds["Score"].values[M:], np.arange(M // 2) + 0.5)
            outcomes.add(width)
        ds.close()

        seen_by_readers = as_read(path)
        loomx.recover(path)  # on disk now as readers saw it, nothing temporary left
        assert temp_links(path) == []
        read_everything(path)
        recovered = as_read(path)
        assert sorted(recovered) == sorted(seen_by_readers)
        for name, values in seen_by_readers.items():
            np.testing.assert_array_equal(recovered[name], values, err_msg=name)

        path.write_bytes(pristine)
        run_child(path, scenario, kill_at)
        later = original_ds().assign(matrix=base["matrix"] * 3).assign_coords(Score=("col", -score))
        hot = os.path.exists(journal_path(path))  # then the next write restores it first
        if kind == "append" and not hot and loomx.open_loom(path).sizes["col"] > M:
            later = later.isel(col=np.arange(M + M // 2) % M)
        to_loom(later, path, mode="a")  # a later write succeeds and cleans up after the dead
        assert temp_files(tmp_path) == []
        assert temp_links(path) == []
        with loomx.open_loom(path) as back:
            np.testing.assert_array_equal(back["matrix"].values, later["matrix"].values)
            np.testing.assert_array_equal(back["Score"].values, later["Score"].values)
    assert len(outcomes) >= (2 if len(points) >= 4 else 1), outcomes
    print(scenario, f"{len(points)} kill points, rolled back after", dict(rolled_back))
    if flushed:  # half-swapped files were really met, and rolled back to the old content
        assert rolled_back["Group.move"] + rolled_back["Group.__delitem__"] >= 2, rolled_back
    if scenario.endswith("-inside"):  # killed between the writes of a flush
        assert rolled_back["Disk.write"] >= 2, rolled_back
    if scenario == "w":
        assert {i for i, step in enumerate(steps, 1) if "os.replace" in step} <= set(points)

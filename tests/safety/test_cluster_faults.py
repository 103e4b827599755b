"""Faults on a real cluster: a ``dask scheduler`` process and ``dask worker`` processes
(no nanny, so a killed worker stays dead), started and always torn down by each test.

- a worker killed in the middle of a reduction: dask recomputes its tasks elsewhere and
  the result is still correct;
- a worker killed during a write-back: the write fails with a clear error and the file
  reads as before;
- the scheduler gone: a clear error within a bounded time, the file unchanged; the
  command line says so in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import run_cli, temp_links

import loomx
from loomx.testing import assert_loom_identical, make_counts_loom, make_example_loom
from loomx.testing.servers import RangeHTTPServer

distributed = pytest.importorskip("distributed")

DASK = Path(sys.executable).with_name("dask")
TESTS = Path(__file__).parent
"""Workers import this module (the tasks' functions) and ``tests/conftest.py`` it uses."""
START_TIMEOUT = 120  # seconds for processes to come up on a loaded machine


class Cluster:
    """A scheduler and ``n`` single-threaded workers, each its own process."""

    def __init__(self, folder: Path, n_workers: int, env: dict[str, str]) -> None:
        self.procs: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            **env,
            "PYTHONPATH": os.pathsep.join(map(str, (TESTS, TESTS.parent))),
        }
        file = folder / "scheduler.json"
        where = ["--host", "127.0.0.1", "--port", "0", "--scheduler-file", str(file)]
        self.scheduler = self._start("scheduler", *where, "--no-dashboard")
        deadline = time.monotonic() + START_TIMEOUT
        while not (file.exists() and file.read_text().strip()):
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                raise RuntimeError("the dask scheduler did not start")
            time.sleep(0.1)
        self.address = json.loads(file.read_text())["address"]
        options = ["--no-nanny", "--nthreads", "1", "--no-dashboard", "--death-timeout", "30"]
        self.workers = [
            self._start("worker", self.address, *options, "--memory-limit", "0", "--name", f"w{i}")
            for i in range(n_workers)
        ]

    def _start(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [str(DASK), *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def client(self) -> distributed.Client:
        client = distributed.Client(self.address, timeout="60s")
        client.wait_for_workers(len(self.workers), timeout=START_TIMEOUT)
        return client

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(timeout=30)


@contextlib.contextmanager
def cluster(folder: Path, n_workers: int = 2, **env: str) -> Iterator[Cluster]:
    started = Cluster(folder, n_workers, env)
    try:
        yield started
    finally:
        started.stop()


def tasks_in_memory(client: distributed.Client) -> int:
    return client.run_on_scheduler(
        lambda dask_scheduler: sum(t.state == "memory" for t in dask_scheduler.tasks.values())
    )


def wait_until(condition, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the cluster"
        time.sleep(0.05)


def slowly(block: np.ndarray, seconds: float = 0.15) -> np.ndarray:
    time.sleep(seconds)
    return block


def kill_own_worker(block: np.ndarray, block_info=None) -> np.ndarray:
    """Kill the worker process computing the block at row-chunk 2 (a poisoned task)."""
    if block_info is not None and block_info[0]["chunk-location"][0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return block * 2


@pytest.mark.parametrize("where", ["local", "http"])
def test_worker_killed_during_a_reduction_gives_the_correct_result(tmp_path, where):
    """Workers reopen the file (a path, or a URL served over loopback HTTP) from the
    picklable store; the killed worker's tasks are recomputed on the other one."""
    path = make_example_loom(tmp_path / "ex.loom", 300, 700)
    with h5py.File(path, "r") as f:
        expected = f["matrix"][()].astype(np.float64).sum(axis=1)
    with contextlib.ExitStack() as stack:
        source: str | Path = path
        if where == "http":
            server = stack.enter_context(RangeHTTPServer(tmp_path))
            source = server.url("ex.loom")
        ds = loomx.open_loom(source, chunks={"row": 64, "col": 64})
        total = ds["matrix"].astype(np.float64).data.map_blocks(slowly).sum(axis=1)
        result = reduce_while_killing_a_worker(tmp_path, total)
        if where == "http":
            assert server.requests > 0
    np.testing.assert_allclose(result, expected, rtol=1e-12)


def reduce_while_killing_a_worker(tmp_path: Path, total) -> np.ndarray:
    with cluster(tmp_path) as c, c.client() as client:
        victim = c.workers[0]
        assert victim.pid in client.run(os.getpid).values()
        future = client.compute(total)
        wait_until(lambda: tasks_in_memory(client) >= 10 or future.done())
        assert not future.done()  # killed in the middle, not after
        os.kill(victim.pid, signal.SIGKILL)
        result = future.result(timeout=300)
        assert victim.wait(timeout=30) == -signal.SIGKILL
        assert len(client.scheduler_info()["workers"]) == 1
    return result


def test_worker_killed_during_write_back_leaves_the_file_as_before(tmp_path):
    path = make_example_loom(tmp_path / "ex.loom", 300, 700)
    before = shutil.copy(path, tmp_path / "before.loom")
    ds = loomx.open_loom(path, chunks={"row": 64, "col": 700})
    doubled = ds["matrix"].copy(data=ds["matrix"].data.map_blocks(kill_own_worker))
    with (
        cluster(tmp_path, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0") as c,
        c.client(),
        pytest.raises(distributed.KilledWorker, match="Attempted to run task"),
    ):
        loomx.to_loom(ds.assign(doubled=doubled), path, mode="a")
    ds.close()
    assert_loom_identical(path, before)
    assert temp_links(path) == []
    with loomx.open_loom(path) as reread:
        assert "doubled" not in reread


def test_scheduler_gone_is_a_clear_error_and_the_file_is_unchanged(tmp_path):
    path = make_example_loom(tmp_path / "ex.loom", 300, 700)
    before = shutil.copy(path, tmp_path / "before.loom")
    ds = loomx.open_loom(path, chunks={"row": 64, "col": 64})
    slow = ds["matrix"].copy(data=ds["matrix"].data.map_blocks(slowly))
    with cluster(tmp_path) as c, c.client() as client:
        started = time.monotonic()
        timer = threading.Timer(
            0.5,
            lambda: (
                wait_until(lambda: tasks_in_memory(client) >= 3),
                os.kill(c.scheduler.pid, signal.SIGKILL),
            ),
        )
        timer.start()
        try:
            with pytest.raises(loomx.LoomWriteError, match="lost the connection to") as err:
                loomx.to_loom(ds.assign(slow=slow), path, mode="a")
        finally:
            timer.join()
        assert time.monotonic() - started < 120  # no hang
    assert c.address in str(err.value) and err.value.path == str(path)
    ds.close()
    assert_loom_identical(path, before)


def test_cli_says_in_one_line_that_the_scheduler_is_gone(tmp_path):
    path = make_counts_loom(tmp_path / "counts.loom", 400, 800)
    before = shutil.copy(path, tmp_path / "before.loom")
    with cluster(tmp_path, n_workers=1) as c:
        c.client().close()
        os.kill(c.scheduler.pid, signal.SIGKILL)
        c.scheduler.wait(timeout=30)
        result = run_cli("qc", path, "--scheduler", c.address, "--quiet", timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loomx: ") and c.address in lines[0]
    assert_loom_identical(path, before)

"""Shared measurement code for ``test_read.py`` and ``run_report.py``.

Every full pass computes the per-row sums of ``/matrix`` (``ds["matrix"].sum("col")``, what
``loompy``'s ``ds.map([np.sum], axis=0)`` returns), so all methods can be checked against the
same reference.  A :class:`Method` has a ``setup`` (not timed: open files, start pools and
clusters), a timed ``run`` and a ``teardown``.

Peak memory is measured in a fresh child process (``python _harness.py METHOD FILE``): the
child sets the method up, reports ``READY``, waits for ``GO`` on stdin,
runs the method twice (the first run pays the one-time costs of a fresh process: lazy imports,
thread pools, workers importing loomx, HDF5 files opened) and reports both wall times and its
own exact peak RSS over both runs (``VmHWM``, reset just before the first run); meanwhile the
parent samples the summed RSS of the child and all its descendants (pool, dask and
``distributed`` worker processes) with psutil.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

BAND_ROWS = 256
"""Rows per band for the h5py ceiling (a multiple of loompy's 64-row chunks)."""

SAMPLE_INTERVAL_S = 0.005
"""How often the parent samples the RSS of the measured process tree."""


def ncores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class FileFacts:
    """Shape and storage facts of ``/matrix``."""

    path: str
    shape: tuple[int, int]
    dtype: str
    chunks: tuple[int, ...] | None
    compression: str | None
    compression_opts: Any
    size_mb: float
    raw_mb: float


def file_facts(path: str | os.PathLike) -> FileFacts:
    """Read ``/matrix``'s shape, dtype, chunks and compression (no data)."""
    with h5py.File(path, "r") as f:
        d = f["matrix"]
        shape = (int(d.shape[0]), int(d.shape[1]))
        return FileFacts(
            path=str(path),
            shape=shape,
            dtype=str(d.dtype),
            chunks=d.chunks,
            compression=d.compression,
            compression_opts=d.compression_opts,
            size_mb=Path(path).stat().st_size / 1e6,
            raw_mb=shape[0] * shape[1] * d.dtype.itemsize / 1e6,
        )


def warm_page_cache(path: str | os.PathLike) -> float:
    """Read the whole file once so the OS page cache is equally warm for every method.

    Returns the seconds it took.
    """
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.read(16 * 2**20):
            pass
    return time.perf_counter() - start


@functools.lru_cache(maxsize=4)
def _h5file(path: str) -> h5py.File:
    return h5py.File(path, "r")


def band_row_sums(task: tuple[str, int, int]) -> np.ndarray:
    """Row sums of rows ``start:stop`` of ``/matrix``, read with plain h5py (a pool task)."""
    path, start, stop = task
    block = _h5file(path)["matrix"][start:stop, :]
    return block.sum(axis=1, dtype=np.float64)


def bands(path: str, n_rows: int, band_rows: int = BAND_ROWS) -> list[tuple[str, int, int]]:
    """Row bands covering ``/matrix``, as ``band_row_sums`` tasks."""
    return [(path, s, min(s + band_rows, n_rows)) for s in range(0, n_rows, band_rows)]


def reference_row_sums(path: str | os.PathLike) -> np.ndarray:
    """Row sums of ``/matrix`` in float64, read band by band with h5py in this process."""
    path = str(path)
    with h5py.File(path, "r") as f:
        n_rows = f["matrix"].shape[0]
    out = np.concatenate([band_row_sums(t) for t in bands(path, n_rows)])
    _h5file.cache_clear()
    return out


def check_row_sums(result: Any, expected: np.ndarray, label: str) -> None:
    """Raise ``AssertionError`` unless ``result`` equals the reference row sums."""
    got = np.asarray(result, dtype=np.float64).ravel()
    if got.shape != expected.shape:
        raise AssertionError(f"{label}: shape {got.shape}, expected {expected.shape}")
    np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=label)


@dataclass
class Method:
    """One way of reading the matrix: untimed ``setup``, timed ``run``, ``teardown``."""

    name: str
    label: str
    setup: Callable[[str], Any]
    run: Callable[[Any], Any]
    teardown: Callable[[Any], None] = field(default=lambda ctx: None)
    full_pass: bool = True


def _open_dataset(path: str) -> Any:
    import loomx

    return loomx.open_loom(path)


def _sum_with(scheduler: str | None) -> Callable[[Any], np.ndarray]:
    def run(ds: Any) -> np.ndarray:
        kwargs = {} if scheduler is None else {"scheduler": scheduler}
        return ds["matrix"].sum("col").compute(**kwargs).values

    return run


@dataclass
class _ClusterContext:
    ds: Any
    cluster: Any
    client: Any


def _setup_cluster(path: str) -> _ClusterContext:
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=ncores(),
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=40,
    )
    client = Client(cluster, set_as_default=False)
    return _ClusterContext(_open_dataset(path), cluster, client)


def _run_cluster(ctx: _ClusterContext) -> np.ndarray:
    return ctx.ds["matrix"].sum("col").compute(scheduler=ctx.client).values


def _teardown_cluster(ctx: _ClusterContext) -> None:
    ctx.client.close()
    ctx.cluster.close()


def _import_loomx(path: str) -> str:
    import loomx  # noqa: F401

    return path


def _import_loompy(path: str) -> str:
    import loompy  # noqa: F401

    return path


def _run_loompy(path: str) -> np.ndarray:
    import loompy

    with loompy.connect(path, "r") as ds:
        return ds.map([np.sum], axis=0)[0]


@dataclass
class _PoolContext:
    pool: Any
    tasks: list[tuple[str, int, int]]


def _pool_setup(n_procs: int | None) -> Callable[[str], _PoolContext]:
    def setup(path: str) -> _PoolContext:
        n = n_procs or ncores()
        with h5py.File(path, "r") as f:
            n_rows = f["matrix"].shape[0]
        pool = multiprocessing.get_context("spawn").Pool(n)
        pool.map(abs, range(n))
        return _PoolContext(pool, bands(path, n_rows))

    return setup


def _run_pool(ctx: _PoolContext) -> np.ndarray:
    return np.concatenate(ctx.pool.map(band_row_sums, ctx.tasks, chunksize=1))


def _teardown_pool(ctx: _PoolContext) -> None:
    ctx.pool.close()
    ctx.pool.join()


def methods() -> dict[str, Method]:
    """Every measured method, by name, in table order."""
    n = ncores()
    items = [
        Method("open_loom", "loomx `open_loom(path)` (metadata only)", _import_loomx, _open_dataset,
               full_pass=False),
        Method("loomx_threads", "loomx `.sum(\"col\").compute()`, default threads",
               _open_dataset, _sum_with(None)),
        Method("loomx_sync", "loomx, `scheduler=\"synchronous\"` (1 thread)", _open_dataset,
               _sum_with("synchronous")),
        Method("loomx_processes", "loomx, `scheduler=\"processes\"`", _open_dataset,
               _sum_with("processes")),
        Method("loomx_distributed", f"loomx, `LocalCluster({n} procs x 1 thread)`",
               _setup_cluster, _run_cluster, _teardown_cluster),
        Method("loompy_map", "loompy `connect(path).map([np.sum], axis=0)`", _import_loompy,
               _run_loompy),
        Method("h5py_1", "h5py row bands, 1 process (ceiling)", _pool_setup(1), _run_pool,
               _teardown_pool),
        Method("h5py_n", f"h5py row bands, {n} processes (ceiling)", _pool_setup(None),
               _run_pool, _teardown_pool),
    ]  # fmt: skip
    return {m.name: m for m in items}


def _status_mb(field_name: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MB, from ``/proc/self/status``."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field_name)  # pragma: no cover - not Linux


def _reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # pragma: no cover - not Linux, or not allowed
        return False
    return True


def _cpu_snapshot() -> tuple[float, dict[int, float]]:
    """CPU seconds of this process plus reaped children, and of each live descendant."""
    import psutil

    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    live: dict[int, float] = {}
    for p in psutil.Process().children(recursive=True):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        live[p.pid] = t.user + t.system
    return total, live


def _cpu_seconds(before: tuple[float, dict[int, float]]) -> float:
    """CPU seconds used by this process and its descendants since ``before``.

    Children reaped in between are counted by ``RUSAGE_CHILDREN``; live descendants by
    their ``cpu_times`` (the part used after ``before``).
    """
    total, live = _cpu_snapshot()
    used = total - before[0]
    for pid, seconds in live.items():
        used += seconds - before[1].get(pid, 0.0)
    return used


def _child(name: str, path: str, out: str) -> None:
    method = methods()[name]
    ctx = method.setup(path)
    try:
        _reset_peak_rss()
        before = _status_mb("VmRSS")
        print("READY", flush=True)
        sys.stdin.readline()
        start = time.perf_counter()
        method.run(ctx)
        first = time.perf_counter() - start
        cpu_before = _cpu_snapshot()
        start = time.perf_counter()
        result = method.run(ctx)
        wall = time.perf_counter() - start
        cpu = _cpu_seconds(cpu_before)
        after = _status_mb("VmHWM")
    finally:
        method.teardown(ctx)
    if method.full_pass:
        np.save(out, np.asarray(result, dtype=np.float64))
    report = {
        "wall_s": wall,
        "first_s": first,
        "cpu_s": cpu,
        "self_rss_before_mb": before,
        "self_peak_mb": after,
        "shape": [int(s) for s in result["matrix"].shape] if not method.full_pass else None,
    }
    print("RESULT " + json.dumps(report), flush=True)


def _tree_rss_mb(proc: Any) -> float:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


@dataclass
class Measurement:
    """Two timed runs of one method in a fresh process: ``first_s`` and ``wall_s``."""

    name: str
    wall_s: float
    first_s: float
    cpu_s: float
    peak_rss_mb: float
    peak_increase_mb: float
    loadavg_1min: float
    result: np.ndarray | None
    shape: tuple[int, ...] | None


def measure_in_subprocess(name: str, path: str | os.PathLike, timeout: float = 900) -> Measurement:
    """Run method ``name`` twice on ``path`` in a fresh process; time it and sample memory.

    ``first_s`` is the first run (one-time costs of a fresh process included), ``wall_s`` the
    second and ``cpu_s`` the CPU seconds of the second run over all processes (user +
    system).  ``peak_rss_mb`` is the largest summed RSS of the process tree while it ran
    (sampled every few ms, and never below the child's own exact peak, ``VmHWM``);
    ``peak_increase_mb`` is the larger of the sampled tree's rise above its RSS just before
    the first run and the child's own exact rise (``VmHWM`` reset before the first run).
    """
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.npy")
        cmd = [sys.executable, str(Path(__file__).resolve()), name, str(path), out]
        child = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        proc = psutil.Process(child.pid)
        line = ""
        while not line.startswith("READY"):
            line = child.stdout.readline()
            if not line:
                _, err = child.communicate(timeout=timeout)
                raise RuntimeError(f"{name}: child failed before READY:\n{err}")
        baseline = _tree_rss_mb(proc)
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss_mb(proc))
                time.sleep(SAMPLE_INTERVAL_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load = os.getloadavg()[0]
        child.stdin.write("GO\n")
        child.stdin.flush()
        report = None
        for line in child.stdout:
            if line.startswith("RESULT "):
                report = json.loads(line[len("RESULT ") :])
                break
        done.set()
        sampler.join()
        _, err = child.communicate(timeout=timeout)
        if child.returncode != 0 or report is None:
            raise RuntimeError(f"{name}: child exited with {child.returncode}:\n{err}")
        self_increase = report["self_peak_mb"] - report["self_rss_before_mb"]
        peak_rss = max(peak[0], report["self_peak_mb"])
        result = np.load(out) if os.path.exists(out) else None
    return Measurement(
        name=name,
        wall_s=report["wall_s"],
        first_s=report["first_s"],
        cpu_s=report["cpu_s"],
        peak_rss_mb=peak_rss,
        peak_increase_mb=max(peak[0] - baseline, self_increase),
        loadavg_1min=load,
        result=result,
        shape=tuple(report["shape"]) if report["shape"] else None,
    )


def _git(args: list[str]) -> str:
    """Output of a read-only git command in this repository ('' without git)."""
    try:
        return subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:  # pragma: no cover - no git
        return ""


def loomx_fingerprint() -> str:
    """Short hash of the source of the imported ``loomx`` package (to detect edits mid-run)."""
    import hashlib

    import loomx

    digest = hashlib.sha256()
    root = Path(loomx.__file__).parent
    for source in sorted(root.rglob("*.py")):
        digest.update(str(source.relative_to(root)).encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


def machine_facts() -> dict[str, str]:
    """``nproc``, CPU model, memory, OS and library versions of this machine."""
    import dask
    import distributed
    import loompy
    import psutil
    import xarray

    import loomx

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover - not Linux
        model = platform.processor() or "unknown"
    rev = _git(["rev-parse", "--short", "HEAD"])
    if rev and _git(["status", "--porcelain", "--", "loomx"]):
        rev += " + uncommitted changes in loomx/"
    return {
        "nproc": str(ncores()),
        "cpu": model,
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": (
            f"loomx {loomx.__version__} (git {rev or '?'}), h5py {h5py.__version__} "
            f"(HDF5 {h5py.version.hdf5_version}), numpy {np.__version__}, dask {dask.__version__}, "
            f"distributed {distributed.__version__}, xarray {xarray.__version__}, "
            f"loompy {loompy.__version__}"
        ),
    }


if __name__ == "__main__":
    _child(*sys.argv[1:4])

"""The fresh-process timer and memory sampler.

:func:`measure_in_subprocess` runs one method in a fresh child process
(``python -P -m benchmarks.harness.timer METHOD PATH OUT``): the child pins itself to
``Method.cores`` cores if set, sets the method up, reports ``READY``, waits for ``GO`` on
stdin, runs the method twice (``prepare`` untimed before each run; the first run pays the
one-time costs of a fresh process: lazy imports, thread pools, workers importing loomx, HDF5
files opened) and reports both wall times, the CPU seconds of the second run and its own
exact peak RSS over both runs (``VmHWM``, reset just before the first run); meanwhile the
parent samples the summed RSS of the child and all its descendants (pool, dask and
``distributed`` worker processes) with psutil.  Only after that report does the child digest
its result (untimed, unsampled) into ``OUT``.

The child imports the same ``loomx`` as the parent would (its folder goes first on
``PYTHONPATH``, and ``-P`` keeps the working directory off ``sys.path``), so a run from a
checkout, or from a snapshot (``provenance.snapshot_loomx``), measures that code.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .operations import methods
from .provenance import loomx_source_dir
from .reference import digest

__all__ = ["Measurement", "measure_in_subprocess"]

SAMPLE_INTERVAL_S = 0.005
"""How often the parent samples the RSS of the measured process tree."""

BENCHMARKS_PARENT = Path(__file__).resolve().parents[2]
"""Folder holding the ``benchmarks`` package (put on the child's ``PYTHONPATH``, last)."""


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


def pin_to_cores(k: int) -> list[int]:
    """Restrict this process (and the processes it starts) to its first ``k`` allowed cores."""
    cpus = sorted(os.sched_getaffinity(0))[:k]
    os.sched_setaffinity(0, cpus)
    return cpus


def child_main(name: str, path: str, out: str) -> None:
    """The measuring child: set ``name`` up on ``path``, time two runs, digest into ``out``."""
    method = methods()[name]
    if method.cores is not None:
        pin_to_cores(method.cores)
    ctx = method.setup(path)
    try:
        _reset_peak_rss()
        before = _status_mb("VmRSS")
        print("READY", flush=True)
        sys.stdin.readline()
        method.prepare(ctx)
        start = time.perf_counter()
        method.run(ctx)
        first = time.perf_counter() - start
        method.prepare(ctx)
        cpu_before = _cpu_snapshot()
        start = time.perf_counter()
        result = method.run(ctx)
        wall = time.perf_counter() - start
        cpu = _cpu_seconds(cpu_before)
        after = _status_mb("VmHWM")
        report = {
            "wall_s": wall,
            "first_s": first,
            "cpu_s": cpu,
            "self_rss_before_mb": before,
            "self_peak_mb": after,
        }
        print("RESULT " + json.dumps(report), flush=True)
        np.savez(out, **digest(method.op, method.normalize(result, ctx)))
    finally:
        method.teardown(ctx)


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
    path: str
    wall_s: float
    first_s: float
    cpu_s: float
    peak_rss_mb: float
    peak_increase_mb: float
    loadavg_1min: float
    digest: dict[str, np.ndarray]

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The result's shape where its digest records one (``open``, ``random_cols``, ``csr``)."""
        shape = self.digest.get("shape")
        return None if shape is None else tuple(int(s) for s in shape)


def child_env() -> dict[str, str]:
    """Environment of a measuring child: ``PYTHONPATH`` imports this process's ``loomx`` first
    and finds the ``benchmarks`` package last."""
    env = dict(os.environ)
    paths = [str(loomx_source_dir().parent), env.get("PYTHONPATH", ""), str(BENCHMARKS_PARENT)]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def measure_in_subprocess(name: str, path: str | os.PathLike, timeout: float = 900) -> Measurement:
    """Run method ``name`` twice on ``path`` in a fresh process; time it and sample memory.

    ``first_s`` is the first run (one-time costs of a fresh process included), ``wall_s`` the
    second and ``cpu_s`` the CPU seconds of the second run over all processes (user +
    system).  ``peak_rss_mb`` is the largest summed RSS of the process tree while it ran
    (sampled every few ms, and never below the child's own exact peak, ``VmHWM``);
    ``peak_increase_mb`` is the larger of the sampled tree's rise above its RSS just before
    the first run and the child's own exact rise (``VmHWM`` reset before the first run).
    ``digest`` is the :func:`digest` of the second run's result.
    """
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "digest.npz")
        cmd = [sys.executable, "-P", "-m", "benchmarks.harness.timer", name, str(path), out]
        child = subprocess.Popen(
            cmd,
            env=child_env(),
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
        with np.load(out) as npz:
            result_digest = {k: npz[k] for k in npz.files}
        self_increase = report["self_peak_mb"] - report["self_rss_before_mb"]
        peak_rss = max(peak[0], report["self_peak_mb"])
    return Measurement(
        name=name,
        path=str(path),
        wall_s=report["wall_s"],
        first_s=report["first_s"],
        cpu_s=report["cpu_s"],
        peak_rss_mb=peak_rss,
        peak_increase_mb=max(peak[0] - baseline, self_increase),
        loadavg_1min=load,
        digest=result_digest,
    )


if __name__ == "__main__":
    child_main(*sys.argv[1:4])

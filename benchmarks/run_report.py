"""Measure every read method on one Loom file and print a markdown table.

All methods run on the same file in the same run: the file is read once first so the OS page
cache is equally warm for all, then each method runs in ``--rounds`` fresh processes
(round-robin over the methods, so load changes hit all of them alike).  Each process runs the
method twice: the first run pays the one-time costs of a fresh process (lazy imports, thread
pools, workers importing loomx), the second is the steady state.  Medians over the rounds are
reported.  Every full pass is checked against per-row sums read with h5py.

Usage::

    python benchmarks/run_report.py --file /work/bench-data/pbmc_20000x30000.loom
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict

from _harness import (
    Measurement,
    check_row_sums,
    file_facts,
    loomx_fingerprint,
    machine_facts,
    measure_in_subprocess,
    methods,
    reference_row_sums,
    warm_page_cache,
)

BASELINE = "loompy_map"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    except OSError:  # pragma: no cover - no uptime
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def _dask_chunks(path: str) -> tuple[int, ...]:
    import loomx

    with loomx.open_loom(path) as ds:
        return tuple(int(c[0]) for c in ds["matrix"].chunks)


def run(path: str, rounds: int = 3, names: list[str] | None = None) -> str:
    """Measure ``names`` (all methods by default) on ``path``; return the markdown report."""
    all_methods = methods()
    names = names or list(all_methods)
    unknown = sorted(set(names) - set(all_methods))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {list(all_methods)}")
    facts = file_facts(path)
    dask_chunks = _dask_chunks(path)
    machine = machine_facts()
    source_before = loomx_fingerprint()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    uptime_before = _uptime().strip()
    warm_s = warm_page_cache(path)
    expected = reference_row_sums(path)
    runs: dict[str, list[Measurement]] = defaultdict(list)
    for r in range(rounds):
        for name in names:
            m = measure_in_subprocess(name, path)
            if all_methods[name].full_pass:
                check_row_sums(m.result, expected, name)
            elif m.shape != facts.shape:
                raise AssertionError(f"{name}: shape {m.shape}, expected {facts.shape}")
            runs[name].append(m)
            print(
                f"round {r + 1}/{rounds} {name:18s} {m.wall_s:8.3f} s  cpu {m.cpu_s:7.2f} s  "
                f"peak {m.peak_rss_mb:7.0f} MB  load {m.loadavg_1min:.2f}",
                file=sys.stderr,
                flush=True,
            )
    uptime_after = _uptime().strip()
    source_after = loomx_fingerprint()
    if source_after == source_before:
        source_note = f"loomx source unchanged during the run (sha256 {source_before})."
    else:
        source_note = (
            f"WARNING: loomx source changed during the run (sha256 {source_before} -> "
            f"{source_after}); the rounds measured different code."
        )

    median = {name: statistics.median(m.wall_s for m in runs[name]) for name in names}
    first = {name: statistics.median(m.first_s for m in runs[name]) for name in names}
    cpu = {name: statistics.median(m.cpu_s for m in runs[name]) for name in names}
    base = median.get(BASELINE)
    lines = [
        f"File: `{facts.path}`: {facts.shape[0]} x {facts.shape[1]} {facts.dtype}, "
        f"chunks {facts.chunks}, {facts.compression} level {facts.compression_opts}, "
        f"{facts.size_mb:.1f} MB on disk, {facts.raw_mb:.0f} MB raw; dask chunks of `open_loom` "
        f"defaults: {dask_chunks}.",
        "",
        f"Machine: {machine['nproc']} cores (`nproc`), {machine['cpu']}, {machine['memory']}, "
        f"{machine['os']}, Python {machine['python']}.",
        f"Versions: {machine['versions']}; {source_note}",
        f"Run started {started}; page cache warmed by one full read ({warm_s:.2f} s); "
        f"median of {rounds} fresh processes per method, round-robin.",
        f"`uptime` before: `{uptime_before}`",
        f"`uptime` after: `{uptime_after}`",
        "",
        "| method | wall s | min-max s | MB/s raw | speed-up vs loompy | CPU s | first run s "
        "| peak RSS MB (all procs) | peak RSS increase MB | load avg 1 min |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        method = all_methods[name]
        walls = [m.wall_s for m in runs[name]]
        wall = median[name]
        mbs = f"{facts.raw_mb / wall:.0f}" if method.full_pass else "n/a"
        ratio = f"{base / wall:.2f}x" if method.full_pass and base else "n/a"
        peak = max(m.peak_rss_mb for m in runs[name])
        increase = max(m.peak_increase_mb for m in runs[name])
        load = statistics.mean(m.loadavg_1min for m in runs[name])
        lines.append(
            f"| {method.label} | {wall:.3f} | {min(walls):.3f}-{max(walls):.3f} | {mbs} "
            f"| {ratio} | {cpu[name]:.2f} | {first[name]:.3f} | {peak:.0f} | {increase:.0f} "
            f"| {load:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", required=True, help="Loom file to read")
    parser.add_argument("--rounds", type=int, default=3, help="runs per method (median)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help=f"methods to run (default all): {' '.join(methods())}",
    )
    args = parser.parse_args(argv)
    print(run(args.file, args.rounds, args.methods))


if __name__ == "__main__":
    main()

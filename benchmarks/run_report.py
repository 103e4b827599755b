"""Measure loomx against loompy and the ceilings on Loom files and print markdown tables.

Tables (``--tables``, all by default):

``ops``
    every operation (open, per-row mean + std, per-row sums, per-column sums, 1000 random
    columns, scan, to_scipy), loomx vs loompy vs the ceilings, on ``--file``;
``scaling``
    the per-row sums full pass with loomx threads, a ``LocalCluster`` and the chunk-index
    ceiling on 1, 2, 4, 8, 16 cores (those this machine has), on ``--file``;
``memory``
    peak memory of a loomx full pass on ``--small-file`` and ``--file``;
``open``
    ``open_loom`` vs ``loompy.connect`` on ``--wide-file`` (many layers and attributes).

Everything is measured in one run: each file is read once first so the OS page cache is
equally warm, then every (method, file) pair runs in ``--rounds`` fresh processes,
round-robin over all pairs so that load changes hit all of them alike.  Each process runs
the method twice; the second run is reported (the first under "first run s").  Every result
is checked against a reference computed with h5py and numpy.

Usage::

    python benchmarks/run_report.py --file /work/bench-data/pbmc_20000x30000.loom \\
        --small-file /work/bench-data/pbmc_10000x15000.loom \\
        --wide-file /work/bench-data/wide_20000x30000.loom
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _harness import (
    BASELINES,
    OP_TITLES,
    FileFacts,
    Measurement,
    Method,
    Reference,
    check,
    file_facts,
    loomx_fingerprint,
    loomx_source_dir,
    loomx_sources,
    machine_facts,
    measure_in_subprocess,
    methods,
    ncores,
    reference,
    scaling_cores,
    scaling_name,
    snapshot_loomx,
    uptime,
    warm_page_cache,
)

TABLES = ("ops", "scaling", "memory", "open")
"""Tables this script can print, in order."""

MEMORY_METHODS = ("loomx_threads", "loomx_sync")
"""Full passes whose peak memory is compared on two file sizes."""

OPEN_METHODS = ("open_loom", "loompy_connect")
"""Methods timed on the wide file."""

FULL_PASS = "loomx_threads"
"""The loomx full pass that 1000 random columns are compared with."""

Key = tuple[str, str]
"""A measured pair: (method name, file path)."""


def _dask_chunks(path: str) -> tuple[int, ...]:
    import loomx

    with loomx.open_loom(path) as ds:
        return tuple(int(c[0]) for c in ds["matrix"].chunks)


def plan(tables: list[str], file: str, small_file: str | None, wide_file: str | None) -> list[Key]:
    """The (method, file) pairs the chosen tables need, each once, in table order."""
    all_methods = methods()
    pairs: list[Key] = []
    if "ops" in tables:
        pairs += [(name, file) for name, m in all_methods.items() if not m.scaling]
    if "scaling" in tables:
        for k in scaling_cores():
            pairs += [(scaling_name(kind, k), file) for kind in ("threads", "cluster", "ceiling")]
    if "memory" in tables and small_file:
        pairs += [(name, path) for path in (small_file, file) for name in MEMORY_METHODS]
    if "open" in tables and wide_file:
        pairs += [(name, wide_file) for name in OPEN_METHODS]
    return list(dict.fromkeys(pairs))


class Results:
    """Measurements by (method, file), with medians and the file facts."""

    def __init__(self, facts: dict[str, FileFacts], all_methods: dict[str, Method]) -> None:
        self.facts = facts
        self.methods = all_methods
        self.runs: dict[Key, list[Measurement]] = defaultdict(list)

    def __contains__(self, key: Key) -> bool:
        return key in self.runs

    def wall(self, key: Key) -> float:
        """Median wall seconds of the second runs."""
        return statistics.median(m.wall_s for m in self.runs[key])

    def first(self, key: Key) -> float:
        """Median wall seconds of the first runs."""
        return statistics.median(m.first_s for m in self.runs[key])

    def cpu(self, key: Key) -> float:
        """Median CPU seconds of the second runs (all processes)."""
        return statistics.median(m.cpu_s for m in self.runs[key])

    def span(self, key: Key) -> str:
        """``min-max`` of the second runs' wall seconds."""
        walls = [m.wall_s for m in self.runs[key]]
        return f"{min(walls):.3f}-{max(walls):.3f}"

    def peak(self, key: Key) -> float:
        """Largest peak RSS of the process tree over the rounds."""
        return max(m.peak_rss_mb for m in self.runs[key])

    def increase(self, key: Key) -> float:
        """Largest peak RSS increase over the rounds."""
        return max(m.peak_increase_mb for m in self.runs[key])

    def load(self, key: Key) -> float:
        """Mean 1-minute load average when the runs started."""
        return statistics.mean(m.loadavg_1min for m in self.runs[key])

    def mbs(self, key: Key) -> float:
        """Raw (decompressed) matrix MB per second of the median wall."""
        return self.facts[key[1]].raw_mb / self.wall(key)


def _fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def ops_table(res: Results, file: str) -> list[str]:
    """Markdown lines of the operations table (loomx vs loompy vs ceiling)."""
    ceiling = ("ceiling_n", file)
    lines = [
        "| operation | method | wall s | min-max s | MB/s raw | speed-up vs loompy "
        "| % of ceiling MB/s | CPU s | first run s | peak RSS MB (all procs) "
        "| peak RSS increase MB | load avg 1 min |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, method in res.methods.items():
        key = (name, file)
        if method.scaling or key not in res:
            continue
        wall = res.wall(key)
        base = (BASELINES[method.op], file)
        speedup = res.wall(base) / wall if base in res else None
        full = method.full_pass
        of_ceiling = res.wall(ceiling) / wall if full and ceiling in res else None
        lines.append(
            f"| {OP_TITLES[method.op]} | {method.label} | {wall:.3f} | {res.span(key)} "
            f"| {f'{res.mbs(key):.0f}' if full else 'n/a'} | {_fmt_ratio(speedup)} "
            f"| {_fmt_pct(of_ceiling)} | {res.cpu(key):.2f} | {res.first(key):.3f} "
            f"| {res.peak(key):.0f} | {res.increase(key):.0f} | {res.load(key):.2f} |"
        )
    cols, full_pass = ("loomx_cols", file), (FULL_PASS, file)
    meanstd = ("loomx_meanstd", file)
    if cols in res and full_pass in res:
        lines += [
            "",
            f"1000 random columns with loomx take {res.wall(cols) / res.wall(full_pass):.2f}x "
            f"the time of a loomx full pass (`{FULL_PASS}`, per-row sums)"
            + (
                f" and {res.wall(cols) / res.wall(meanstd):.2f}x a per-row mean + std pass."
                if meanstd in res
                else "."
            ),
        ]
    return lines


def scaling_table(res: Results, file: str) -> list[str]:
    """Markdown lines of the scaling table (per-row sums on 1, 2, 4, 8, 16 cores)."""
    lines = [
        "| cores | loomx threads s | MB/s | LocalCluster (n procs x 1 thread) s | MB/s "
        "| ceiling (n procs) s | MB/s | threads % of ceiling | LocalCluster % of ceiling |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    have = set(scaling_cores())
    for k in sorted(have | {1, 2, 4, 8, 16}):
        keys = [(scaling_name(kind, k), file) for kind in ("threads", "cluster", "ceiling")]
        if k not in have or not all(key in res for key in keys):
            why = f"needs a machine with {k} cores" if k not in have else "not in this run"
            lines.append(f"| {k} | not measured ({why}) | | | | | | | |")
            continue
        threads, cluster, ceiling = keys
        cells = []
        for key in keys:
            cells += [f"{res.wall(key):.3f}", f"{res.mbs(key):.0f}"]
        lines.append(
            f"| {k} | {' | '.join(cells)} | {_fmt_pct(res.wall(ceiling) / res.wall(threads))} "
            f"| {_fmt_pct(res.wall(ceiling) / res.wall(cluster))} |"
        )
    return lines


def memory_table(res: Results, files: list[str]) -> list[str]:
    """Markdown lines of the peak-memory table (one full pass, two file sizes)."""
    lines = [
        "| file | shape | raw MB | method | wall s | MB/s raw | peak RSS MB (all procs) "
        "| peak RSS increase MB |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for path in files:
        facts = res.facts[path]
        for name in MEMORY_METHODS:
            key = (name, path)
            if key not in res:
                continue
            lines.append(
                f"| `{Path(path).name}` | {facts.shape[0]} x {facts.shape[1]} "
                f"| {facts.raw_mb:.0f} | {res.methods[name].label} | {res.wall(key):.3f} "
                f"| {res.mbs(key):.0f} | {res.peak(key):.0f} | {res.increase(key):.0f} |"
            )
    if len(files) == 2:
        small, big = files
        size = res.facts[big].raw_mb / res.facts[small].raw_mb
        for name in MEMORY_METHODS:
            if (name, small) in res and (name, big) in res:
                growth = res.increase((name, big)) / res.increase((name, small))
                lines.append(
                    f"\n`{name}`: file {size:.1f}x larger, peak RSS increase {growth:.2f}x."
                )
    return lines


def open_table(res: Results, file: str) -> list[str]:
    """Markdown lines of the open table (a file with many layers and attributes)."""
    facts = res.facts[file]
    lines = [
        "| file | shape | layers | attributes | method | first call s (fresh process) "
        "| min-max first s | second call s | peak RSS increase MB | load avg 1 min |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in OPEN_METHODS:
        key = (name, file)
        if key not in res:
            continue
        firsts = [m.first_s for m in res.runs[key]]
        lines.append(
            f"| `{Path(file).name}` | {facts.shape[0]} x {facts.shape[1]} | {facts.n_layers} "
            f"| {facts.n_attrs} | {res.methods[name].label} | {res.first(key):.3f} "
            f"| {min(firsts):.3f}-{max(firsts):.3f} | {res.wall(key):.3f} "
            f"| {res.increase(key):.0f} | {res.load(key):.2f} |"
        )
    return lines


def _file_line(facts: FileFacts, chunks: tuple[int, ...] | None) -> str:
    extra = f"; dask chunks of `open_loom` defaults: {chunks}" if chunks else ""
    return (
        f"`{facts.path}`: {facts.shape[0]} x {facts.shape[1]} {facts.dtype}, chunks "
        f"{facts.chunks}, {facts.compression} level {facts.compression_opts}, {facts.n_layers} "
        f"layers, {facts.n_attrs} attributes, {facts.size_mb:.1f} MB on disk, "
        f"{facts.raw_mb:.0f} MB raw{extra}."
    )


def _measure(name: str, path: str, failures: list[str], r: int) -> Measurement | None:
    """``measure_in_subprocess``, retried once; ``None`` and a note in ``failures`` if both fail."""
    for attempt in (1, 2):
        try:
            return measure_in_subprocess(name, path)
        except RuntimeError as e:
            last = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
            print(f"{name} on {path} failed (attempt {attempt}): {e}", file=sys.stderr)
            time.sleep(5)
    failures.append(f"round {r + 1}: `{name}` on `{Path(path).name}`: {last}")
    return None


def _write_json(out: str, res: Results, uptimes: list[tuple[str, str]]) -> None:
    """Every measurement so far (digests left out) as JSON."""
    raw = [
        {
            "method": name,
            "file": path,
            **{k: getattr(m, k) for k in ("wall_s", "first_s", "cpu_s", "peak_rss_mb")},
            "peak_increase_mb": m.peak_increase_mb,
            "loadavg_1min": m.loadavg_1min,
        }
        for (name, path), ms in res.runs.items()
        for m in ms
    ]
    Path(out).write_text(json.dumps({"uptime": uptimes, "ncores": ncores(), "runs": raw}, indent=1))


def run(
    file: str,
    small_file: str | None = None,
    wide_file: str | None = None,
    rounds: int = 3,
    tables: list[str] | None = None,
    only: list[str] | None = None,
    json_out: str | None = None,
    snapshot: bool = True,
) -> str:
    """Measure what ``tables`` need (``only``: just these methods); return the markdown report.

    With ``snapshot`` the loomx source is copied first and every process imports the copy
    (:func:`snapshot_loomx`), so edits to the working tree during the run do not mix code
    versions.  A method whose child process fails is retried once, then left out of that
    round (the failure is printed on stderr and listed under the tables).
    """
    tables = list(tables or TABLES)
    tree = loomx_source_dir()
    sources_before = loomx_sources(tree)
    measured = f"`{tree}`"
    if snapshot:
        copy = snapshot_loomx(tempfile.mkdtemp(prefix="loomx-bench-"))
        measured = f"a copy of `{tree}` taken at the start of the run (`{copy}`)"
    fingerprint = loomx_fingerprint()
    all_methods = methods()
    pairs = plan(tables, file, small_file, wide_file)
    if only:
        unknown = sorted(set(only) - set(all_methods))
        if unknown:
            raise SystemExit(f"unknown methods {unknown}; known: {list(all_methods)}")
        pairs = [p for p in pairs if p[0] in only]
    paths = list(dict.fromkeys(p for _, p in pairs))
    facts = {p: file_facts(p) for p in paths}
    chunks = {p: _dask_chunks(p) for p in paths}
    machine = machine_facts()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    uptimes = [("before", uptime())]
    warm = {p: warm_page_cache(p) for p in paths}
    refs: dict[str, Reference] = {}
    for path in paths:
        if any(all_methods[n].op != "open" for n, p in pairs if p == path):
            refs[path] = reference(path)
    res = Results(facts, all_methods)
    failures: list[str] = []
    for r in range(rounds):
        for name, path in pairs:
            m = _measure(name, path, failures, r)
            if m is None:
                continue
            op = all_methods[name].op
            expected = refs[path][op] if op != "open" else {"shape": facts[path].shape}
            check(m.digest, expected, f"{name} on {path}")
            res.runs[(name, path)].append(m)
            if json_out:
                _write_json(json_out, res, uptimes)
            print(
                f"round {r + 1}/{rounds} {name:24s} {Path(path).name:28s} {m.wall_s:8.3f} s  "
                f"first {m.first_s:8.3f} s  cpu {m.cpu_s:7.2f} s  "
                f"peak {m.peak_rss_mb:6.0f} MB  load {m.loadavg_1min:.2f}",
                file=sys.stderr,
                flush=True,
            )
        uptimes.append((f"after round {r + 1}", uptime()))
    sources_after = loomx_sources(tree)
    finished = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    changed = sorted(
        f"loomx/{name}"
        for name in set(sources_before) | set(sources_after)
        if sources_before.get(name) != sources_after.get(name)
    )
    source_note = f"{measured} (sha256 {fingerprint})"
    if not changed:
        source_note += "; the working tree's loomx/ did not change during the run."
    elif snapshot:
        source_note += (
            f"; the working tree's loomx/ changed during the run ({', '.join(changed)}), "
            "which the copy does not see."
        )
    else:
        source_note += (
            f"; WARNING: loomx/ changed during the run ({', '.join(changed)}): the rounds "
            "may have measured different code."
        )
    up = "; ".join(f"{when}: `{text}`" for when, text in uptimes)
    lines = [
        f"Machine: {machine['nproc']} cores (`nproc`), {machine['cpu']}, {machine['memory']}, "
        f"{machine['os']}, Python {machine['python']}.",
        f"Versions: {machine['versions']}.",
        f"Code measured: {source_note}",
        f"Run {started} to {finished}; page cache warmed by one full read of each file; "
        f"median of {rounds} fresh processes per method, round-robin over all methods and files.",
        "",
        "Files:",
        "",
        *(f"- {_file_line(facts[p], chunks[p])} (warmed in {warm[p]:.2f} s)" for p in paths),
    ]
    sections = {
        "ops": (f"Operations on `{Path(file).name}`", lambda: ops_table(res, file)),
        "scaling": (
            f"Scaling: per-row sums on `{Path(file).name}`, pinned to n cores",
            lambda: scaling_table(res, file),
        ),
        "memory": (
            "Peak memory of a full pass on two file sizes",
            lambda: memory_table(res, [p for p in (small_file, file) if p]),
        ),
        "open": (
            f"Opening `{Path(wide_file).name if wide_file else '-'}`",
            lambda: open_table(res, wide_file) if wide_file else [],
        ),
    }
    for table in tables:
        title, render = sections[table]
        body = render()
        if not body or (table == "memory" and not small_file):
            continue
        lines += ["", f"### {title}", "", *body, "", f"`uptime` during this run: {up}"]
    if snapshot:
        shutil.rmtree(Path(copy).parent, ignore_errors=True)
    if failures:
        lines += ["", "Failed measurements (left out of the medians):", ""]
        lines += [f"- {f}" for f in failures]
    if json_out:
        _write_json(json_out, res, uptimes)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", required=True, help="loompy-written Loom file to read")
    parser.add_argument("--small-file", help="a 4x smaller file of the same kind (memory table)")
    parser.add_argument("--wide-file", help="a file with many layers and attributes (open table)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per method")
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=None, help="tables")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help=f"only these methods (default all): {' '.join(methods())}",
    )
    parser.add_argument("--json", help="also write every measurement to this JSON file")
    parser.add_argument(
        "--no-snapshot",
        action="store_true",
        help="import loomx from the working tree in every process (default: a copy)",
    )
    args = parser.parse_args(argv)
    print(
        run(
            args.file,
            args.small_file,
            args.wide_file,
            args.rounds,
            args.tables,
            args.methods,
            args.json,
            not args.no_snapshot,
        )
    )


if __name__ == "__main__":
    main()

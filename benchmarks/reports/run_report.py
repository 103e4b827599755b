"""Measure loomx against loompy and the ceilings on Loom files and print markdown tables.

Tables (``--tables``, all by default):

``ops``
    every read operation (open, per-row mean + std, per-row sums, per-column sums, 1000
    random columns, scan, to_scipy), loomx vs loompy vs the ceilings, on ``--file``;
``scaling``
    the per-row sums full pass with loomx threads, a ``LocalCluster`` and the chunk-index
    ceiling on 1, 2, 4, 8, 16 cores (those this machine has), on ``--file``;
``memory``
    peak memory of a loomx full pass on ``--small-file`` and ``--file``;
``open``
    ``open_loom`` vs ``loompy.connect`` on ``--wide-file`` (many layers and attributes);
``write``
    a computed layer written by loompy and by loomx (lazy on threads, lazy on a
    ``LocalCluster``, from memory) into copies of ``--file`` and ``--small-file``, and the
    write-back of one column attribute into a copy of ``--big-file``;
``combine``
    ``loomx.combine`` vs ``loompy.combine`` of the files of each ``--combine-inputs`` folder.

Everything is measured in one run: each file is read once first so the OS page cache is
equally warm, then every (method, file) pair runs in ``--rounds`` fresh processes,
round-robin over all pairs so that load changes hit all of them alike.  Each process runs
the method twice; the second run is reported (the first under "first run s").  Every result
is checked against a reference computed with h5py and numpy.  Write methods write into
copies made in ``--scratch`` (default: next to the input).

Usage::

    python -m benchmarks.reports.run_report --file /work/bench-data/pbmc_20000x30000.loom \\
        --small-file /work/bench-data/pbmc_10000x15000.loom \\
        --wide-file /work/bench-data/wide_20000x30000.loom \\
        --tables ops scaling memory open
    python -m benchmarks.reports.run_report --file /work/bench-data/pbmc_20000x30000.loom \\
        --small-file /work/bench-data/pbmc_10000x15000.loom \\
        --big-file /work/bench-data/big_20000x30000.loom \\
        --combine-inputs /work/bench-data/combine_5000x8000 \\
        /work/bench-data/combine_5000x8000_shuffled --tables write combine
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this checkout's benchmarks and loomx
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.harness.operations import READ_OPS, methods, ncores, scaling_cores, scaling_name
from benchmarks.harness.provenance import (
    loomx_fingerprint,
    loomx_source_dir,
    loomx_sources,
    machine_facts,
    snapshot_loomx,
    uptime,
)
from benchmarks.harness.reference import Reference, check, file_facts, reference, warm_page_cache
from benchmarks.harness.tables import (
    COMBINE_METHODS,
    MEMORY_METHODS,
    OPEN_METHODS,
    WRITE_ATTR_METHODS,
    WRITE_LAYER_METHODS,
    Key,
    Results,
    combine_table,
    file_line,
    memory_table,
    open_table,
    ops_table,
    scaling_table,
    write_attr_table,
    write_table,
)
from benchmarks.harness.timer import Measurement, measure_in_subprocess
from benchmarks.harness.write_methods import SCRATCH_ENV

__all__: list[str] = []

TABLES = ("ops", "scaling", "memory", "open", "write", "combine")
"""Tables this script can print, in order."""


def _dask_chunks(path: str) -> tuple[int, ...] | None:
    if os.path.isdir(path):
        return None
    import loomx

    with loomx.open_loom(path) as ds:
        return tuple(int(c[0]) for c in ds["matrix"].chunks)


def plan(
    tables: list[str],
    file: str | None,
    small_file: str | None = None,
    wide_file: str | None = None,
    big_file: str | None = None,
    combine_inputs: list[str] | None = None,
) -> list[Key]:
    """The (method, file) pairs the chosen tables need, each once, in table order."""
    all_methods = methods()
    pairs: list[Key] = []
    if "ops" in tables and file:
        pairs += [
            (name, file) for name, m in all_methods.items() if not m.scaling and m.op in READ_OPS
        ]
    if "scaling" in tables and file:
        for k in scaling_cores():
            pairs += [(scaling_name(kind, k), file) for kind in ("threads", "cluster", "ceiling")]
    if "memory" in tables and small_file and file:
        pairs += [(name, path) for path in (small_file, file) for name in MEMORY_METHODS]
    if "open" in tables and wide_file:
        pairs += [(name, wide_file) for name in OPEN_METHODS]
    if "write" in tables:
        pairs += [(name, p) for p in (file, small_file) if p for name in WRITE_LAYER_METHODS]
        if big_file:
            pairs += [(name, big_file) for name in WRITE_ATTR_METHODS]
    if "combine" in tables:
        pairs += [(name, p) for p in combine_inputs or [] for name in COMBINE_METHODS]
    return list(dict.fromkeys(pairs))


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
    file: str | None,
    small_file: str | None = None,
    wide_file: str | None = None,
    rounds: int = 3,
    tables: list[str] | None = None,
    only: list[str] | None = None,
    json_out: str | None = None,
    snapshot: bool = True,
    big_file: str | None = None,
    combine_inputs: list[str] | None = None,
    scratch: str | None = None,
) -> str:
    """Measure what ``tables`` need (``only``: just these methods); return the markdown report.

    With ``snapshot`` the loomx source is copied first and every process imports the copy
    (:func:`snapshot_loomx`), so edits to the working tree during the run do not mix code
    versions.  A method whose child process fails is retried once, then left out of that
    round (the failure is printed on stderr and listed under the tables).  Write methods
    make their copies in ``scratch`` (default: next to each input).
    """
    tables = list(tables or TABLES)
    if scratch:
        os.environ[SCRATCH_ENV] = scratch
    tree = loomx_source_dir()
    sources_before = loomx_sources(tree)
    measured = f"`{tree}`"
    if snapshot:
        copy = snapshot_loomx(tempfile.mkdtemp(prefix="loomx-bench-"))
        measured = f"a copy of `{tree}` taken at the start of the run (`{copy}`)"
    fingerprint = loomx_fingerprint()
    all_methods = methods()
    pairs = plan(tables, file, small_file, wide_file, big_file, combine_inputs)
    if only:
        unknown = sorted(set(only) - set(all_methods))
        if unknown:
            raise SystemExit(f"unknown methods {unknown}; known: {list(all_methods)}")
        pairs = [p for p in pairs if p[0] in only]
    inputs = {pair: all_methods[pair[0]].inputs(pair[1]) for pair in pairs}
    skipped = {pair: [f for f in files if not os.path.exists(f)] for pair, files in inputs.items()}
    for (name, path), missing in skipped.items():
        if missing:
            print(f"{name} on {path} left out: no {', '.join(missing)}", file=sys.stderr)
    pairs = [pair for pair in pairs if not skipped[pair]]
    paths = list(dict.fromkeys(p for _, p in pairs))
    facts = {p: file_facts(p) for p in paths}
    chunks = {p: _dask_chunks(p) for p in paths}
    machine = machine_facts()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    uptimes = [("before", uptime())]
    warm = {p: warm_page_cache(p) for p in paths}
    for extra in dict.fromkeys(p for pair in pairs for p in inputs[pair]):
        warm_page_cache(extra)
    refs: dict[str, Reference] = {}
    for path in paths:
        refs[path] = reference(path, {all_methods[n].op for n, p in pairs if p == path})
    res = Results(facts, all_methods)
    failures: list[str] = []
    for r in range(rounds):
        for name, path in pairs:
            m = _measure(name, path, failures, r)
            if m is None:
                continue
            op = all_methods[name].op
            check(m.digest, refs[path][op], f"{name} on {path}")
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
        *(f"- {file_line(facts[p], chunks[p])} (warmed in {warm[p]:.2f} s)" for p in paths),
    ]
    name = Path(file).name if file else "-"
    sections = {
        "ops": (f"Operations on `{name}`", lambda: ops_table(res, file) if file else []),
        "scaling": (
            f"Scaling: per-row sums on `{name}`, pinned to n cores",
            lambda: scaling_table(res, file) if file else [],
        ),
        "memory": (
            "Peak memory of a full pass on two file sizes",
            lambda: memory_table(res, [p for p in (small_file, file) if p]),
        ),
        "open": (
            f"Opening `{Path(wide_file).name if wide_file else '-'}`",
            lambda: open_table(res, wide_file) if wide_file else [],
        ),
        "write": (
            "Writing a computed layer, and writing back one attribute",
            lambda: (
                write_table(res, [p for p in (file, small_file) if p])
                + (["", *write_attr_table(res, big_file)] if big_file else [])
            ),
        ),
        "combine": (
            "Combining files",
            lambda: combine_table(res, list(combine_inputs or [])),
        ),
    }
    for table in tables:
        title, render = sections[table]
        body = render()
        if not body or (table == "memory" and not small_file) or len(body) <= 2:
            continue
        lines += ["", f"### {title}", "", *body, "", f"`uptime` during this run: {up}"]
    if snapshot:
        shutil.rmtree(Path(copy).parent, ignore_errors=True)
    left_out = [
        f"`{name}` on `{Path(path).name}`: no `{'`, `'.join(missing)}` (`make_data.py`)"
        for (name, path), missing in skipped.items()
        if missing
    ]
    if left_out:
        lines += ["", "Methods left out:", "", *(f"- {line}" for line in left_out)]
    if failures:
        lines += ["", "Failed measurements (left out of the medians):", ""]
        lines += [f"- {f}" for f in failures]
    if json_out:
        _write_json(json_out, res, uptimes)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", help="loompy-written Loom file (read and write tables)")
    parser.add_argument(
        "--small-file", help="a 4x smaller file of the same kind (memory and write tables)"
    )
    parser.add_argument("--wide-file", help="a file with many layers and attributes (open table)")
    parser.add_argument(
        "--big-file", help="a bigger file to write one attribute back into (write table)"
    )
    parser.add_argument(
        "--combine-inputs",
        nargs="+",
        default=None,
        help="folders of Loom files to combine (make_data.py --combine) (combine table)",
    )
    parser.add_argument("--scratch", help="folder for the write methods' copies")
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
            args.big_file,
            args.combine_inputs,
            args.scratch,
        )
    )


if __name__ == "__main__":
    main()

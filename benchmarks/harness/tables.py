"""The markdown tables of ``run_report.py``, rendered from the measurements of one run.

Read tables: ``ops`` (every read operation, loomx vs loompy vs the ceilings), ``scaling``
(per-row sums pinned to 1, 2, 4, ... cores), ``memory`` (a full pass on two file sizes),
``open`` (a file with many layers and attributes).  Write tables: ``write`` (a computed
layer on two file sizes, and the write-back of one attribute) and ``combine`` (the files of
one or more folders).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np

from .operations import BASELINES, OP_TITLES, READ_OPS, Method, scaling_cores, scaling_name
from .reference import FileFacts, input_files
from .timer import Measurement

__all__ = [
    "COMBINE_METHODS",
    "MEMORY_METHODS",
    "OPEN_METHODS",
    "WRITE_ATTR_METHODS",
    "WRITE_LAYER_METHODS",
    "Key",
    "Results",
    "combine_table",
    "file_line",
    "memory_table",
    "open_table",
    "ops_table",
    "scaling_table",
    "write_attr_table",
    "write_table",
]

MEMORY_METHODS = ("loomx_threads", "loomx_sync")
"""Full passes whose peak memory is compared on two file sizes."""

OPEN_METHODS = ("open_loom", "loompy_connect")
"""Methods timed on the wide file."""

FULL_PASS = "loomx_threads"
"""The loomx full pass that 1000 random columns are compared with."""

WRITE_LAYER_METHODS = (
    "loompy_write_layer",
    "loomx_write_layer",
    "loomx_write_layer_cluster",
    "loomx_write_layer_memory",
)
"""Methods of the layer-write table, in column order (loompy first: the ratios' base)."""

WRITE_ATTR_METHODS = ("loomx_write_attr",)
"""Methods of the attribute write-back table."""

COMBINE_METHODS = ("loomx_combine", "loompy_combine")
"""Methods of the combine table."""

Key = tuple[str, str]
"""A measured pair: (method name, file path)."""


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


CEILINGS = {"random_cols": "ceiling_cols_n"}
"""The reference of an operation's "% of ceiling" column when it is not the full-pass
ceiling ``ceiling_n`` (its wall time, not MB/s, is compared)."""


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
        if method.scaling or method.op not in READ_OPS or key not in res:
            continue
        wall = res.wall(key)
        base = (BASELINES[method.op], file)
        speedup = res.wall(base) / wall if base in res else None
        full = method.full_pass
        reference = (CEILINGS.get(method.op, "ceiling_n"), file)
        of_ceiling = (
            res.wall(reference) / wall
            if (full or reference != ceiling) and reference in res
            else None
        )
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


def file_line(facts: FileFacts, chunks: tuple[int, ...] | None) -> str:
    """One line of the report's file list."""
    extra = f"; dask chunks of `open_loom` defaults: {chunks}" if chunks else ""
    files = f"{facts.n_files} files, each " if facts.n_files > 1 else ""
    return (
        f"`{facts.path}`: {files}{facts.shape[0]} x {facts.shape[1]} {facts.dtype}, chunks "
        f"{facts.chunks}, {facts.compression} level {facts.compression_opts}, {facts.n_layers} "
        f"layers, {facts.n_attrs} attributes, {facts.size_mb:.1f} MB on disk, "
        f"{facts.raw_mb:.0f} MB raw{extra}."
    )


def _median_digest(res: Results, key: Key, entry: str) -> float:
    return statistics.median(float(m.digest[entry]) for m in res.runs[key])


def write_table(res: Results, files: list[str]) -> list[str]:
    """Markdown lines of the layer-write table (loompy vs loomx lazy, cluster, in-memory)."""
    lines = [
        f"| {OP_TITLES['write_layer']} | loompy s | loomx lazy s | loomx lazy, LocalCluster s "
        "| loomx in-memory s | loompy / lazy | loompy / cluster | loompy / in-memory "
        "| peak RSS MB loompy / lazy / in-memory |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for path in files:
        keys = [(name, path) for name in WRITE_LAYER_METHODS]
        if not all(key in res for key in keys):
            continue
        loompy, lazy, cluster, memory = (res.wall(key) for key in keys)
        facts = res.facts[path]
        rss = " / ".join(f"{res.peak(keys[i]):.0f}" for i in (0, 1, 3))
        lines.append(
            f"| {facts.shape[0]} x {facts.shape[1]} | {loompy:.2f} | {lazy:.2f} | {cluster:.2f} "
            f"| {memory:.2f} | {loompy / lazy:.1f}x | {loompy / cluster:.1f}x "
            f"| {loompy / memory:.1f}x | {rss} |"
        )
    return lines


def write_attr_table(res: Results, file: str) -> list[str]:
    """Markdown lines of the attribute write-back table (wall s, file growth)."""
    lines = [
        f"| {OP_TITLES['write_attr']} | file | wall s | file growth bytes | attribute bytes |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name in WRITE_ATTR_METHODS:
        key = (name, file)
        if key not in res:
            continue
        lines.append(
            f"| {res.methods[name].label} | {res.facts[file].size_mb / 1e3:.2f} GB "
            f"| {res.wall(key):.3f} | {_median_digest(res, key, 'growth_bytes'):.0f} "
            f"| {_median_digest(res, key, 'attr_bytes'):.0f} |"
        )
    return lines


def combine_input_note(path: str) -> str:
    """How the files of a combine folder line up: their rows in the same order, or not."""
    files = input_files(path)
    orders = []
    for name in files:
        with h5py.File(name, "r") as f:
            orders.append(f["row_attrs/Accession"][:])
    moved = sum(not np.array_equal(o, orders[0]) for o in orders[1:])
    if not moved:
        return "rows in the same order"
    return f"rows shuffled in {moved} files, aligned by `Accession`"


def combine_table(res: Results, folders: list[str]) -> list[str]:
    """Markdown lines of the combine table (loomx vs loompy, one row per input folder)."""
    if not folders:
        return []
    facts = res.facts[folders[0]]
    lines = [
        f"| `combine` of {facts.n_files} loompy-written {facts.shape[0]} x {facts.shape[1]} "
        "files | loomx s | loompy s | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for path in folders:
        loomx, loompy = ((name, path) for name in COMBINE_METHODS)
        if loomx not in res or loompy not in res:
            continue
        lines.append(
            f"| {combine_input_note(path)} (`{Path(path).name}`) | {res.wall(loomx):.2f} "
            f"| {res.wall(loompy):.2f} | {res.wall(loompy) / res.wall(loomx):.1f}x |"
        )
    return lines

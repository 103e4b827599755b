"""The seed file's scale: loomx and loompy side by side in one run, and how time and memory
grow with the number of cells.

``--make`` writes the inputs with loomx (``from_arrays`` of a dask array: bands of random
counts generated and compressed in parallel) in loompy's layout: ``/matrix`` float32 in
(64, 64) chunks, gzip 2, ``Gene``, ``Accession``, ``CellID`` and ``ClusterID``.  Every
measurement runs in a fresh process (``python -m benchmarks.reports.scale_report --child
METHOD PATH``), which reports its wall time and its own peak RSS (``VmHWM``); results are
checked against loompy's (or h5py's) in the parent before a figure is printed.

Tables:

- **seed** (one file, default 27,998 x 160,796): 10, 1000 and 5000 random columns, 1000
  random rows, the full pass (per-cell totals; loompy's ``scan``), per-gene mean and
  variance, ``loomx qc``, the minibatch loader (block-shuffled and uniform) and the chunk
  read of the uniform loader's picks;
- **scaling** (``--scaling``: one file per cell count, the same genes): the full pass and
  the two loaders, time and peak memory against the number of cells.

Examples
--------
Tiny, seconds::

    python -m benchmarks.reports.scale_report --make /tmp/s --rows 300 --cols 2000
    python -m benchmarks.reports.scale_report /tmp/s/seed.loom
    python -m benchmarks.reports.scale_report --scaling /tmp/s --rows 300 --cols 1000 2000

Full size (the seed file: about 1 GB on disk; 1M cells: about 6 GB)::

    python -m benchmarks.reports.scale_report --make /work/bench-data/seed --rows 27998 \\
        --cols 160796
    python -m benchmarks.reports.scale_report /work/bench-data/seed/seed.loom
    python -m benchmarks.reports.scale_report --scaling /work/bench-data/scale --rows 27998 \\
        --cols 160796 500000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PICKS = {"cols10": 10, "cols1000": 1000, "cols5000": 5000}
BATCH = 256


def make(folder: Path, rows: int, cols: int, name: str = "seed.loom", seed: int = 0) -> Path:
    """A Loom file of random counts in loompy's layout, written by loomx in bands."""
    import dask.array as da

    import loomx

    folder.mkdir(parents=True, exist_ok=True)
    band = 2048

    def counts(block_id: Any = None) -> np.ndarray:
        j = block_id[1]
        width = min(band, cols - j * band)
        rng = np.random.default_rng([seed, j])
        values = rng.poisson(2.0, (rows, width)) + 1
        return (values * (rng.random((rows, width)) < 0.07)).astype(np.float32)

    chunks = ((rows,), tuple(min(band, cols - s) for s in range(0, cols, band)))
    matrix = da.map_blocks(counts, chunks=chunks, dtype=np.float32)
    genes = np.array([f"G{i}" for i in range(rows)], dtype=object)
    genes[: min(13, rows)] = [f"MT-{i}" for i in range(min(13, rows))]
    ds = loomx.from_arrays(
        matrix,
        row_attrs={"Gene": genes, "Accession": np.array([f"A{i}" for i in range(rows)], object)},
        col_attrs={
            "CellID": np.array([f"c{j}" for j in range(cols)], dtype=object),
            "ClusterID": np.arange(cols) % 20,
        },
    )
    path = folder / name
    loomx.to_loom(ds, path, chunks=(64, 64), compression="gzip", compression_opts=2)
    return path


# --------------------------------------------------------------------------- methods


def _picks(n: int, total: int) -> np.ndarray:
    return np.sort(np.random.default_rng(n).choice(total, size=min(n, total), replace=False))


def _loomx(path: str) -> Any:
    import loomx

    return loomx.open_loom(path)


def loomx_method(name: str, path: str) -> Any:
    ds = _loomx(path)
    m = ds["matrix"]
    if name in PICKS:
        return m.isel(col=_picks(PICKS[name], m.shape[1])).sum("row").values
    if name == "rows1000":
        return m.isel(row=_picks(1000, m.shape[0])).sum("col").values
    if name == "fullpass":
        return m.sum("row").values
    if name == "meanvar":
        import dask

        mean, var = dask.compute(m.mean("col"), m.var("col"))
        return np.stack([mean.values, var.values])
    if name == "qc":
        import loomx

        cells, _ = loomx.calculate_qc_metrics(ds)
        return cells["total_counts"].values
    if name in ("loader_block", "loader_uniform"):
        total = np.zeros(m.shape[1])
        loader = ds.loom.batches(BATCH, mode=name.split("_")[1], seed=0)
        for batch in loader:
            total[batch["index"]] = batch["X"].sum(axis=1)
        return total
    if name == "uniform_chunk_bound":  # the same picks in one read, each chunk once
        loader = ds.loom.batches(BATCH, mode="uniform", seed=0)
        total = np.zeros(m.shape[1])
        for cells in _fetches_of(loader):
            total[cells] = m.isel(col=cells).sum("row").values
        return total
    raise KeyError(name)


def _fetches_of(loader: Any) -> list[np.ndarray]:
    """The sorted cells of each buffer the uniform loader reads."""
    return [f.cells for f in loader._fetches(*loader.shard)]


def loompy_method(name: str, path: str) -> Any:
    import loompy

    with loompy.connect(path, "r", validate=False) as ds:
        n, m = ds.shape
        if name in PICKS:
            return ds[:, _picks(PICKS[name], m)].sum(axis=0)
        if name == "rows1000":
            return ds[_picks(1000, n), :].sum(axis=1)
        if name == "fullpass":
            total = np.zeros(m)
            for _, selection, view in ds.scan(axis=1):
                total[selection] = view[:, :].sum(axis=0)
            return total
        if name == "meanvar":
            return np.stack(ds.map([np.mean, np.var], axis=0))
    raise KeyError(name)


METHODS: dict[str, Callable[[str, str], Any]] = {"loomx": loomx_method, "loompy": loompy_method}
SEED_ROWS = [*PICKS, "rows1000", "fullpass", "meanvar", "qc"]
LOADERS = ["loader_block", "loader_uniform", "uniform_chunk_bound"]


def child(tool: str, name: str, path: str) -> None:
    """Run one method; the tool's import is timed apart (``import_s``), the rest is ``seconds``.

    ``seconds`` includes opening the file and every first read (chunk indexes, caches).
    """
    start = time.perf_counter()
    if tool == "loomx":
        import dask.array  # noqa: F401

        import loomx  # noqa: F401
    else:
        import loompy  # noqa: F401
    imported = time.perf_counter()
    result = METHODS[tool](name, path)
    seconds = time.perf_counter() - imported
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))
    out = np.asarray(result, dtype=np.float64)
    digest = [float(np.nansum(out)), int(out.size)]
    imports = imported - start
    print(json.dumps({"seconds": seconds, "import_s": imports, "peak_mb": peak, "digest": digest}))


def measure(tool: str, name: str, path: str, timeout: float | None = None) -> dict[str, Any]:
    """One method in a fresh process; ``{"timeout": seconds}`` if it ran past ``timeout``."""
    cmd = [sys.executable, "-m", "benchmarks.reports.scale_report", "--child", tool, name, path]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    if done.returncode in (-9, -15):  # stopped from outside: record how long it ran
        return {"timeout": time.perf_counter() - start}
    if done.returncode:
        raise RuntimeError(f"{tool} {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _emit(line: str) -> str:
    print(line, flush=True)
    return line


def _check(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    (sa, na), (sb, nb) = a["digest"], b["digest"]
    if na != nb or not np.isclose(sa, sb, rtol=1e-6):
        raise AssertionError(f"{what}: loomx {a['digest']} and the peer {b['digest']} differ")


def seed_table(
    path: str,
    skip_loompy: set[str],
    only: list[str] | None = None,
    loaders: bool = True,
    timeout: float | None = None,
) -> list[str]:
    """The seed table; each line is printed as soon as it is measured."""
    lines = [
        _emit(
            "| operation | loomx s | loomx peak MB | loomx import s "
            "| loompy s | loompy peak MB | loompy import s | speed-up |"
        ),
        _emit("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"),
    ]
    for name in only or SEED_ROWS:
        ours = measure("loomx", name, path)
        print(f"loomx {name}: {ours}", flush=True)
        peer = None
        if name != "qc" and name not in skip_loompy:
            peer = measure("loompy", name, path, timeout)
            if "timeout" not in peer:
                _check(ours, peer, name)
        cells = [f"{ours['seconds']:.2f}", f"{ours['peak_mb']:.0f}", f"{ours['import_s']:.1f}"]
        if peer is None:
            cells += ["", "", "", ""]
        elif "timeout" in peer:
            stopped = [f"> {peer['timeout']:.0f} (stopped)", "", ""]
            cells += [*stopped, f"> {peer['timeout'] / ours['seconds']:.0f}x"]
        else:
            ratio = peer["seconds"] / ours["seconds"]
            cells += [f"{peer['seconds']:.2f}", f"{peer['peak_mb']:.0f}", f"{peer['import_s']:.1f}"]
            cells.append(f"{ratio:.1f}x")
        lines.append(_emit(f"| {name} | " + " | ".join(cells) + " |"))
    if not loaders:
        return lines
    full = measure("loomx", "fullpass", path)
    lines += [
        _emit(""),
        _emit("| loader | s | peak MB | cells/s | of the full pass |"),
        _emit("| --- | ---: | ---: | ---: | ---: |"),
    ]
    n_cells = full["digest"][1]
    for name in LOADERS:
        r = measure("loomx", name, path)
        _check(r, full, name)
        share = full["seconds"] / r["seconds"]
        lines.append(
            _emit(
                f"| {name} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | "
                f"{n_cells / r['seconds']:,.0f} | {share:.0%} |"
            )
        )
    return lines


def scaling_table(
    folder: Path,
    rows: int,
    sizes: list[int],
    methods: list[str] | None = None,
    files: list[Path] | None = None,
) -> list[str]:
    """Time and peak memory against the number of cells, one line per file.

    ``files`` are measured as they are; otherwise ``folder/scale_{rows}x{cols}.loom`` for
    each size, written by :func:`make` when absent.
    """
    methods = methods or ["fullpass", "loader_block", "loader_uniform"]
    head = ["cells", *(f"{name} {unit}" for name in methods for unit in ("s", "MB"))]
    head += [f"{name} cells/s" for name in methods]
    lines = [
        _emit("| file | " + " | ".join(head) + " |"),
        _emit("| --- | " + " | ".join("---:" for _ in head) + " |"),
    ]
    if files is None:
        files = []
        for cols in sizes:
            path = folder / f"scale_{rows}x{cols}.loom"
            if not path.exists():
                make(folder, rows, cols, name=path.name)
            files.append(path)
    for path in files:
        full, cells, rates = None, [], []
        for name in methods:
            r = measure("loomx", name, str(path))
            if full is None:
                full = r
            else:
                _check(r, full, name)
            cells += [f"{r['seconds']:.2f}", f"{r['peak_mb']:.0f}"]
            rates.append(f"{full['digest'][1] / r['seconds']:,.0f}")
        n = f"{full['digest'][1]:,}" if full else ""
        lines.append(_emit(f"| {path.name} | {n} | " + " | ".join(cells + rates) + " |"))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", nargs="?", help="the seed file to measure")
    parser.add_argument("--make", type=Path, help="write seed.loom into this folder")
    parser.add_argument("--scaling", type=Path, help="folder of the scaling files")
    parser.add_argument("--rows", type=int, default=27998)
    parser.add_argument("--cols", type=int, nargs="+", default=[160796])
    parser.add_argument("--skip-loompy", nargs="*", default=[], help="e.g. cols5000")
    parser.add_argument("--only", nargs="*", help="seed rows to measure (default: all)")
    parser.add_argument("--no-loaders", action="store_true", help="seed table without loaders")
    parser.add_argument("--timeout", type=float, help="stop a peer's method after this many s")
    parser.add_argument("--methods", nargs="*", help="scaling methods (default: all three)")
    parser.add_argument("--files", type=Path, nargs="*", help="scaling: measure these files")
    parser.add_argument("--child", nargs=3, metavar=("TOOL", "METHOD", "PATH"))
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return
    if args.make:
        start = time.perf_counter()
        path = make(args.make, args.rows, args.cols[0])
        print(
            f"wrote {path} in {time.perf_counter() - start:.1f} s ({os.path.getsize(path):,} bytes)"
        )
        return
    print(f"uptime: {os.getloadavg()}", flush=True)
    if args.scaling or args.files:
        scaling_table(args.scaling, args.rows, args.cols, args.methods, args.files)
    else:
        seed_table(args.path, set(args.skip_loompy), args.only, not args.no_loaders, args.timeout)
    print(f"uptime: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()

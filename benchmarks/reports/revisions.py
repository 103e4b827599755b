"""Two loomx source trees side by side on the same file: did a change slow reading or
writing down?

Each operation runs in a fresh Python process per round whose ``PYTHONPATH`` puts one
tree's ``loomx`` first; rounds alternate between the trees (A, B, A, B, ...) so that a
busy machine slows both alike.  Every operation returns a checksum of its result; the
checksums of the two trees must agree, and the sums must equal h5py's (computed once
here), or the report stops.

Usage (a tree is any checkout, e.g. ``git worktree add /tmp/before <commit>``)::

    python -m benchmarks.reports.revisions /work/bench-data/pbmc_8000x16000.loom \\
        --before /tmp/before --after . --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

__all__ = ["OPERATIONS", "main"]

_PRELUDE = """
import json, sys, time
import dask, numpy as np
import loomx
path = sys.argv[1]
"""

OPERATIONS: dict[str, str] = {
    "open_loom": """
t = time.perf_counter()
ds = loomx.open_loom(path)
elapsed = time.perf_counter() - t
check = float(len(ds.variables))
""",
    'm.sum("col")': """
ds = loomx.open_loom(path)
t = time.perf_counter()
out = ds["matrix"].sum("col").values
elapsed = time.perf_counter() - t
check = float(out.astype(np.float64).sum())
""",
    "mean + std": """
ds = loomx.open_loom(path)
m = ds["matrix"]
t = time.perf_counter()
mean, std = dask.compute(m.mean("col"), m.std("col"))
elapsed = time.perf_counter() - t
check = float(mean.values.sum() + std.values.sum())
""",
    "1000 random columns": """
ds = loomx.open_loom(path)
cols = np.sort(np.random.default_rng(0).choice(ds.sizes["col"], 1000, replace=False))
t = time.perf_counter()
out = ds["matrix"].isel(col=cols).values
elapsed = time.perf_counter() - t
check = float(out.astype(np.float64).sum())
""",
    "write-back of log1p": """
ds = loomx.open_loom(path)
ds["log1p"] = np.log1p(ds["matrix"])
t = time.perf_counter()
loomx.to_loom(ds, path, mode="a")
elapsed = time.perf_counter() - t
ds.close()
with loomx.open_loom(path) as back:
    check = float(back["log1p"].sum().values)
""",
}
"""Operation -> code that sets ``elapsed`` (seconds) and ``check`` (a checksum)."""

_WRITES = {"write-back of log1p"}


def run_once(tree: Path, operation: str, path: Path, scratch: Path) -> tuple[float, float]:
    """``(seconds, checksum)`` of one operation in a fresh process on ``tree``'s loomx."""
    target = path
    if operation in _WRITES:
        target = scratch / f"{tree.name}-{path.name}"
        shutil.copyfile(path, target)
    code = _PRELUDE + OPERATIONS[operation] + "\nprint(json.dumps([elapsed, check]))\n"
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    out = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        env=env,
        cwd=scratch,
        capture_output=True,
        text=True,
        check=True,
    )
    if target != path:
        target.unlink()
    elapsed, check = json.loads(out.stdout.strip().splitlines()[-1])
    return elapsed, check


def reference_sum(path: Path) -> float:
    """Sum of ``/matrix`` read with h5py in row bands (float64)."""
    total = 0.0
    with h5py.File(path, "r") as f:
        dset = f["matrix"]
        for r0 in range(0, dset.shape[0], 1024):
            total += float(dset[r0 : r0 + 1024].astype(np.float64).sum())
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a .loom file")
    parser.add_argument("--before", type=Path, required=True, help="source tree A")
    parser.add_argument("--after", type=Path, required=True, help="source tree B")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--operations", nargs="*", default=list(OPERATIONS))
    args = parser.parse_args(argv)
    trees = {"before": args.before, "after": args.after}
    expected_sum = reference_sum(args.path)
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(dir=args.path.parent) as scratch:
        for tree in trees.values():  # warm-up: numba's caches, the page cache
            run_once(tree, 'm.sum("col")', args.path, Path(scratch))
        for operation in args.operations:
            checks = {}
            for _ in range(args.rounds):
                for label, tree in trees.items():
                    elapsed, check = run_once(tree, operation, args.path, Path(scratch))
                    times.setdefault((operation, label), []).append(elapsed)
                    checks.setdefault(label, set()).add(round(check, 3))
            if checks["before"] != checks["after"]:
                raise SystemExit(f"{operation}: results differ between the trees: {checks}")
            if operation == 'm.sum("col")':
                (got,) = checks["after"]
                if not np.isclose(got, expected_sum, rtol=1e-5):
                    raise SystemExit(f"{operation}: {got} where h5py sums {expected_sum}")
    print(f"file: {args.path} ({args.path.stat().st_size / 2**20:.0f} MiB on disk)")
    print(f"before: {args.before}  after: {args.after}  rounds: {args.rounds}, alternating")
    print("| operation | before, median s | after, median s | after / before | all rounds |")
    print("| --- | ---: | ---: | ---: | --- |")
    for operation in args.operations:
        a, b = times[(operation, "before")], times[(operation, "after")]
        ma, mb = statistics.median(a), statistics.median(b)
        rounds = " / ".join(f"{x:.3f}" for x in a) + " vs " + " / ".join(f"{x:.3f}" for x in b)
        print(f"| {operation} | {ma:.3f} | {mb:.3f} | {mb / ma:.2f} | {rounds} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

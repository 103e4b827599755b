"""What the rollback journal below HDF5 costs in-place writers: a large append and a
computed-layer write-back, timed with two copies of loomx (``--before``: a tree without
the journal, ``--after``: this one) on fresh copies of one file.

Each timed run is a child process that imports loomx from the tree it is given, writes
into a fresh copy of the input (made, fsynced and read once before the run, not timed),
and checks what it wrote against numpy and h5py before it reports its time.

    python -m benchmarks.reports.rollback_overhead --file /work/bench-data/pbmc_10000x15000.loom \\
        --scratch /work/bench-data/tmp --before /tmp/loomx-before --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

__all__: list[str] = []

CHILD = r"""
import json, os, sys, time
tree, op, path = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, tree)
import dask.array as da, h5py, numpy as np, xarray as xr
import loomx
assert os.path.dirname(loomx.__file__) == os.path.join(tree, "loomx"), loomx.__file__

with h5py.File(path, "r") as f:
    n, m = f["matrix"].shape
    head = f["matrix"][:, :300]
extra = 4000
rng = np.random.default_rng(7)
if op == "append":
    values = rng.poisson(0.1, (n, extra)).astype(np.float32)
    more = xr.Dataset(
        {"matrix": (("row", "col"), da.from_array(values, chunks=(n, 512)))},
        coords={"CellID": ("col", np.array([f"new{j}" for j in range(extra)], dtype=object))},
    )
    with loomx.open_loom(path) as old:
        more = more.assign_coords(Accession=("row", old["Accession"].values))
    start = time.perf_counter()
    loomx.append(path, more, key="Accession", fill_values="auto")
    seconds = time.perf_counter() - start
    with h5py.File(path, "r") as f:
        assert f["matrix"].shape == (n, m + extra)
        np.testing.assert_array_equal(f["matrix"][:, m:], values)
        np.testing.assert_array_equal(f["matrix"][:, :300], head)
else:
    ds = loomx.open_loom(path)
    ds["norm"] = np.log1p(ds["matrix"])
    start = time.perf_counter()
    loomx.to_loom(ds, path, mode="a")
    seconds = time.perf_counter() - start
    ds.close()
    with h5py.File(path, "r") as f:
        np.testing.assert_allclose(f["layers/norm"][:, :300], np.log1p(head), rtol=1e-6)
        np.testing.assert_array_equal(f["matrix"][:, :300], head)
assert not os.path.exists(path + ".loomx-rollback")
print(json.dumps({"seconds": seconds}))
"""


def fresh_copy(source: str, target: str) -> None:
    shutil.copyfile(source, target)
    with open(target, "rb") as fh:
        os.fsync(fh.fileno())
        while fh.read(1 << 24):  # in the page cache, as the source is
            pass


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", required=True)
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--before", required=True, help="a loomx tree without the journal")
    parser.add_argument("--after", default=str(Path(__file__).resolve().parents[2]))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    target = os.path.join(args.scratch, "rollback-overhead.loom")
    results: dict[tuple[str, str], list[float]] = {}
    print("uptime before:", uptime())
    try:
        for _ in range(args.rounds):
            for op in ("append", "write-back"):
                for name, tree in (("before", args.before), ("after", args.after)):
                    fresh_copy(args.file, target)
                    out = subprocess.run(
                        [sys.executable, "-c", textwrap.dedent(CHILD), tree, op, target],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    seconds = json.loads(out.strip().splitlines()[-1])["seconds"]
                    results.setdefault((op, name), []).append(seconds)
    finally:
        with_journal = target + ".loomx-rollback"
        for leftover in (target, with_journal):
            if os.path.exists(leftover):
                os.remove(leftover)
    print("uptime after:", uptime())
    size = os.path.getsize(args.file) / 1e6
    print(f"\n{Path(args.file).name} ({size:.0f} MB), medians of {args.rounds}\n")
    print("| write | without journal, s | with journal, s | ratio |")
    print("| --- | --- | --- | --- |")
    for op in ("append", "write-back"):
        before = statistics.median(results[op, "before"])
        after = statistics.median(results[op, "after"])
        print(f"| {op} | {before:.2f} | {after:.2f} | {after / before:.2f} |")


if __name__ == "__main__":
    main()

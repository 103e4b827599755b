"""Print the write benchmarks as a markdown table (medians of ``--repeat`` runs).

Usage::

    python -m benchmarks.write_report /work/bench-data/pbmc_20000x30000.loom \\
        /work/bench-data/pbmc_10000x15000.loom --big /work/bench-data/big.loom --repeat 3

Every case runs in its own process on a fresh copy of the file and is checked afterwards
(see ``benchmarks/test_write.py``).  ``uptime`` is printed with the table: the numbers depend
on what else the machine runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

import h5py

from .test_write import run_case


def _median(kind: str, path: str, folder: Path, repeat: int) -> dict[str, float]:
    runs = [run_case(kind, path, folder) for _ in range(repeat)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="Loom files for the layer cases")
    parser.add_argument("--big", help="~1 GB Loom file for the attribute write-back")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median)")
    parser.add_argument("--scratch", help="folder for the copies (default: next to the file)")
    args = parser.parse_args(argv)
    print(f"uptime before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout}")
    print(
        "| file | loompy s | loomx lazy s | loomx lazy on a LocalCluster s | loomx in-memory s "
        "| loompy / lazy | loompy / cluster | loompy / in-memory "
        "| peak RSS loompy / lazy / in-memory (MB) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in args.files:
        scratch = args.scratch or str(Path(path).parent)
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            r = {
                k: _median(k, path, Path(tmp), args.repeat)
                for k in ("loompy", "loomx", "loomx-cluster", "loomx-memory")
            }
        with h5py.File(path, "r") as f:
            shape = "x".join(map(str, f["matrix"].shape))
        rss = " / ".join(f"{r[k]['rss'] / 1e6:.0f}" for k in ("loompy", "loomx", "loomx-memory"))
        lp = r["loompy"]["wall"]
        print(
            f"| {shape} | {lp:.2f} | {r['loomx']['wall']:.2f} | "
            f"{r['loomx-cluster']['wall']:.2f} | {r['loomx-memory']['wall']:.2f} | "
            f"{lp / r['loomx']['wall']:.1f}x | {lp / r['loomx-cluster']['wall']:.1f}x | "
            f"{lp / r['loomx-memory']['wall']:.1f}x | {rss} |"
        )
    if args.big:
        scratch = args.scratch or str(Path(args.big).parent)
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            a = _median("attr", args.big, Path(tmp), args.repeat)
        size = Path(args.big).stat().st_size / 1e9
        print(
            f"\n| write-back of one column attribute | file | wall s | growth bytes | "
            f"attribute bytes |\n| --- | --- | --- | --- | --- |\n"
            f"| loomx mode='a' | {size:.2f} GB | {a['wall']:.3f} | {int(a['growth'])} | "
            f"{int(a['nbytes'])} |"
        )
    print(f"\nuptime after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout}")


if __name__ == "__main__":
    main()

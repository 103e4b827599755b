"""What ``open_loom(path, untrusted=True)`` costs: the child process that reads every
object's metadata first (``loomx._hdf5.probe.probe_file``), against a plain open and
against a full pass over ``/matrix`` (the sum of every value), on the same file in the
same run.

Usage::

    python -m benchmarks.reports.untrusted_cost FILE [FILE ...]
    python -m benchmarks.reports.untrusted_cost --generate 3000x5000 /tmp/counts.loom

``--generate GENESxCELLS`` first writes realistic counts there (``make_counts_loom``;
20000x30000 is about 1 GB).  Prints the best of 3 rounds per row, in seconds
(``--full-rounds 1``: one full pass, for large files).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this checkout's benchmarks and loomx
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import loomx
from loomx._hdf5 import probe as _probe
from loomx._hdf5.probe import probe_file
from loomx.testing import make_counts_loom

__all__: list[str] = []


def _best(run, rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _open(path: str, **kwargs) -> None:
    loomx.open_loom(path, **kwargs).close()


def _full_pass(path: str) -> None:
    with loomx.open_loom(path) as ds:
        ds["matrix"].sum().compute()


def report(path: str, full_rounds: int = 3) -> dict[str, float]:
    """Seconds of: the first probe of a process (it starts the probe server), the probe
    alone, a plain open, an untrusted open, a full pass."""
    _probe._SERVER = _probe._Server()  # a process's first probe starts its server
    return {
        "cold probe": _best(lambda: probe_file(path), 1),
        "probe": _best(lambda: probe_file(path)),
        "open": _best(lambda: _open(path)),
        "open untrusted": _best(lambda: _open(path, untrusted=True)),
        "full pass": _best(lambda: _full_pass(path), full_rounds),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--generate", metavar="GENESxCELLS")
    parser.add_argument("--full-rounds", type=int, default=3, help="rounds of the full pass")
    args = parser.parse_args(argv)
    if args.generate:
        genes, cells = map(int, args.generate.lower().split("x"))
        make_counts_loom(args.files[0], genes, cells)
    print(
        "| file | MB | first probe | probe | open | open untrusted | full pass "
        "| untrusted / full pass |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for path in args.files:
        t = report(path, args.full_rounds)
        size = os.path.getsize(path) / 1e6
        ratio = (t["open untrusted"] - t["open"]) / t["full pass"]
        print(
            f"| {os.path.basename(path)} | {size:.1f} | {t['cold probe']:.2f} | "
            f"{t['probe']:.2f} | {t['open']:.2f} | "
            f"{t['open untrusted']:.2f} | {t['full pass']:.2f} | {ratio:.2f} |"
        )


if __name__ == "__main__":
    main()

"""The physical limit of reading a layer on this machine: the batch kernel inflating every
chunk of ``/matrix`` (nothing placed, nothing summed) in 1 process and in one process per
core, with the per-chunk Python path (``ChunkIndex.read(..., inflater="libdeflate")``) and
the batch kernel's full read (``ChunkIndex.read``) beside it, in the same run.

Usage::

    python -m benchmarks.reports.inflate_ceiling /work/bench-data/pbmc_20000x30000.loom

Prints MB/s of decompressed data (best of 4 rounds per row, after one warm-up round).  Each
inflate-only task checks the kernel's status (every chunk decoded); before the timed rounds,
both full reads of every band are checked equal to h5py's read of the same rows.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

if __package__ in (None, ""):  # run as a script: this checkout's benchmarks and loomx
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.harness.operations import ncores
from benchmarks.harness.reference import BAND_ROWS

__all__: list[str] = []

_STATE: dict[str, object] = {}


def _init(path: str) -> None:
    from loomx._hdf5.chunkio import FileReader
    from loomx._hdf5.chunks import ChunkIndex

    with h5py.File(path, "r") as f:
        _STATE.update(
            index=ChunkIndex.from_dataset(f["matrix"]), reader=FileReader.of(path), path=path
        )


def _inflate_only(band: tuple[int, int]) -> int:
    """Inflate every chunk of rows ``band`` with the batch kernel; return the bytes made."""
    from loomx._hdf5 import chunkio as _chunkio
    from loomx._hdf5 import kernels as _kernels

    index, reader = _STATE["index"], _STATE["reader"]
    rows = slice(band[0] // index.chunks[0], -(-band[1] // index.chunks[0]))
    offs = index.offsets[rows].ravel()
    sizes = index.sizes[rows].ravel()
    keep = offs >= 0
    order = np.argsort(offs[keep], kind="stable")
    offs, sizes = offs[keep][order], sizes[keep][order]
    src, starts = _chunkio.gather_chunks(reader, offs, sizes)
    item = index.dtype.itemsize
    status = np.zeros(3, np.int64)
    nothing = np.zeros(0, np.int64)
    codes = np.array([c for c, _ in index.filters], np.int64)
    params = np.array([v[0] if v else item for _, v in index.filters], np.int64)
    _kernels.decode_chunks(
        src, starts, sizes, np.zeros(offs.size, np.int64), codes, params, index.chunks[0],
        index.chunks[1] * item, item, np.zeros((offs.size, 6), np.int64),
        np.zeros((1, 1), np.uint8), status, 0, nothing, nothing, nothing, nothing,
    )  # fmt: skip
    if status[0]:
        raise RuntimeError(f"chunk {status[1]} failed to decode: {status}")
    return offs.size * math.prod(index.chunks) * item


def _full_read(band: tuple[int, int], inflater: str | None = None) -> int:
    block = _STATE["index"].read(_STATE["reader"], (slice(*band),), inflater=inflater)
    return block.nbytes


def _python_read(band: tuple[int, int]) -> int:
    return _full_read(band, "libdeflate")


def _check_band(band: tuple[int, int]) -> int:
    """Read rows ``band`` with the batch kernel and with the per-chunk Python path; both must
    equal h5py's read of the same rows.  Returns the rows checked."""
    with h5py.File(_STATE["path"], "r") as f:
        want = f["matrix"][band[0] : band[1]]
    for inflater in (None, "libdeflate"):
        got = _STATE["index"].read(_STATE["reader"], (slice(*band),), inflater=inflater)
        np.testing.assert_array_equal(got, want, err_msg=f"rows {band}, inflater {inflater}")
    return band[1] - band[0]


def check_reads(path: str, bands: list[tuple[int, int]]) -> None:
    """Check both full reads of every band against h5py (untimed, before the measurements)."""
    with multiprocessing.get_context("spawn").Pool(ncores(), _init, (path,)) as pool:
        checked = sum(pool.map(_check_band, bands))
    if checked != bands[-1][1]:
        raise AssertionError(f"{path}: checked {checked} rows of {bands[-1][1]}")


def _measure(path: str, procs: int, task, bands) -> float:
    with multiprocessing.get_context("spawn").Pool(procs, _init, (path,)) as pool:
        pool.map(task, bands[:procs])
        best = math.inf
        for _ in range(4):
            start = time.perf_counter()
            made = sum(pool.map(task, bands, chunksize=1))
            best = min(best, time.perf_counter() - start)
    return made / best / 1e6


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    args = parser.parse_args()
    with h5py.File(args.file, "r") as f:
        n_rows = f["matrix"].shape[0]
    bands = [(s, min(s + BAND_ROWS, n_rows)) for s in range(0, n_rows, BAND_ROWS)]
    check_reads(args.file, bands)
    print(f"`uptime` before: `{_uptime()}`")
    print(
        "| processes | kernel, inflate only MB/s | kernel, full read MB/s "
        "| per-chunk Python path, full read MB/s |"
    )
    print("| ---: | ---: | ---: | ---: |")
    for procs in sorted({1, ncores()}):
        row = [
            _measure(args.file, procs, t, bands) for t in (_inflate_only, _full_read, _python_read)
        ]
        print(f"| {procs} | " + " | ".join(f"{x:.0f}" for x in row) + " |", flush=True)
    print(f"`uptime` after: `{_uptime()}`")
    print(f"(pid {os.getpid()}; {len(bands)} bands of {BAND_ROWS} rows)")


if __name__ == "__main__":
    main()

"""Writes against loompy and against the machine's limits for them, in one run: a computed
layer (``log1p`` of ``/matrix``) written back into a copy of a Loom file, and ``combine``
of a folder of files whose rows are realigned by ``Accession``.

Usage::

    python -m benchmarks.reports.write_limits --file /work/bench-data/pbmc_20000x30000.loom \\
        --combine-inputs /work/bench-data/combine_5000x8000_shuffled --rounds 3

Every method runs in fresh processes (``timer.measure_in_subprocess``: two runs, each into a
fresh copy, the second one timed as ``wall s``), round-robin over ``--rounds`` rounds, and its
written file is checked against the h5py/numpy reference (``log1p`` of the matrix; the inputs
concatenated with rows matched by ``Accession``), so loomx and loompy are checked equal to
each other.  The limits run in a fresh process each (best of 3 after a warm-up), no HDF5 in
the first two:

``deflate only``
    the chunks loomx compresses (every chunk of ``log1p(matrix)``; for ``combine`` every chunk
    of the realigned inputs, the first input's chunks being copied as they are), cut into
    tiles beforehand, compressed by the batch kernel the writer picks
    (``codecs.fastest_codec``) on one thread per core;
``loomx packing``
    the same chunks through ``codecs.pack_block`` (cutting, kernel, one ``bytes`` per chunk),
    the work of loomx's write tasks without reading or computing;
``HDF5 per chunk``
    every chunk of the output, compressed beforehand, written with ``write_direct_chunk`` into
    a new dataset of the output's storage in one thread (as the writer does), file closed.

``limit s`` is deflate only + HDF5 per chunk; ``loomx / limit`` the target's ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

if __package__ in (None, ""):  # run as a script: this checkout's benchmarks and loomx
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.harness.operations import ncores
from benchmarks.harness.reference import BAND_ROWS, check, input_files, reference, warm_page_cache
from benchmarks.harness.timer import child_env, measure_in_subprocess

__all__: list[str] = []

LAYER_METHODS = ("loomx_write_layer", "loompy_write_layer_fastest", "loompy_write_layer")
COMBINE_METHODS = ("loomx_combine", "loompy_combine")
TIMED_ROUNDS = 3


# --------------------------------------------------------------------------- limits (child)


def _layer_bands(path: str) -> tuple[list[tuple[int, np.ndarray, int]], h5py.Dataset]:
    """``log1p`` of ``/matrix`` in bands of whole chunk rows, full width: (row, band, column)."""
    f = h5py.File(path, "r")
    m = f["matrix"]
    step = max(BAND_ROWS, m.chunks[0]) // m.chunks[0] * m.chunks[0]
    return [(r, np.log1p(m[r : r + step]), 0) for r in range(0, m.shape[0], step)], m


def _combine_bands(folder: str) -> tuple[list, list, h5py.Dataset]:
    """The chunks loomx compresses when combining the folder's files: the realigned inputs
    (rows in the first file's ``Accession`` order) from the first chunk column the first
    input does not fill, as one band; and the first input's whole stored chunks before it
    (copied as they are by loomx)."""
    from loomx._write.append import key_order

    files = [h5py.File(p, "r") for p in input_files(folder)]
    m, first = files[0]["matrix"], files[0]["row_attrs/Accession"][:]
    parts = [m[:]]
    for f in files[1:]:
        order = key_order(first, f["row_attrs/Accession"][:], (f.filename, "Accession"))
        parts.append(f["matrix"][:][order])
    col0 = m.shape[1] // m.chunks[1] * m.chunks[1]
    offsets: list[tuple[int, int]] = []
    m.id.chunk_iter(lambda info: offsets.append(info.chunk_offset))
    raw = [(off, m.id.read_direct_chunk(off)[1]) for off in offsets if off[1] < col0]
    return [(0, np.hstack(parts)[:, col0:], col0)], raw, m


def _tiles(band: np.ndarray, chunks: tuple[int, int]) -> np.ndarray:
    (h, w), (cr, cc) = band.shape, chunks
    nr, nc = -(-h // cr), -(-w // cc)
    padded = np.zeros((nr * cr, nc * cc), band.dtype)
    padded[:h, :w] = band
    tiles = padded.reshape(nr, cr, nc, cc).transpose(0, 2, 1, 3).reshape(nr * nc, cr * cc)
    return np.ascontiguousarray(tiles).view(np.uint8)


def _kernel(codec: str, level: int, chunks: tuple[int, int], item: int):
    """One call of the batch kernel ``codec`` over a band's chunks (tiles for isal, the
    row-major band for libdeflate, as the writer gives them); returns the compressed bytes."""
    from loomx._hdf5 import deflaters, kernels

    def isal(work: tuple[np.ndarray, np.ndarray]) -> int:
        _, bounds = deflaters.deflate_tiles(work[1], level)
        return int(bounds[-1])

    def libdeflate(work: tuple[np.ndarray, np.ndarray]) -> int:
        band = work[0]
        as_bytes = band.view(np.uint8).reshape(len(band), band.shape[1] * item)
        n = -(-len(band) // chunks[0]) * -(-band.shape[1] // chunks[1])
        out = np.empty(n * kernels.encode_bound(level, chunks[0] * chunks[1] * item), np.uint8)
        bounds, zeros = np.empty(n + 1, np.int64), np.empty(n, np.uint8)
        order = np.arange(len(band), dtype=np.int64)
        kernels.encode_chunks(
            as_bytes, order, chunks[0], chunks[1] * item, level, out, bounds, zeros
        )
        return int(bounds[-1])

    return isal if codec == "isal" else libdeflate


def _best(fn, rounds: int = TIMED_ROUNDS) -> tuple[float, object]:
    fn()  # warm-up: kernels loaded, pages touched
    best, result = float("inf"), None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def child_limits(what: str, path: str, scratch: str) -> dict:
    """Deflate only, loomx packing and HDF5 per chunk for ``what`` (layer, combine) of ``path``."""
    from loomx._hdf5 import codecs

    if what == "layer":
        bands, src = _layer_bands(path)
        raw: list = []
    else:
        bands, raw, src = _combine_bands(path)
    chunks, dtype, level = src.chunks, src.dtype, int(src.compression_opts)
    codec = codecs.fastest_codec(level, int(np.prod(chunks)) * dtype.itemsize)
    work = [(np.ascontiguousarray(b), _tiles(b, chunks)) for _, b, _ in bands]
    kernel = _kernel(codec, level, chunks, dtype.itemsize)
    pool = ThreadPoolExecutor(ncores())
    raw_bytes = sum(w[1].nbytes for w in work)
    deflate_s, packed_bytes = _best(lambda: sum(pool.map(kernel, work)))

    def pack(item: tuple[int, np.ndarray, int]) -> codecs.PackedBlock:
        r, band, c = item
        return codecs.pack_block(band, (r, c), chunks, dtype, level, codec)

    pack_s, packed = _best(lambda: list(pool.map(pack, bands)))
    writes = raw + [
        (off, data) for p in packed for off, data in zip(p.offsets(chunks), p.chunks, strict=True)
    ]
    shape = src.shape
    if what == "combine":  # the first input's whole chunks, then the rest
        shape = (shape[0], bands[0][2] + bands[0][1].shape[1])

    def write_all(check: bool = False) -> int:
        out = os.path.join(scratch, f"direct-chunks-{os.getpid()}.h5")
        with h5py.File(out, "w") as f:
            d = f.create_dataset(
                "m", shape, dtype, chunks=chunks, compression="gzip", compression_opts=level
            )
            write = d.id.write_direct_chunk
            for off, data in writes:
                write(off, data)
        size = os.path.getsize(out)
        if check:  # untimed: what was written reads back as the values compressed
            with h5py.File(out, "r") as f:
                d = f["m"]
                if raw:
                    col0 = bands[0][2]
                    np.testing.assert_array_equal(d[:, :col0], src[:, :col0])
                for r, band, c in bands:
                    got = d[r : r + band.shape[0], c : c + band.shape[1]]
                    np.testing.assert_array_equal(got, band, err_msg=f"{what} at {(r, c)}")
        os.remove(out)
        return size

    write_all(check=True)
    hdf5_s, size = _best(write_all)
    return {
        "codec": codec,
        "level": level,
        "cores": ncores(),
        "chunks_compressed": int(sum(w[1].shape[0] for w in work)),
        "chunks_written": len(writes),
        "raw_mb": raw_bytes / 1e6,
        "compressed_mb": int(packed_bytes) / 1e6,
        "file_mb": size / 1e6,
        "deflate_s": deflate_s,
        "pack_s": pack_s,
        "hdf5_s": hdf5_s,
    }


def measure_limits(what: str, path: str, scratch: str) -> dict:
    """:func:`child_limits` in a fresh process (this checkout's ``loomx``)."""
    cmd = [sys.executable, "-P", "-m", "benchmarks.reports.write_limits", "--child", what, path]
    cmd += ["--scratch", scratch]
    out = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"limits of {what} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the run


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", help="loompy-written Loom file")
    parser.add_argument("--combine-inputs", help="folder of files to combine (make_data --combine)")
    parser.add_argument("--rounds", type=int, default=1, help="fresh processes per method")
    parser.add_argument("--scratch", help="folder for copies and the limits' files")
    parser.add_argument("--child", choices=("layer", "combine"), help=argparse.SUPPRESS)
    parser.add_argument("target", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_limits(args.child, args.target, args.scratch)))
        return
    if not (args.file and args.combine_inputs):
        parser.error("--file and --combine-inputs are required")
    scratch = args.scratch or str(Path(args.file).resolve().parent)
    os.environ["LOOMX_BENCH_SCRATCH"] = scratch
    refs = {
        "write_layer": reference(args.file, ["write_layer"])["write_layer"],
        "combine": reference(args.combine_inputs, ["combine"])["combine"],
    }
    for p in [args.file, *input_files(args.combine_inputs)]:
        warm_page_cache(p)
    pairs = [(m, args.file, "write_layer") for m in LAYER_METHODS]
    pairs += [(m, args.combine_inputs, "combine") for m in COMBINE_METHODS]
    print(f"`uptime` before: `{_uptime()}`", flush=True)
    walls: dict[str, list] = {m: [] for m, _, _ in pairs}
    for r in range(args.rounds):
        for name, path, op in pairs:
            got = measure_in_subprocess(name, path)
            check(got.digest, refs[op], name)
            walls[name].append(got)
            print(
                f"round {r + 1} {name}: wall {got.wall_s:.2f} s, first {got.first_s:.2f} s, "
                f"cpu {got.cpu_s:.1f} s, peak {got.peak_rss_mb:.0f} MB, "
                f"load {got.loadavg_1min:.2f} (checked)",
                flush=True,
            )
    limits = {}
    for what, path in (("layer", args.file), ("combine", args.combine_inputs)):
        limits[what] = measure_limits(what, path, scratch)
        print(f"limits {what}: {json.dumps(limits[what])}", flush=True)
    print(f"`uptime` after: `{_uptime()}`\n")

    def med(name: str) -> float:
        return statistics.median(g.wall_s for g in walls[name])

    print(
        "| write | loomx s | loompy s | speed-up | deflate only s | loomx packing s "
        "| HDF5 per chunk s | limit s | loomx / limit |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for title, what, ours, peer in (
        ("computed layer, loompy's fastest way", "layer", "loomx_write_layer",
         "loompy_write_layer_fastest"),
        ("computed layer, loompy given the array", "layer", "loomx_write_layer",
         "loompy_write_layer"),
        ("combine, rows realigned", "combine", "loomx_combine", "loompy_combine"),
    ):  # fmt: skip
        lim = limits[what]
        limit = lim["deflate_s"] + lim["hdf5_s"]
        print(
            f"| {title} | {med(ours):.2f} | {med(peer):.2f} | {med(peer) / med(ours):.1f}x "
            f"| {lim['deflate_s']:.2f} | {lim['pack_s']:.2f} | {lim['hdf5_s']:.2f} "
            f"| {limit:.2f} | {med(ours) / limit:.2f}x |"
        )


if __name__ == "__main__":
    main()

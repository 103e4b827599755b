"""Remote Loom files: bytes and requests over loopback HTTP and S3, full-pass throughput
against the local disk, and worker scaling against the lock-free process ceiling.

    python -m benchmarks.reports.remote_report /work/bench-data/big_20000x30000.loom

serves the file from a loopback HTTP server with Range requests and a loopback S3 API
server (moto), both counting requests and bytes (:mod:`loomx.testing.servers`), and prints
three markdown tables, each with the machine load (``uptime``) before and after:

1. bytes and requests for: open; the first column read (which reads the layer's HDF5 chunk
   index); 1000 random columns; a full pass of every layer; and one column of a Dataset
   opened with the ``to_kerchunk`` index (no HDF5 chunk index read);
2. full-pass throughput (one layer, threads) from the local disk and from loopback HTTP;
3. full-pass throughput of a ``LocalCluster`` of 1, 2, ... single-threaded workers and of
   the same number of plain processes reading chunks with the chunk index and ``pread``
   (the lock-free ceiling), in the same run.

Every result is checked against h5py (a column, sampled columns of the random selection,
row sums of the full pass).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import loomx
from benchmarks.harness.provenance import uptime
from loomx._hdf5.chunkio import FileReader
from loomx._hdf5.chunks import ChunkIndex
from loomx.testing.servers import RangeHTTPServer, S3Server

__all__: list[str] = []

MB = 1e6


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def stored_chunks(path: str, h5path: str) -> dict[tuple[int, ...], int]:
    """Stored size of every chunk, by chunk offset (h5py)."""
    found: dict[tuple[int, ...], int] = {}
    with h5py.File(path, "r") as f:
        f[h5path].id.chunk_iter(lambda s: found.__setitem__(s.chunk_offset, s.size))
    return found


def row_sums_h5py(path: str, h5path: str, band: int = 2048) -> np.ndarray:
    with h5py.File(path, "r") as f:
        dset = f[h5path]
        return np.concatenate(
            [
                dset[i : i + band].sum(axis=1, dtype=np.float64)
                for i in range(0, dset.shape[0], band)
            ]
        )


@contextlib.contextmanager
def counted(server: Any) -> Iterator[dict[str, float]]:
    server.counts.reset()
    out: dict[str, float] = {}
    start = time.perf_counter()
    yield out
    out["seconds"] = time.perf_counter() - start
    out["requests"], out["bytes"] = server.counts.reset()


def layer_paths(path: str) -> dict[str, str]:
    with h5py.File(path, "r") as f:
        names = {"matrix": "/matrix"}
        names.update({k: f"/layers/{k}" for k in f.get("layers", {})})
    return names


@functools.lru_cache
def reference_of(path: str, layer: str) -> dict[str, Any]:
    """dtype and raw size of ``layer``, and the row sums of every layer (h5py)."""
    log(f"reference: row sums of every layer of {path} with h5py")
    layers = layer_paths(path)
    with h5py.File(path, "r") as f:
        dset = f[layers[layer]]
        out: dict[str, Any] = {"dtype": dset.dtype, "raw_bytes": dset.size * dset.dtype.itemsize}
    out["row_sums"] = {name: row_sums_h5py(path, h5) for name, h5 in layers.items()}
    return out


def bytes_table(
    path: str, layer: str, n_cols: int, seed: int, protocols: tuple[str, ...]
) -> list[str]:
    """Bytes and requests of each read, per protocol."""
    reference = reference_of(path, layer)
    layers = layer_paths(path)
    h5path = layers[layer]
    size = os.path.getsize(path)
    chunks = stored_chunks(path, h5path)
    layer_bytes = sum(chunks.values())
    all_bytes = sum(sum(stored_chunks(path, p).values()) for p in layers.values())
    with h5py.File(path, "r") as f:
        shape, chunk_shape = f[h5path].shape, f[h5path].chunks
    rng = np.random.default_rng(seed)
    cols = np.sort(rng.choice(shape[1], n_cols, replace=False))
    holding = {int(c) // chunk_shape[1] * chunk_shape[1] for c in cols}
    holding_bytes = sum(s for (r, c), s in chunks.items() if c in holding)
    column = int(cols[n_cols // 2])
    one_col_bytes = sum(
        s for (r, c), s in chunks.items() if c == column // chunk_shape[1] * chunk_shape[1]
    )
    rows = [
        f"File `{Path(path).name}`: {size / MB:.0f} MB, layer `{layer}` {shape} "
        f"{reference['dtype']} in {chunk_shape} chunks, {layer_bytes / MB:.1f} MB stored; every "
        f"layer {all_bytes / MB:.0f} MB stored.",
        "",
        "| read | "
        + " | ".join(f"{p} requests | {p} MB | {p} s" for p in protocols)
        + " | MB of the chunks it needs |",
        "| --- |" + " ---: |" * (3 * len(protocols) + 1),
    ]
    results: dict[str, dict[str, dict[str, float]]] = {}
    with h5py.File(path, "r") as f:
        want_col = f[h5path][:, column]
        sample = cols[:: max(1, n_cols // 20)]
        want_sample = {int(c): f[h5path][:, int(c)] for c in sample}
    for proto in protocols:
        log(f"{proto}: serving {path}")
        with serve(proto, path) as (server, url, options):
            res = results[proto] = {}
            with counted(server) as res["open"]:
                ds = loomx.open_loom(url, storage_options=options)
            with counted(server) as res["one column (reads the HDF5 chunk index)"]:
                got = ds[layer][:, column].values
            np.testing.assert_array_equal(got, want_col)
            with counted(server) as res[f"{n_cols} random columns"]:
                got = ds[layer].isel(col=cols).values
            for c in sample:
                np.testing.assert_array_equal(got[:, np.searchsorted(cols, c)], want_sample[c])
            log(f"{proto}: full pass")
            with counted(server) as res["full pass, every layer"]:
                sums = {name: ds[name].sum("col", skipna=False).values for name in layers}
            for name, want in reference["row_sums"].items():
                np.testing.assert_allclose(sums[name], want, rtol=1e-5)
            ds.close()
            refs = loomx.to_kerchunk(path, url=url)
            with counted(server) as res["open with the `to_kerchunk` index"]:
                ds = loomx.open_loom(url, storage_options=options, chunk_index=refs)
            with counted(server) as res["one column, with the index"]:
                got = ds[layer][:, column].values
            np.testing.assert_array_equal(got, want_col)
            ds.close()
    needs = {
        "open": "",
        "one column (reads the HDF5 chunk index)": f"{one_col_bytes / MB:.2f}",
        f"{n_cols} random columns": f"{holding_bytes / MB:.1f}",
        "full pass, every layer": f"{all_bytes / MB:.0f}",
        "open with the `to_kerchunk` index": "",
        "one column, with the index": f"{one_col_bytes / MB:.2f}",
    }
    for name, need in needs.items():
        cells = []
        for proto in protocols:
            r = results[proto][name]
            cells += [f"{r['requests']:.0f}", f"{r['bytes'] / MB:.2f}", f"{r['seconds']:.2f}"]
        rows.append(f"| {name} | {' | '.join(cells)} | {need} |")
    ratio = results[protocols[0]][f"{n_cols} random columns"]["bytes"] / holding_bytes
    rows += [
        "",
        f"Random columns: {len(holding)} of {-(-shape[1] // chunk_shape[1])} chunk columns hold "
        f"them; {protocols[0]} transferred {ratio:.2f}x their stored size.",
    ]
    return rows


@contextlib.contextmanager
def serve(proto: str, path: str) -> Iterator[tuple[Any, str, dict[str, Any] | None]]:
    folder, name = os.path.split(os.path.abspath(path))
    if proto == "HTTP":
        with RangeHTTPServer(folder) as server:
            yield server, server.url(name), None
        return
    with S3Server() as server:
        start = time.perf_counter()
        server.upload("bench", {name: path})
        log(f"S3: uploaded in {time.perf_counter() - start:.1f} s")
        yield server, f"s3://bench/{name}", server.storage_options()


def timed(fn: Callable[[], Any], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def throughput_table(path: str, layer: str, rounds: int) -> list[str]:
    """Full pass of one layer, threads: local disk against loopback HTTP (alternating)."""
    reference = reference_of(path, layer)
    raw = reference["raw_bytes"]
    want = reference["row_sums"][layer]
    folder, name = os.path.split(os.path.abspath(path))
    times: dict[str, list[float]] = {"local disk": [], "loopback HTTP": []}
    with RangeHTTPServer(folder) as server:
        sources = {"local disk": path, "loopback HTTP": server.url(name)}
        for _ in range(rounds):
            for label, source in sources.items():
                ds = loomx.open_loom(source)
                out: dict[str, np.ndarray] = {}

                def run(ds: Any = ds, out: dict[str, np.ndarray] = out) -> None:
                    out["sums"] = ds[layer].sum("col", skipna=False).values

                times[label] += timed(run, 1)
                np.testing.assert_allclose(out["sums"], want, rtol=1e-5)
                ds.close()
                log(f"{label}: {times[label][-1]:.2f} s")
    local = statistics.median(times["local disk"])
    rows = [
        f"| full pass of `{layer}` ({raw / 1e9:.2f} GB raw), threads "
        "| median s | MB/s raw | vs local |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, values in times.items():
        t = statistics.median(values)
        rows.append(f"| {label} | {t:.2f} | {raw / MB / t:.0f} | {local / t:.0%} |")
    return rows


@functools.lru_cache(maxsize=8)
def _chunk_index(path: str, h5path: str) -> ChunkIndex:
    with h5py.File(path, "r") as f:
        return ChunkIndex.from_dataset(f[h5path])


def _ceiling_band(args: tuple[str, str, int, int]) -> np.ndarray:
    path, h5path, r0, r1 = args
    block = _chunk_index(path, h5path).read(FileReader.of(path), (slice(r0, r1),))
    return block.sum(axis=1, dtype=np.float64)


def scaling_table(path: str, layer: str, workers: list[int], rounds: int) -> list[str]:
    """LocalCluster of N single-threaded workers against N plain processes (chunk index +
    pread, no dask, no locks): full pass of one layer, the same run."""
    reference = reference_of(path, layer)
    from distributed import Client, LocalCluster

    h5path = layer_paths(path)[layer]
    raw = reference["raw_bytes"]
    want = reference["row_sums"][layer]
    ds0 = loomx.open_loom(path)
    band = int(ds0[layer].data.chunks[0][0])
    n_rows = ds0.sizes[ds0[layer].dims[0]]
    ds0.close()
    bands = [(path, h5path, r, min(r + band, n_rows)) for r in range(0, n_rows, band)]
    rows = [
        "| workers | `LocalCluster` s | MB/s raw | plain processes s (ceiling) | MB/s raw "
        "| cluster / ceiling |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in workers:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(n) as pool:
            pool.map(_ceiling_band, bands[:n])  # warm: imports, the chunk index

            def ceiling(pool: Any = pool) -> None:
                sums = np.concatenate(pool.map(_ceiling_band, bands, chunksize=1))
                np.testing.assert_allclose(sums, want, rtol=1e-5)

            plain = statistics.median(timed(ceiling, rounds))
        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster),
        ):
            ds = loomx.open_loom(path)
            ds[layer][:band].sum().compute()  # warm: imports, handles, the chunk index

            def full(ds: Any = ds) -> None:
                sums = ds[layer].sum(ds[layer].dims[1], skipna=False).values
                np.testing.assert_allclose(sums, want, rtol=1e-5)

            clustered = statistics.median(timed(full, rounds))
            ds.close()
        log(f"{n} workers: cluster {clustered:.2f} s, ceiling {plain:.2f} s")
        rows.append(
            f"| {n} | {clustered:.2f} | {raw / MB / clustered:.0f} | {plain:.2f} | "
            f"{raw / MB / plain:.0f} | {plain / clustered:.0%} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument(
        "--s3-file",
        help="a smaller file for the HTTP and S3 bytes table: moto, the S3 server, copies "
        "the whole object for every range request",
    )
    parser.add_argument("--layer", default="matrix")
    parser.add_argument("--columns", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--tables", nargs="+", default=["bytes", "s3", "throughput", "scaling"],
        choices=["bytes", "s3", "throughput", "scaling"],
    )  # fmt: skip
    args = parser.parse_args()
    path = os.path.abspath(args.file)
    s3_file = os.path.abspath(args.s3_file or path)
    tempfile.tempdir = tempfile.mkdtemp(prefix="loomx-remote-")
    tables = {
        "bytes": lambda: bytes_table(path, args.layer, args.columns, args.seed, ("HTTP",)),
        "s3": lambda: bytes_table(s3_file, args.layer, args.columns, args.seed, ("HTTP", "S3")),
        "throughput": lambda: throughput_table(path, args.layer, args.rounds),
        "scaling": lambda: scaling_table(path, args.layer, args.workers, args.rounds),
    }
    for name in args.tables:
        print(f"`uptime` before: {uptime()}\n")
        print("\n".join(tables[name]()))
        print(f"\n`uptime` after: {uptime()}\n", flush=True)


if __name__ == "__main__":
    main()

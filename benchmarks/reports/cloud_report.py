"""A remote Loom file at cloud latency: requests, bytes and seconds of the reads a user
makes, over loopback HTTP and S3 with a fixed delay per request, against the local read.

    python -m benchmarks.reports.cloud_report /work/bench-data/seed_27998x160796.loom \\
        --delays 0 0.02 --protocols http s3 --sidecar

serves the file from a loopback HTTP server with Range requests and from moto's S3 API
(both from :mod:`loomx.testing.servers`, which count requests and bytes and add ``delay``
seconds to every request), and prints, for each protocol and delay, a markdown table of:
open; the first read of one column (which builds the chunk index it needs); 100 and 1000
random columns; 10,000 contiguous cells; a full pass (per-cell totals).  Each server is
fresh, so each first read starts from a cold chunk index.  With ``--sidecar`` the same
reads run again with ``FILE.kerchunk.json`` beside the file (``loomx index``).  The local
column times the same reads from the local disk in this process (its chunk index cold at
the first read too).  Every result is checked against h5py.

``--sidecar-only`` runs only the reads with the sidecar (a long table in several runs);
``--s3-probe`` only times one range request to moto holding the file; ``--rate-probe``
only measures the loopback HTTP server's requests per second at each delay; with no
``--protocols``, only the local reads, twice; ``--no-local`` leaves them out; ``--steps
1 2 4`` makes only those reads (in the order above).  The last column
gives the stored bytes of the chunks each read needs (h5py's chunk index).

``--make ROWS COLS`` writes a file in loompy's layout of that shape first (a small one
proves the script: ``--make 2000 20000``).  moto copies the whole object for every range
request, so its seconds at large sizes say little about S3; its requests and bytes are the
reader's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
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
from loomx._read.sidecar import SIDECAR_SUFFIX, write_sidecar
from loomx.testing.servers import RangeHTTPServer, S3Server

__all__: list[str] = []

MB = 1e6
CONTIGUOUS = 10_000


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


@contextlib.contextmanager
def counted(server: Any, out: dict[str, float]) -> Iterator[None]:
    if server is not None:
        server.counts.reset()
    start = time.perf_counter()
    yield
    out["seconds"] = time.perf_counter() - start
    if server is not None:
        out["requests"], out["bytes"] = server.counts.reset()


def plan(path: str, seed: int) -> dict[str, Any]:
    """The reads (columns picked once, fixed seed), h5py's answers to check them and the
    stored bytes of the chunks each read needs (h5py's chunk index).  The per-cell totals
    are kept in the temporary folder (keyed by the file's size and mtime) for later runs."""
    st = os.stat(path)
    cache = (
        Path(tempfile.gettempdir()) / f"cloud-report-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}.npy"
    )
    with h5py.File(path, "r") as f:
        dset = f["matrix"]
        n_rows, n_cols = dset.shape
        rng = np.random.default_rng(seed)
        first = int(rng.integers(n_cols))
        picks = {k: rng.choice(n_cols, min(k, n_cols), replace=False) for k in (100, 1000)}
        start = int(rng.integers(max(1, n_cols - CONTIGUOUS)))
        block = slice(start, min(n_cols, start + CONTIGUOUS))
        check = {
            "first": dset[:, first],
            "100": dset[:, int(picks[100][7])],
            "1000": dset[:, int(picks[1000][-1])],
            "block": dset[:, block.stop - 1],
        }
        if cache.exists():
            totals = np.load(cache)
        else:
            totals = np.zeros(n_cols)
            for i in range(0, n_rows, 4096):
                totals += dset[i : i + 4096].sum(axis=0, dtype=np.float64)
            np.save(cache, totals)
        cells: list[tuple[int, int]] = []
        dset.id.chunk_iter(lambda s: cells.append((s.chunk_offset[1], s.size)))
        width = dset.chunks[1]
    col, size = np.array(cells, np.int64).reshape(-1, 2).T
    per_col = np.bincount(col // width, weights=size, minlength=-(-n_cols // width))

    def chunk_bytes(columns: np.ndarray) -> float:
        return float(per_col[np.unique(np.asarray(columns) // width)].sum())

    needs = {
        "first column": chunk_bytes(np.array([first])),
        "100 random columns": chunk_bytes(picks[100]),
        "1000 random columns": chunk_bytes(picks[1000]),
        f"{CONTIGUOUS:,} contiguous cells": chunk_bytes(np.arange(block.start, block.stop)),
        "full pass (per-cell totals)": float(per_col.sum()),
    }
    return {
        "first": first,
        "picks": picks,
        "block": block,
        "check": check,
        "totals": totals,
        "needs": needs,
    }


def reads(ds: Any, p: dict[str, Any]) -> dict[str, Callable[[], None]]:
    """The reads, each checked against h5py."""
    m = ds["matrix"] if ds is not None else None

    def first() -> None:
        np.testing.assert_array_equal(m[:, p["first"]].values, p["check"]["first"])

    def random(k: int, at: int) -> Callable[[], None]:
        def run() -> None:
            got = m.isel(col=p["picks"][k]).values
            np.testing.assert_array_equal(got[:, at], p["check"][str(k)])

        return run

    def block() -> None:
        got = m[:, p["block"]].values
        np.testing.assert_array_equal(got[:, -1], p["check"]["block"])

    def full() -> None:
        np.testing.assert_allclose(m.sum("row").values, p["totals"], rtol=1e-4)

    steps = {
        "first column": first,
        "100 random columns": random(100, 7),
        "1000 random columns": random(1000, -1),
        f"{CONTIGUOUS:,} contiguous cells": block,
        "full pass (per-cell totals)": full,
    }
    keep = p.get("steps")
    return {k: v for i, (k, v) in enumerate(steps.items()) if not keep or i + 1 in keep}


def measure(open_ds: Callable[[], Any], server: Any, p: dict[str, Any]) -> dict[str, dict]:
    out: dict[str, dict[str, float]] = {"open": {}}
    with counted(server, out["open"]):
        ds = open_ds()
    for name, run in reads(ds, p).items():
        out[name] = {}
        with counted(server, out[name]):
            run()
        log(f"  {name}: {out[name]}")
    ds.close()
    return out


def served(
    kind: str, folder: str, name: str, delay: float, bucket: str
) -> tuple[Any, Callable[[], Any]]:
    """A started server of ``kind`` serving ``folder/name`` and the opener of its URL (a
    new URL each time: the chunk index this process keeps per URL starts cold)."""
    if kind == "http":
        server = RangeHTTPServer(folder, delay=delay).start()
        url = server.url(name)
        return server, lambda: loomx.open_loom(url)
    server = S3Server(delay=delay).start()
    files = {name: os.path.join(folder, name)}
    sidecar = os.path.join(folder, name + SIDECAR_SUFFIX)
    if os.path.exists(sidecar):
        files[name + SIDECAR_SUFFIX] = sidecar
    server.upload(bucket, files)
    options = server.storage_options()
    return server, lambda: loomx.open_loom(f"s3://{bucket}/{name}", storage_options=options)


def table(
    title: str, results: dict[str, dict[str, dict]], local: dict[str, dict], needs: dict
) -> list[str]:
    configs = list(results)
    lines = [
        f"**{title}**",
        "",
        "| read | "
        + " | ".join(f"{c} requests | {c} MB | {c} s" for c in configs)
        + " | local s | MB of the chunks it needs |",
        "| --- |" + " ---: |" * (3 * len(configs) + 2),
    ]
    for step in local:
        cells = []
        for c in configs:
            r = results[c][step]
            cells += [f"{r['requests']:.0f}", f"{r['bytes'] / MB:.2f}", f"{r['seconds']:.2f}"]
        need = f"{needs[step] / MB:.2f}" if step in needs else ""
        lines.append(
            f"| {step} | " + " | ".join(cells) + f" | {local[step]['seconds']:.2f} | {need} |"
        )
    return lines


def rate_probe(folder: str, name: str, delays: list[float], n: int = 5000) -> None:
    """Requests per second the loopback HTTP server answers, with ``n`` 1 KB ranges 1 MB
    apart fetched by one fsspec ``cat_ranges`` call (no coalescing; fsspec's batches), and
    the most in flight at once: the ceiling of any read's request rate on this machine."""
    import fsspec

    for delay in delays:
        with RangeHTTPServer(folder, delay=delay) as server:
            fs = fsspec.filesystem("http", skip_instance_cache=True)
            url = server.url(name)
            size = os.path.getsize(os.path.join(folder, name))
            starts = [(k << 20) % (size - 1024) for k in range(n)]
            fs.cat_file(url, start=0, end=8)
            server.counts.reset()
            start = time.perf_counter()
            fs.cat_ranges([url] * n, starts, [a + 1024 for a in starts])
            took = time.perf_counter() - start
            in_flight = server.counts.max_in_flight
            requests, _ = server.counts.reset()
        print(
            f"loopback HTTP, {delay * 1000:.0f} ms per request: {requests} requests of 1 KB "
            f"in {took:.2f} s ({requests / took:.0f} per second), at most {in_flight} in flight"
        )


def s3_probe(source: str, n: int = 5) -> None:
    """Seconds of one 1 KB range request to moto holding ``source`` (moto copies the whole
    object for every range request: the bound of S3 rows on large files)."""
    import s3fs

    server = S3Server().start()
    try:
        start = time.perf_counter()
        server.upload("probe", {"file": source})
        upload = time.perf_counter() - start
        fs = s3fs.S3FileSystem(**server.storage_options())
        size = os.path.getsize(source)
        took = []
        for k in range(n):
            offset = (k + 1) * size // (n + 2)
            start = time.perf_counter()
            fs.cat_file("probe/file", start=offset, end=offset + 1024)
            took.append(time.perf_counter() - start)
        print(
            f"moto, an object of {size / MB:.0f} MB: upload {upload:.1f} s; one 1 KB range "
            f"request {np.median(took):.3f} s (median of {n}: "
            + ", ".join(f"{t:.3f}" for t in took)
            + ")"
        )
    finally:
        server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="the Loom file (loompy's layout)")
    parser.add_argument("--make", nargs=2, type=int, metavar=("ROWS", "COLS"))
    parser.add_argument("--delays", nargs="+", type=float, default=[0.0, 0.02])
    parser.add_argument("--protocols", nargs="*", default=["http", "s3"], choices=["http", "s3"])
    parser.add_argument("--sidecar", action="store_true", help="also with FILE.kerchunk.json")
    parser.add_argument("--sidecar-only", action="store_true", help="only with FILE.kerchunk.json")
    parser.add_argument(
        "--s3-probe", action="store_true", help="only time one range request to moto"
    )
    parser.add_argument("--no-local", action="store_true", help="leave the local reads out")
    parser.add_argument(
        "--steps", nargs="+", type=int, help="only these reads (1: first column ... 5: full pass)"
    )
    parser.add_argument(
        "--rate-probe", action="store_true", help="only the loopback HTTP server's request rate"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="cloud-report-")
    try:
        if args.make:
            from benchmarks.data.make_data import make_loompy_file

            source = os.path.join(folder, "made.loom")
            log(f"writing {args.make[0]} x {args.make[1]} in loompy's layout")
            make_loompy_file(source, *args.make, density=0.07, seed=args.seed)
        elif args.path:
            source = args.path
        else:
            parser.error("give a file or --make ROWS COLS")
        name = "seed.loom"
        served_copy = os.path.join(folder, name)  # the servers serve only files in their folder
        try:
            os.link(source, served_copy)
        except OSError:  # another filesystem
            shutil.copyfile(source, served_copy)
        if args.s3_probe or args.rate_probe:
            print(f"Load before: {uptime()}")
            if args.rate_probe:
                rate_probe(folder, name, args.delays)
            if args.s3_probe:
                s3_probe(source)
            print(f"Load after: {uptime()}")
            return
        p = plan(source, args.seed)
        p["steps"] = args.steps
        with h5py.File(source, "r") as f:
            shape, chunks = f["matrix"].shape, f["matrix"].chunks
        print(
            f"File `{Path(source).name}`: {os.path.getsize(source) / MB:.0f} MB, `matrix` "
            f"{shape} in {chunks} chunks. Load before: {uptime()}"
        )
        print()
        from loomx.testing import make_example_loom

        warm = make_example_loom(os.path.join(folder, "warm.loom"), 100, 100)
        with loomx.open_loom(warm) as ds:  # the kernels compiled before anything is timed
            _ = ds["matrix"].isel(col=[1, 5]).values, ds["matrix"][:, 3].values
        if args.no_local:  # measured in another run
            local = {step: {"seconds": float("nan")} for step in ["open", *reads(None, p)]}
        else:
            log("local")
            local = measure(lambda: loomx.open_loom(source), None, p)
        if not args.protocols:  # the local reads only, a second time (the chunk index kept)
            again = measure(lambda: loomx.open_loom(source), None, p)
            print("| read | local s | local s, again (index kept) | MB of the chunks it needs |")
            print("| --- | ---: | ---: | ---: |")
            for step in local:
                need = f"{p['needs'][step] / MB:.2f}" if step in p["needs"] else ""
                print(
                    f"| {step} | {local[step]['seconds']:.2f} | "
                    f"{again[step]['seconds']:.2f} | {need} |"
                )
            print(f"\nLoad after: {uptime()}")
            return
        rounds = [True] if args.sidecar_only else [False, True] if args.sidecar else [False]
        for with_sidecar in rounds:
            sidecar = os.path.join(folder, name + SIDECAR_SUFFIX)
            if with_sidecar:
                write_sidecar(source, sidecar)
            results = {}
            for kind in args.protocols:
                for delay in args.delays:
                    label = f"{kind.upper()} {delay * 1000:.0f} ms"
                    log(f"{label}{' with the sidecar' if with_sidecar else ''}")
                    bucket = f"bench-{len(results)}-{int(with_sidecar)}"
                    server, open_ds = served(kind, folder, name, delay, bucket)
                    try:
                        results[label] = measure(open_ds, server, p)
                    finally:
                        server.close()
                    log(f"  load: {uptime()}")
            title = "With the sidecar" if with_sidecar else "Without a sidecar"
            print("\n".join(table(title, results, local, p["needs"])))
            print()
        print(f"Load after: {uptime()}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

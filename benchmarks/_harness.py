"""Shared measurement code for the benchmark tests and ``run_report.py``.

Every measured :class:`Method` computes one *operation* on ``/matrix``: loomx and loompy side
by side, plus the h5py and chunk-index ceilings.  The operations:

``open``
    open the file; the result is ``/matrix``'s shape.
``row_mean_std``
    per-row mean and standard deviation (a full pass).
``row_sums``
    per-row sums (a full pass).
``col_sums``
    per-column sums (a full pass).
``random_cols``
    1000 random columns (:func:`random_columns`, fixed seed) as a dense array.
``scan``
    a scan over column batches, summing each column (a full pass).
``csr``
    the whole matrix as a ``scipy.sparse.csr_matrix`` (a full pass).

A method has a ``setup`` (not timed: open files, start pools and clusters), a timed ``run``
and a ``teardown``; ``normalize`` turns its result into the operation's canonical form (for
example columns back into sorted order), and :func:`digest` reduces that to a few small
arrays that :func:`check` compares with the :class:`Reference` computed with plain h5py and
numpy (:func:`reference`).  So every benchmark is also a test of its result.

Peak memory is measured in a fresh child process (``python _harness.py METHOD FILE OUT``):
the child pins itself to ``Method.cores`` cores if set, sets the method up, reports
``READY``, waits for ``GO`` on stdin, runs the method twice (the first run pays the one-time
costs of a fresh process: lazy imports, thread pools, workers importing loomx, HDF5 files
opened) and reports both wall times, the CPU seconds of the second run and its own exact peak
RSS over both runs (``VmHWM``, reset just before the first run); meanwhile the parent samples
the summed RSS of the child and all its descendants (pool, dask and ``distributed`` worker
processes) with psutil.  Only after that report does the child digest its result (untimed,
unsampled) into ``OUT``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

BAND_ROWS = 256
"""Rows per band for the h5py and chunk-index ceilings (a multiple of loompy's 64-row chunks)."""

SAMPLE_INTERVAL_S = 0.005
"""How often the parent samples the RSS of the measured process tree."""

N_RANDOM_COLS = 1000
"""Columns picked by :func:`random_columns`."""

RANDOM_COLS_SEED = 0
"""Seed of :func:`random_columns`."""

SCALING_CORES = (1, 2, 4, 8, 16)
"""Core counts of the scaling table (those above this machine's cores are not measured)."""

OPS = ("open", "row_mean_std", "row_sums", "col_sums", "random_cols", "scan", "csr")
"""Operations, in table order."""

FULL_PASS_OPS = ("row_mean_std", "row_sums", "col_sums", "scan", "csr")
"""Operations that read every value of ``/matrix`` (their MB/s raw is meaningful)."""

OP_TITLES = {
    "open": "open the file",
    "row_mean_std": "full pass: per-row mean + std",
    "row_sums": "full pass: per-row sums",
    "col_sums": "full pass: per-column sums",
    "random_cols": f"{N_RANDOM_COLS} random columns (dense)",
    "scan": "full scan over column batches (per-column sums)",
    "csr": "whole matrix as scipy CSR",
}
"""Human-readable name of each operation."""

BASELINES = {
    "open": "loompy_connect",
    "row_mean_std": "loompy_map_meanstd",
    "row_sums": "loompy_map",
    "col_sums": "loompy_colsum",
    "random_cols": "loompy_cols",
    "scan": "loompy_scan",
    "csr": "loompy_sparse",
}
"""The loompy method each operation's speed-up is computed against."""

RTOL = {"row_sum": 1e-6, "row_mean": 1e-5, "row_std": 1e-4, "col_sum": 1e-6, "cols_col_sum": 1e-6}
"""Relative tolerance of each floating-point digest entry; all other entries must be equal."""


def ncores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def scaling_cores() -> list[int]:
    """Core counts of :data:`SCALING_CORES` this machine has, plus its own core count."""
    n = ncores()
    return sorted({k for k in SCALING_CORES if k <= n} | {n})


@dataclass(frozen=True)
class FileFacts:
    """Shape and storage facts of ``/matrix``."""

    path: str
    shape: tuple[int, int]
    dtype: str
    chunks: tuple[int, ...] | None
    compression: str | None
    compression_opts: Any
    size_mb: float
    raw_mb: float
    n_layers: int
    n_attrs: int


def file_facts(path: str | os.PathLike) -> FileFacts:
    """Read ``/matrix``'s shape, dtype, chunks and compression, and count layers and attributes."""
    with h5py.File(path, "r") as f:
        d = f["matrix"]
        shape = (int(d.shape[0]), int(d.shape[1]))
        n_attrs = sum(len(f[g]) for g in ("row_attrs", "col_attrs") if g in f)
        return FileFacts(
            path=str(path),
            shape=shape,
            dtype=str(d.dtype),
            chunks=d.chunks,
            compression=d.compression,
            compression_opts=d.compression_opts,
            size_mb=Path(path).stat().st_size / 1e6,
            raw_mb=shape[0] * shape[1] * d.dtype.itemsize / 1e6,
            n_layers=len(f["layers"]) if "layers" in f else 0,
            n_attrs=n_attrs,
        )


def warm_page_cache(path: str | os.PathLike) -> float:
    """Read the whole file once so the OS page cache is equally warm for every method.

    Returns the seconds it took.
    """
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.read(16 * 2**20):
            pass
    return time.perf_counter() - start


def random_columns(n_cols: int, k: int = N_RANDOM_COLS, seed: int = RANDOM_COLS_SEED) -> np.ndarray:
    """``min(k, n_cols)`` distinct column positions in random (unsorted) order, fixed seed."""
    rng = np.random.default_rng(seed)
    return rng.choice(n_cols, size=min(k, n_cols), replace=False)


@functools.lru_cache(maxsize=4)
def _h5file(path: str) -> h5py.File:
    return h5py.File(path, "r")


def band_row_sums(task: tuple[str, int, int]) -> np.ndarray:
    """Row sums of rows ``start:stop`` of ``/matrix``, read with plain h5py (a pool task)."""
    path, start, stop = task
    block = _h5file(path)["matrix"][start:stop, :]
    return block.sum(axis=1, dtype=np.float64)


def bands(path: str, n_rows: int, band_rows: int = BAND_ROWS) -> list[tuple[str, int, int]]:
    """Row bands covering ``/matrix``, as ``band_row_sums`` tasks."""
    return [(path, s, min(s + band_rows, n_rows)) for s in range(0, n_rows, band_rows)]


def _iter_bands(path: str) -> Iterator[np.ndarray]:
    """``/matrix`` band by band (:data:`BAND_ROWS` rows), read with plain h5py."""
    with h5py.File(path, "r") as f:
        d = f["matrix"]
        for start in range(0, d.shape[0], BAND_ROWS):
            yield d[start : start + BAND_ROWS, :]


def reference_row_sums(path: str | os.PathLike) -> np.ndarray:
    """Row sums of ``/matrix`` in float64, read band by band with h5py in this process."""
    return np.concatenate([b.sum(axis=1, dtype=np.float64) for b in _iter_bands(str(path))])


def _sha256(h: Any) -> np.ndarray:
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


@dataclass
class Reference:
    """Digests of every operation's correct result, from one h5py/numpy pass over the file."""

    shape: tuple[int, int]
    cols: np.ndarray
    digests: dict[str, dict[str, np.ndarray]]

    def __getitem__(self, op: str) -> dict[str, np.ndarray]:
        return self.digests["col_sums" if op == "scan" else op]


def reference(path: str | os.PathLike) -> Reference:
    """Compute the reference digests of every operation on ``path`` (h5py bands + numpy).

    Row statistics and column sums are computed in float64; the random columns and the CSR
    structure are hashed exactly (the CSR's indices as int64 and values as float64, in
    canonical row-major order, no explicit zeros).
    """
    path = str(path)
    facts = file_facts(path)
    n_rows, n_cols = facts.shape
    cols = random_columns(n_cols)
    sorted_cols = np.sort(cols)
    row_sum, row_mean, row_std, counts = [], [], [], []
    col_sum = np.zeros(n_cols)
    cols_col_sum = np.zeros(len(cols))
    h_cols, h_indices, h_data = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    for block in _iter_bands(path):
        wide = block.astype(np.float64)
        row_sum.append(wide.sum(axis=1))
        row_mean.append(wide.mean(axis=1))
        row_std.append(wide.std(axis=1))
        col_sum += wide.sum(axis=0)
        picked = np.ascontiguousarray(block[:, sorted_cols])
        h_cols.update(picked.tobytes())
        cols_col_sum += picked.sum(axis=0, dtype=np.float64)
        counts.append(np.count_nonzero(block, axis=1))
        r, c = np.nonzero(block)
        h_indices.update(c.astype(np.int64).tobytes())
        h_data.update(block[r, c].astype(np.float64).tobytes())
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts) if counts else [])])
    shape = np.asarray(facts.shape, np.int64)
    digests = {
        "open": {"shape": shape},
        "row_sums": {"row_sum": np.concatenate(row_sum)},
        "row_mean_std": {"row_mean": np.concatenate(row_mean), "row_std": np.concatenate(row_std)},
        "col_sums": {"col_sum": col_sum},
        "random_cols": {
            "shape": np.asarray((n_rows, len(cols)), np.int64),
            "dtype": np.asarray(facts.dtype),
            "sha256": _sha256(h_cols),
            "cols_col_sum": cols_col_sum,
        },
        "csr": {
            "shape": shape,
            "indptr": indptr.astype(np.int64),
            "indices_sha256": _sha256(h_indices),
            "data_sha256": _sha256(h_data),
        },
    }
    return Reference(facts.shape, cols, digests)


def digest(op: str, result: Any) -> dict[str, np.ndarray]:
    """Reduce an operation's canonical result to the small arrays :func:`check` compares."""
    if op == "open":
        return {"shape": np.asarray(result, np.int64)}
    if op == "row_sums":
        return {"row_sum": np.asarray(result, np.float64).ravel()}
    if op == "row_mean_std":
        mean, std = result
        return {
            "row_mean": np.asarray(mean, np.float64).ravel(),
            "row_std": np.asarray(std, np.float64).ravel(),
        }
    if op in ("col_sums", "scan"):
        return {"col_sum": np.asarray(result, np.float64).ravel()}
    if op == "random_cols":
        values = np.ascontiguousarray(np.asarray(result))
        return {
            "shape": np.asarray(values.shape, np.int64),
            "dtype": np.asarray(str(values.dtype)),
            "sha256": _sha256(hashlib.sha256(values.tobytes())),
            "cols_col_sum": values.sum(axis=0, dtype=np.float64),
        }
    if op == "csr":
        import scipy.sparse

        matrix = scipy.sparse.csr_matrix(result, copy=True)
        matrix.sum_duplicates()
        return {
            "shape": np.asarray(matrix.shape, np.int64),
            "indptr": matrix.indptr.astype(np.int64),
            "indices_sha256": _sha256(hashlib.sha256(matrix.indices.astype(np.int64).tobytes())),
            "data_sha256": _sha256(hashlib.sha256(matrix.data.astype(np.float64).tobytes())),
        }
    raise ValueError(f"unknown operation {op!r}")


def check(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], label: str) -> None:
    """Raise ``AssertionError`` unless digest ``got`` matches the reference digest ``expected``.

    Entries named in :data:`RTOL` are compared with that relative tolerance, all others
    exactly (shapes, dtypes, CSR ``indptr``, SHA-256 hashes).
    """
    missing = sorted(set(expected) - set(got))
    if missing:
        raise AssertionError(f"{label}: result lacks {missing}")
    for key, want in expected.items():
        have = np.asarray(got[key])
        if key in RTOL:
            if have.shape != want.shape:
                raise AssertionError(f"{label}: {key} shape {have.shape}, expected {want.shape}")
            np.testing.assert_allclose(have, want, rtol=RTOL[key], err_msg=f"{label}: {key}")
        elif not np.array_equal(have, want):
            raise AssertionError(f"{label}: {key} differs from the reference")


def check_row_sums(result: Any, expected: np.ndarray, label: str) -> None:
    """Raise ``AssertionError`` unless ``result`` equals the reference row sums."""
    check(digest("row_sums", result), {"row_sum": np.asarray(expected)}, label)


# --------------------------------------------------------------------------- contexts


@dataclass
class LoomxContext:
    """A loomx Dataset plus the dask scheduler settings its method computes with."""

    ds: Any
    cols: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)
    cluster: Any = None
    client: Any = None

    def dask_config(self) -> contextlib.AbstractContextManager[Any]:
        """``dask.config.set`` of this method's scheduler (nothing for dask's default)."""
        import dask

        return dask.config.set(**self.config) if self.config else contextlib.nullcontext()


def _loomx_setup(
    scheduler: str | None = None, workers: int | None = None
) -> Callable[[str], LoomxContext]:
    """Setup of a loomx method: open the file; start a ``LocalCluster`` for ``"cluster"``.

    ``scheduler`` is ``None`` (dask's default, threads), ``"synchronous"``, ``"threads"``
    (with ``workers`` threads), ``"processes"`` or ``"cluster"`` (``workers`` processes x
    1 thread, default one per core).
    """

    def setup(path: str) -> LoomxContext:
        import loomx

        ds = loomx.open_loom(path)
        ctx = LoomxContext(ds, random_columns(ds.sizes["col"]))
        if scheduler == "cluster":
            from dask.distributed import Client, LocalCluster

            ctx.cluster = LocalCluster(
                n_workers=workers or ncores(),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=40,
            )
            ctx.client = Client(ctx.cluster, set_as_default=False)
            ctx.config = {"scheduler": ctx.client}
        elif scheduler is not None:
            ctx.config = {"scheduler": scheduler}
            if workers is not None:
                ctx.config["num_workers"] = workers
        return ctx

    return setup


def _loomx_teardown(ctx: LoomxContext) -> None:
    if ctx.client is not None:
        ctx.client.close()
        ctx.cluster.close()
    ctx.ds.close()


def _open_dataset(path: str) -> Any:
    import loomx

    return loomx.open_loom(path)


def _import_loomx(path: str) -> str:
    import loomx  # noqa: F401

    return path


def _loomx_row_sums(ctx: LoomxContext) -> np.ndarray:
    with ctx.dask_config():
        return ctx.ds["matrix"].sum("col").values


def _loomx_mean_std(ctx: LoomxContext) -> tuple[np.ndarray, np.ndarray]:
    import dask

    m = ctx.ds["matrix"]
    with ctx.dask_config():
        mean, std = dask.compute(m.mean("col"), m.std("col"))
    return mean.values, std.values


def _loomx_map_mean_std(ctx: LoomxContext) -> tuple[np.ndarray, np.ndarray]:
    import dask

    with ctx.dask_config():
        mean, std = dask.compute(*ctx.ds.loom.map([np.mean, np.std], dim="col"))
    return mean.values, std.values


def _loomx_col_sums(ctx: LoomxContext) -> np.ndarray:
    with ctx.dask_config():
        return ctx.ds["matrix"].sum("row").values


def _loomx_cols(ctx: LoomxContext) -> np.ndarray:
    with ctx.dask_config():
        return ctx.ds["matrix"].isel(col=ctx.cols).values


def _loomx_scan(ctx: LoomxContext) -> np.ndarray:
    out = np.zeros(ctx.ds.sizes["col"])
    with ctx.dask_config():
        for _, idx, view in ctx.ds.loom.scan(dim="col"):
            out[idx] = view["matrix"].sum("row").values
    return out


def _loomx_to_scipy(ctx: LoomxContext) -> Any:
    with ctx.dask_config():
        return ctx.ds.loom.to_scipy("matrix", "csr")


def _sorted_back(result: np.ndarray, ctx: LoomxContext) -> np.ndarray:
    """Columns of a ``ds.isel(col=cols)`` result in increasing column order."""
    return np.asarray(result)[:, np.argsort(ctx.cols)]


@dataclass
class LoompyContext:
    """An open ``loompy.LoomConnection`` and the sorted random columns."""

    conn: Any
    sorted_cols: np.ndarray


def _loompy_setup(path: str) -> LoompyContext:
    import loompy

    conn = loompy.connect(path, "r")
    return LoompyContext(conn, np.sort(random_columns(conn.shape[1])))


def _loompy_teardown(ctx: LoompyContext) -> None:
    ctx.conn.close()


def _import_loompy(path: str) -> str:
    import loompy  # noqa: F401

    return path


def _loompy_connect(path: str) -> tuple[int, int]:
    import loompy

    with loompy.connect(path, "r") as conn:
        return tuple(conn.shape)


def _loompy_row_sums(ctx: LoompyContext) -> np.ndarray:
    return ctx.conn.map([np.sum], axis=0)[0]


def _loompy_mean_std(ctx: LoompyContext) -> tuple[np.ndarray, np.ndarray]:
    mean, std = ctx.conn.map([np.mean, np.std], axis=0)
    return mean, std


def _loompy_col_sums(ctx: LoompyContext) -> np.ndarray:
    return ctx.conn.map([np.sum], axis=1)[0]


def _loompy_cols(ctx: LoompyContext) -> np.ndarray:
    return ctx.conn[:, ctx.sorted_cols]


def _loompy_scan(ctx: LoompyContext) -> np.ndarray:
    out = np.zeros(ctx.conn.shape[1])
    for _ix, selection, view in ctx.conn.scan(axis=1, what=["layers"]):
        out[selection] = view[:, :].sum(axis=0)
    return out


def _loompy_sparse(ctx: LoompyContext) -> Any:
    return ctx.conn.sparse().tocsr()


# --------------------------------------------------------------------------- ceilings

_CEILING: dict[str, Any] = {}
"""Per pool worker: the chunk index and reader of the ceiling's file."""


def _ceiling_init(path: str) -> None:
    """Pool initializer: build ``/matrix``'s chunk index once in this worker."""
    from loomx._chunks import ChunkIndex, local_reader

    with h5py.File(path, "r") as f:
        index = ChunkIndex.from_dataset(f["matrix"])
    if index is None:
        raise RuntimeError(f"{path}: /matrix cannot be read through the chunk index")
    _CEILING.update(index=index, read_at=local_reader(path))


def ceiling_band_row_sums(task: tuple[str, int, int]) -> np.ndarray:
    """Row sums of rows ``start:stop`` read with ``ChunkIndex.read`` (a pool task).

    Every chunk of the band is read with ``os.pread`` and inflated (libdeflate when
    installed): no h5py, no HDF5 lock.  The sum is float32, as loomx's full pass computes it.
    """
    _path, start, stop = task
    block = _CEILING["index"].read(_CEILING["read_at"], (slice(start, stop),))
    return block.sum(axis=1)


def _worker_pid(_: int) -> int:
    time.sleep(0.02)
    return os.getpid()


@dataclass
class _PoolContext:
    pool: Any
    tasks: list[tuple[str, int, int]]
    func: Callable[[tuple[str, int, int]], np.ndarray]


def _pool_setup(n_procs: int | None, ceiling: bool) -> Callable[[str], _PoolContext]:
    """A spawned pool of ``n_procs`` processes (default one per core), every worker started.

    With ``ceiling`` each worker builds the chunk index once (initializer) and tasks read
    through it; otherwise tasks read with plain h5py.
    """

    def setup(path: str) -> _PoolContext:
        n = n_procs or ncores()
        with h5py.File(path, "r") as f:
            n_rows = f["matrix"].shape[0]
        init = {"initializer": _ceiling_init, "initargs": (path,)} if ceiling else {}
        pool = multiprocessing.get_context("spawn").Pool(n, **init)
        for _ in range(50):
            if len(set(pool.map(_worker_pid, range(4 * n), chunksize=1))) == n:
                break
        func = ceiling_band_row_sums if ceiling else band_row_sums
        return _PoolContext(pool, bands(path, n_rows), func)

    return setup


def _run_pool(ctx: _PoolContext) -> np.ndarray:
    return np.concatenate(ctx.pool.map(ctx.func, ctx.tasks, chunksize=1))


def _teardown_pool(ctx: _PoolContext) -> None:
    ctx.pool.close()
    ctx.pool.join()


# --------------------------------------------------------------------------- methods


def _identity(result: Any, ctx: Any) -> Any:
    return result


def _shape_of_dataset(ds: Any, ctx: Any) -> tuple[int, ...]:
    return tuple(ds["matrix"].shape)


@dataclass
class Method:
    """One way of computing an operation: untimed ``setup``, timed ``run``, ``teardown``.

    ``normalize(result, ctx)`` gives the operation's canonical result for :func:`digest`;
    ``cores`` pins the measuring child process (and so its pools and workers) to that many
    cores; ``scaling`` marks methods that exist only for the scaling table.
    """

    name: str
    label: str
    op: str
    setup: Callable[[str], Any]
    run: Callable[[Any], Any]
    teardown: Callable[[Any], None] = field(default=lambda ctx: None)
    normalize: Callable[[Any, Any], Any] = _identity
    cores: int | None = None
    scaling: bool = False

    @property
    def full_pass(self) -> bool:
        """Whether the method reads every value of ``/matrix``."""
        return self.op in FULL_PASS_OPS


def scaling_name(kind: str, k: int) -> str:
    """Name of the method of the scaling table: ``kind`` (threads, cluster, ceiling) on ``k`` cores.

    On all cores these are the ordinary methods (``loomx_threads``, ``loomx_distributed``,
    ``ceiling_n``), not pinned.
    """
    full = k == ncores()
    if kind == "threads":
        return "loomx_threads" if full else f"loomx_threads_{k}"
    if kind == "cluster":
        return "loomx_distributed" if full else f"loomx_distributed_{k}"
    if kind == "ceiling":
        return "ceiling_n" if full else f"ceiling_{k}"
    raise ValueError(f"unknown scaling kind {kind!r}")


def methods() -> dict[str, Method]:
    """Every measured method, by name, in table order (grouped by operation)."""
    n = ncores()
    lx = dict(setup=_loomx_setup(), teardown=_loomx_teardown)
    sync = dict(setup=_loomx_setup("synchronous"), teardown=_loomx_teardown)
    lp = dict(setup=_loompy_setup, teardown=_loompy_teardown)
    meanstd = 'dask.compute(m.mean("col"), m.std("col"))'
    items = [
        Method("open_loom", "loomx `open_loom(path)` (metadata only)", "open", _import_loomx,
               _open_dataset, normalize=_shape_of_dataset),
        Method("loompy_connect", 'loompy `connect(path, "r")` + close', "open", _import_loompy,
               _loompy_connect),
        Method("loomx_meanstd", f"loomx `{meanstd}`, default threads", "row_mean_std",
               run=_loomx_mean_std, **lx),
        Method("loomx_meanstd_sync", f"loomx `{meanstd}`, synchronous", "row_mean_std",
               run=_loomx_mean_std, **sync),
        Method("loomx_map_meanstd", 'loomx `ds.loom.map([np.mean, np.std], dim="col")`, '
               "default threads", "row_mean_std", run=_loomx_map_mean_std, **lx),
        Method("loomx_map_meanstd_sync", "loomx `ds.loom.map(...)`, synchronous",
               "row_mean_std", run=_loomx_map_mean_std, **sync),
        Method("loompy_map_meanstd", "loompy `ds.map([np.mean, np.std], axis=0)`",
               "row_mean_std", run=_loompy_mean_std, **lp),
        Method("loomx_threads", 'loomx `m.sum("col")`, default threads', "row_sums",
               run=_loomx_row_sums, **lx),
        Method("loomx_sync", 'loomx `m.sum("col")`, synchronous', "row_sums",
               run=_loomx_row_sums, **sync),
        Method("loomx_processes", 'loomx `m.sum("col")`, `scheduler="processes"`', "row_sums",
               _loomx_setup("processes"), _loomx_row_sums, _loomx_teardown),
        Method("loomx_distributed", f'loomx `m.sum("col")`, `LocalCluster({n} procs x 1 '
               "thread)`", "row_sums", _loomx_setup("cluster", n), _loomx_row_sums,
               _loomx_teardown),
        Method("loompy_map", "loompy `ds.map([np.sum], axis=0)`", "row_sums",
               run=_loompy_row_sums, **lp),
        Method("h5py_1", "h5py row bands, 1 process", "row_sums", _pool_setup(1, False),
               _run_pool, _teardown_pool),
        Method("h5py_n", f"h5py row bands, {n} processes", "row_sums", _pool_setup(n, False),
               _run_pool, _teardown_pool),
    ]  # fmt: skip
    for k in scaling_cores():
        if k == n:
            continue
        items += [
            Method(f"ceiling_{k}", f"ceiling: chunk index, {k} process{'es' * (k > 1)} "
                   f"({k} core{'s' * (k > 1)})", "row_sums", _pool_setup(k, True), _run_pool,
                   _teardown_pool, cores=k),
            Method(f"loomx_threads_{k}", f'loomx `m.sum("col")`, {k} thread{"s" * (k > 1)} '
                   f"({k} core{'s' * (k > 1)})", "row_sums", _loomx_setup("threads", k),
                   _loomx_row_sums, _loomx_teardown, cores=k, scaling=True),
            Method(f"loomx_distributed_{k}", f'loomx `m.sum("col")`, `LocalCluster({k} procs '
                   f"x 1 thread)` ({k} core{'s' * (k > 1)})", "row_sums",
                   _loomx_setup("cluster", k), _loomx_row_sums, _loomx_teardown, cores=k,
                   scaling=True),
        ]  # fmt: skip
    items += [
        Method("ceiling_n", f"ceiling: chunk index, {n} processes (all cores)", "row_sums",
               _pool_setup(n, True), _run_pool, _teardown_pool),
        Method("loomx_colsum", 'loomx `m.sum("row")`, default threads', "col_sums",
               run=_loomx_col_sums, **lx),
        Method("loomx_colsum_sync", 'loomx `m.sum("row")`, synchronous', "col_sums",
               run=_loomx_col_sums, **sync),
        Method("loompy_colsum", "loompy `ds.map([np.sum], axis=1)`", "col_sums",
               run=_loompy_col_sums, **lp),
        Method("loomx_cols", "loomx `m.isel(col=cols).values`, default threads",
               "random_cols", run=_loomx_cols, normalize=_sorted_back, **lx),
        Method("loompy_cols", "loompy `ds[:, sorted_cols]`", "random_cols", run=_loompy_cols,
               **lp),
        Method("loomx_scan", 'loomx `ds.loom.scan(dim="col")`, default threads', "scan",
               run=_loomx_scan, **lx),
        Method("loomx_scan_sync", "loomx `ds.loom.scan(...)`, synchronous", "scan",
               run=_loomx_scan, **sync),
        Method("loompy_scan", 'loompy `ds.scan(axis=1, what=["layers"])`', "scan",
               run=_loompy_scan, **lp),
        Method("loomx_to_scipy", 'loomx `ds.loom.to_scipy("matrix", "csr")`, default threads',
               "csr", run=_loomx_to_scipy, **lx),
        Method("loomx_to_scipy_sync", "loomx `ds.loom.to_scipy(...)`, synchronous", "csr",
               run=_loomx_to_scipy, **sync),
        Method("loompy_sparse", "loompy `ds.sparse().tocsr()`", "csr", run=_loompy_sparse,
               **lp),
    ]  # fmt: skip
    order = {op: i for i, op in enumerate(OPS)}
    items.sort(key=lambda m: order[m.op])
    return {m.name: m for m in items}


# --------------------------------------------------------------------------- fresh processes


def _status_mb(field_name: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MB, from ``/proc/self/status``."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field_name)  # pragma: no cover - not Linux


def _reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # pragma: no cover - not Linux, or not allowed
        return False
    return True


def _cpu_snapshot() -> tuple[float, dict[int, float]]:
    """CPU seconds of this process plus reaped children, and of each live descendant."""
    import psutil

    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    live: dict[int, float] = {}
    for p in psutil.Process().children(recursive=True):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        live[p.pid] = t.user + t.system
    return total, live


def _cpu_seconds(before: tuple[float, dict[int, float]]) -> float:
    """CPU seconds used by this process and its descendants since ``before``.

    Children reaped in between are counted by ``RUSAGE_CHILDREN``; live descendants by
    their ``cpu_times`` (the part used after ``before``).
    """
    total, live = _cpu_snapshot()
    used = total - before[0]
    for pid, seconds in live.items():
        used += seconds - before[1].get(pid, 0.0)
    return used


def pin_to_cores(k: int) -> list[int]:
    """Restrict this process (and the processes it starts) to its first ``k`` allowed cores."""
    cpus = sorted(os.sched_getaffinity(0))[:k]
    os.sched_setaffinity(0, cpus)
    return cpus


def _child(name: str, path: str, out: str) -> None:
    method = methods()[name]
    if method.cores is not None:
        pin_to_cores(method.cores)
    ctx = method.setup(path)
    try:
        _reset_peak_rss()
        before = _status_mb("VmRSS")
        print("READY", flush=True)
        sys.stdin.readline()
        start = time.perf_counter()
        method.run(ctx)
        first = time.perf_counter() - start
        cpu_before = _cpu_snapshot()
        start = time.perf_counter()
        result = method.run(ctx)
        wall = time.perf_counter() - start
        cpu = _cpu_seconds(cpu_before)
        after = _status_mb("VmHWM")
        report = {
            "wall_s": wall,
            "first_s": first,
            "cpu_s": cpu,
            "self_rss_before_mb": before,
            "self_peak_mb": after,
        }
        print("RESULT " + json.dumps(report), flush=True)
        np.savez(out, **digest(method.op, method.normalize(result, ctx)))
    finally:
        method.teardown(ctx)


def _tree_rss_mb(proc: Any) -> float:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


@dataclass
class Measurement:
    """Two timed runs of one method in a fresh process: ``first_s`` and ``wall_s``."""

    name: str
    path: str
    wall_s: float
    first_s: float
    cpu_s: float
    peak_rss_mb: float
    peak_increase_mb: float
    loadavg_1min: float
    digest: dict[str, np.ndarray]

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The result's shape where its digest records one (``open``, ``random_cols``, ``csr``)."""
        shape = self.digest.get("shape")
        return None if shape is None else tuple(int(s) for s in shape)


def measure_in_subprocess(name: str, path: str | os.PathLike, timeout: float = 900) -> Measurement:
    """Run method ``name`` twice on ``path`` in a fresh process; time it and sample memory.

    ``first_s`` is the first run (one-time costs of a fresh process included), ``wall_s`` the
    second and ``cpu_s`` the CPU seconds of the second run over all processes (user +
    system).  ``peak_rss_mb`` is the largest summed RSS of the process tree while it ran
    (sampled every few ms, and never below the child's own exact peak, ``VmHWM``);
    ``peak_increase_mb`` is the larger of the sampled tree's rise above its RSS just before
    the first run and the child's own exact rise (``VmHWM`` reset before the first run).
    ``digest`` is the :func:`digest` of the second run's result.
    """
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "digest.npz")
        cmd = [sys.executable, str(Path(__file__).resolve()), name, str(path), out]
        child = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        proc = psutil.Process(child.pid)
        line = ""
        while not line.startswith("READY"):
            line = child.stdout.readline()
            if not line:
                _, err = child.communicate(timeout=timeout)
                raise RuntimeError(f"{name}: child failed before READY:\n{err}")
        baseline = _tree_rss_mb(proc)
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss_mb(proc))
                time.sleep(SAMPLE_INTERVAL_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load = os.getloadavg()[0]
        child.stdin.write("GO\n")
        child.stdin.flush()
        report = None
        for line in child.stdout:
            if line.startswith("RESULT "):
                report = json.loads(line[len("RESULT ") :])
                break
        done.set()
        sampler.join()
        _, err = child.communicate(timeout=timeout)
        if child.returncode != 0 or report is None:
            raise RuntimeError(f"{name}: child exited with {child.returncode}:\n{err}")
        with np.load(out) as npz:
            result_digest = {k: npz[k] for k in npz.files}
        self_increase = report["self_peak_mb"] - report["self_rss_before_mb"]
        peak_rss = max(peak[0], report["self_peak_mb"])
    return Measurement(
        name=name,
        path=str(path),
        wall_s=report["wall_s"],
        first_s=report["first_s"],
        cpu_s=report["cpu_s"],
        peak_rss_mb=peak_rss,
        peak_increase_mb=max(peak[0] - baseline, self_increase),
        loadavg_1min=load,
        digest=result_digest,
    )


# --------------------------------------------------------------------------- machine facts


def _git(args: list[str]) -> str:
    """Output of a read-only git command in this repository ('' without git)."""
    try:
        return subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:  # pragma: no cover - no git
        return ""


def uptime() -> str:
    """Output of ``uptime`` (or the load averages where it is missing)."""
    try:
        out = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    except OSError:  # pragma: no cover - no uptime
        out = ""
    return out.strip() or "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def snapshot_loomx(dest: str | os.PathLike) -> str:
    """Copy the ``loomx`` package source into ``dest`` and import it from there from now on.

    ``dest`` goes first on ``sys.path`` and on ``PYTHONPATH``, so this process and every
    process it starts (measuring children, their pools and cluster workers) import the copy:
    a run measures one version of the code even while the working tree changes.  Call it
    before ``loomx`` is imported.  Returns the copy's folder.
    """
    import importlib.util

    if "loomx" in sys.modules:
        raise RuntimeError("snapshot_loomx must run before loomx is imported")
    spec = importlib.util.find_spec("loomx")
    if spec is None or spec.origin is None:
        raise RuntimeError("loomx is not installed")
    target = Path(dest) / "loomx"
    shutil.copytree(Path(spec.origin).parent, target, ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(dest))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(dest), os.environ.get("PYTHONPATH")) if p
    )
    return str(target)


def loomx_source_dir() -> Path:
    """Folder of the ``loomx`` package that ``import loomx`` would load (without importing it)."""
    import importlib.util

    if "loomx" in sys.modules:
        return Path(sys.modules["loomx"].__file__).parent
    spec = importlib.util.find_spec("loomx")
    if spec is None or spec.origin is None:
        raise RuntimeError("loomx is not installed")
    return Path(spec.origin).parent


def loomx_sources(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Short SHA-256 of every ``.py`` file under ``root`` (default: loomx's folder), by path."""
    root = Path(root) if root is not None else loomx_source_dir()
    return {
        str(source.relative_to(root)): hashlib.sha256(source.read_bytes()).hexdigest()[:12]
        for source in sorted(root.rglob("*.py"))
    }


def loomx_fingerprint(root: str | os.PathLike | None = None) -> str:
    """Short hash of the loomx source under ``root`` (default: loomx's folder)."""
    return hashlib.sha256(json.dumps(loomx_sources(root)).encode()).hexdigest()[:12]


def machine_facts() -> dict[str, str]:
    """``nproc``, CPU model, memory, OS and library versions of this machine."""
    import dask
    import distributed
    import loompy
    import psutil
    import scipy
    import xarray

    import loomx
    from loomx._chunks import DEFAULT_INFLATER

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover - not Linux
        model = platform.processor() or "unknown"
    rev = _git(["rev-parse", "--short", "HEAD"])
    if rev and _git(["status", "--porcelain", "--", "loomx"]):
        rev += " + uncommitted changes in loomx/"
    return {
        "nproc": str(ncores()),
        "cpu": model,
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": (
            f"loomx {loomx.__version__} (git {rev or '?'}, inflater {DEFAULT_INFLATER}), "
            f"h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version}), numpy "
            f"{np.__version__}, scipy {scipy.__version__}, dask {dask.__version__}, "
            f"distributed {distributed.__version__}, xarray {xarray.__version__}, "
            f"loompy {loompy.__version__}"
        ),
    }


if __name__ == "__main__":
    _child(*sys.argv[1:4])

"""The measured methods of the read operations: loomx, loompy, h5py and the chunk-index ceiling
(and, from ``peer_methods.py``, AnnData's h5ad and zarr).

loomx methods open the file with ``loomx.open_loom`` in their setup and compute with dask's
default scheduler (threads), ``scheduler="synchronous"``, ``"processes"`` or a
``LocalCluster`` started beforehand; loompy methods ``loompy.connect`` the file.  The
ceilings compute the per-row sums over a spawned ``multiprocessing`` pool: row bands read
with plain h5py, or through ``loomx._hdf5.chunks.ChunkIndex`` (positional reads and inflate, no
h5py, no HDF5 lock).  :func:`read_methods` lists them all (see ``operations.py`` for the
operations and the :class:`~benchmarks.harness.operations.Method` shape).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from .operations import Method, ncores, scaling_cores
from .peer_methods import peer_methods
from .reference import BAND_ROWS, random_columns

__all__ = ["read_methods", "start_cluster"]


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


def start_cluster(workers: int | None = None) -> tuple[Any, Any]:
    """A ``LocalCluster`` of ``workers`` processes x 1 thread (default one per core) and a
    ``Client`` of it that is not the default one (pass it as ``scheduler``)."""
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers or ncores(),
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=40,
    )
    return cluster, Client(cluster, set_as_default=False)


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
            ctx.cluster, ctx.client = start_cluster(workers)
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
        mean, std = dask.compute(*ctx.ds.loom.map_vectors([np.mean, np.std], dim="col"))
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
    from loomx._hdf5.chunkio import FileReader
    from loomx._hdf5.chunks import ChunkIndex

    with h5py.File(path, "r") as f:
        index = ChunkIndex.from_dataset(f["matrix"])
    if index is None:
        raise RuntimeError(f"{path}: /matrix cannot be read through the chunk index")
    _CEILING.update(index=index, read_at=FileReader.of(path))


def ceiling_band_row_sums(task: tuple[str, int, int]) -> np.ndarray:
    """Row sums of rows ``start:stop`` read with ``ChunkIndex.read`` (a pool task).

    Every chunk of the band is read with ``os.pread`` and inflated (libdeflate when
    installed): no h5py, no HDF5 lock.  The sum is float32, as loomx's full pass computes it.
    """
    _path, start, stop = task
    block = _CEILING["index"].read(_CEILING["read_at"], (slice(start, stop),))
    return block.sum(axis=1)


def ceiling_py_band_row_sums(task: tuple[str, int, int]) -> np.ndarray:
    """As :func:`ceiling_band_row_sums`, through the per-chunk Python path (one libdeflate
    call and one copy per chunk, holding the GIL): the ceiling before the batch kernel."""
    _path, start, stop = task
    index = _CEILING["index"]
    block = index.read(_CEILING["read_at"], (slice(start, stop),), inflater="libdeflate")
    return block.sum(axis=1)


def ceiling_cols(task: tuple[str, int, int, int, int, np.ndarray]) -> np.ndarray:
    """Columns ``start + picks`` of rows ``row0:row1`` of ``/matrix``: only the HDF5 chunks
    of chunk columns ``start:stop`` that hold them are read (a pool task of the
    random-columns ceiling)."""
    _path, row0, row1, start, stop, picks = task
    index = _CEILING["index"]
    return index.read(_CEILING["read_at"], (slice(row0, row1), slice(start, stop)))[:, picks]


def column_runs(
    path: str, cols: np.ndarray, band_rows: int = 4096
) -> list[tuple[str, int, int, int, int, np.ndarray]]:
    """:func:`ceiling_cols` tasks: bands of ``band_rows`` rows of the runs of adjacent HDF5
    chunk columns that hold ``cols`` (at most 16 chunk columns each), in band-major,
    increasing column order."""
    with h5py.File(path, "r") as f:
        width, (n_rows, n_cols) = f["matrix"].chunks[1], f["matrix"].shape
    wanted = np.sort(cols)
    cells = np.unique(wanted // width)
    breaks = np.flatnonzero((np.diff(cells) != 1) | (np.arange(1, cells.size) % 16 == 0)) + 1
    tasks = []
    for row0 in range(0, n_rows, band_rows):
        row1 = min(n_rows, row0 + band_rows)
        for run in np.split(cells, breaks):
            start, stop = int(run[0]) * width, min(n_cols, (int(run[-1]) + 1) * width)
            inside = wanted[(wanted >= start) & (wanted < stop)]
            tasks.append((path, row0, row1, start, stop, inside - start))
    return tasks


def _assemble_columns(parts: list[np.ndarray], tasks: list[Any]) -> np.ndarray:
    """The :func:`ceiling_cols` results of :func:`column_runs` tasks as one array."""
    n_rows = max(task[2] for task in tasks)
    n_cols = sum(task[5].size for task in tasks if task[1] == 0)
    out = np.empty((n_rows, n_cols), parts[0].dtype)
    col = 0
    for part, (_path, row0, row1, *_) in zip(parts, tasks, strict=True):
        col = 0 if col == n_cols else col  # the next band starts at the first column
        out[row0:row1, col : col + part.shape[1]] = part
        col += part.shape[1]
    return out


def _worker_pid(_: int) -> int:
    time.sleep(0.02)
    return os.getpid()


@dataclass
class _PoolContext:
    pool: Any
    tasks: list[Any]
    func: Callable[[Any], np.ndarray]
    assemble: Callable[[list[np.ndarray], list[Any]], np.ndarray] = lambda parts, _: np.concatenate(
        parts
    )


def _pool_setup(
    n_procs: int | None, ceiling: bool, func: Callable[[Any], np.ndarray] | None = None
) -> Callable[[str], _PoolContext]:
    """A spawned pool of ``n_procs`` processes (default one per core), every worker started.

    With ``ceiling`` each worker builds the chunk index once (initializer) and tasks read
    through it (``func``: default :func:`ceiling_band_row_sums`, the batch kernel);
    otherwise tasks read with plain h5py.  :func:`ceiling_cols` gets the random columns'
    :func:`column_runs` as tasks, other functions row bands.
    """

    def setup(path: str) -> _PoolContext:
        n = n_procs or ncores()
        with h5py.File(path, "r") as f:
            n_rows, n_cols = f["matrix"].shape
        init = {"initializer": _ceiling_init, "initargs": (path,)} if ceiling else {}
        pool = multiprocessing.get_context("spawn").Pool(n, **init)
        for _ in range(50):
            if len(set(pool.map(_worker_pid, range(4 * n), chunksize=1))) == n:
                break
        task = func or (ceiling_band_row_sums if ceiling else band_row_sums)
        if task is ceiling_cols:
            tasks = column_runs(path, random_columns(n_cols))
            return _PoolContext(pool, tasks, task, _assemble_columns)
        return _PoolContext(pool, bands(path, n_rows), task)

    return setup


def _run_pool(ctx: _PoolContext) -> np.ndarray:
    return ctx.assemble(ctx.pool.map(ctx.func, ctx.tasks, chunksize=1), ctx.tasks)


def _teardown_pool(ctx: _PoolContext) -> None:
    ctx.pool.close()
    ctx.pool.join()


def _shape_of_dataset(ds: Any, ctx: Any) -> tuple[int, ...]:
    return tuple(ds["matrix"].shape)


def read_methods() -> list[Method]:
    """Every method of a read operation (those of the scaling table included)."""
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
        Method("loomx_map_meanstd", 'loomx `ds.loom.map_vectors([np.mean, np.std], dim="col")`, '
               "default threads", "row_mean_std", run=_loomx_map_mean_std, **lx),
        Method("loomx_map_meanstd_sync", "loomx `ds.loom.map_vectors(...)`, synchronous",
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
        Method("ceiling_py_1", "chunk index, per-chunk Python path, 1 process (1 core)",
               "row_sums", _pool_setup(1, True, ceiling_py_band_row_sums), _run_pool,
               _teardown_pool, cores=1),
        Method("ceiling_py_n", f"chunk index, per-chunk Python path, {n} processes",
               "row_sums", _pool_setup(n, True, ceiling_py_band_row_sums), _run_pool,
               _teardown_pool),
        Method("ceiling_cols_n", f"ceiling: only the chunks holding the columns, {n} "
               "processes", "random_cols", _pool_setup(n, True, ceiling_cols), _run_pool,
               _teardown_pool),
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
    return items + peer_methods()

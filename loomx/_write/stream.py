"""Stream dask-computed layer blocks into open HDF5 datasets, memory bounded.

Blocks are computed on whatever scheduler the arrays use (threads, processes, a
``dask.distributed`` client) and handed, in the one process that holds the output open,
to a :class:`Sink` that writes them: plain values through h5py's filters, or chunks that
were already compressed in the tasks (:mod:`loomx._write.packing`) as they are.  Into new
files and spools, compressed chunks go to one writer thread through a short queue
(:class:`Writer`), so that HDF5's serial chunk writes overlap the compression of the next
blocks on every core.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import dask
import dask.array as da
import dask.base
import dask.local
import dask.multiprocessing
import dask.threaded
import h5py
import numpy as np

from loomx._hdf5 import codecs as _codecs
from loomx._write import packing as _packing
from loomx._write.storage import storage_of_dataset

__all__ = [
    "Sink",
    "Writer",
    "aligned",
    "current_client",
    "lost_scheduler",
    "queue_columns",
    "run_queue",
    "scheduler",
    "scheduler_kind",
]


class Sink:
    """Target for ``dask.array.store``: writes blocks into an open HDF5 dataset under a lock.

    A block is either values (written through h5py and its filters) or a 1x1 object array
    holding a :class:`~loomx._hdf5.codecs.PackedBlock` (finished chunks, written as they are;
    its origin says where, so ``key`` is not used).  ``col0`` shifts value blocks right
    (a block of new columns appended at ``col0``).  With ``reference`` (the dataset on
    disk), it also tracks whether every block equals it.  The sink's chunks must never
    have been written (a new dataset or new columns): all-zero chunks are then left
    unallocated where the fill value is zero.
    """

    def __init__(
        self, dset: h5py.Dataset, lock: threading.Lock, reference: Any = None, col0: int = 0
    ) -> None:
        self.dset = dset
        self.lock = lock
        self.reference = reference
        self.equal = reference is not None
        self.col0 = col0
        self.writer: Writer | None = None

    def __setitem__(self, key: tuple[slice, ...], value: Any) -> None:
        if isinstance(value, np.ndarray) and value.dtype.kind == "O":
            for packed in value.flat:
                if self.writer is not None:
                    self.writer.put(self, packed)
                else:
                    self.write_packed(packed)
            return
        if hasattr(value, "todense"):
            value = value.todense()
        elif hasattr(value, "toarray"):
            value = value.toarray()
        value = np.asarray(value)
        if self.col0:
            rows, cols = key
            start, stop, _ = cols.indices(self.dset.shape[1] - self.col0)
            key = (rows, slice(start + self.col0, stop + self.col0))
        with self.lock:
            self.dset[key] = value
            if self.equal:
                self._compare(key, value)

    def write_packed(self, packed: _codecs.PackedBlock) -> None:
        """Write one packed block's chunks (and compare it with the reference)."""
        with self.lock:
            _codecs.write_packed(self.dset, packed)
            if self.equal:
                (r0, c0), raw = packed.origin, packed.raw
                region = (slice(r0, r0 + raw.shape[0]), slice(c0, c0 + raw.shape[1]))
                self._compare(region, raw)

    def _compare(self, key: tuple[slice, ...], value: np.ndarray) -> None:
        disk = np.asarray(self.reference[key])
        value = np.ascontiguousarray(value, dtype=disk.dtype)
        self.equal = disk.shape == value.shape and disk.tobytes() == value.tobytes()  # bitwise


class Writer:
    """One thread writing packed blocks into their sinks, fed through a queue of at most
    ``depth`` blocks: the threads (or the loop) that compute blocks hand them over and go
    on compressing while HDF5 writes chunks one at a time.

    The first error of a write is raised to the next :meth:`put` and by :meth:`close`;
    after it, queued blocks are dropped (the write fails as a whole).

    Examples
    --------
    >>> writer = Writer()  # doctest: +SKIP
    >>> writer.put(sink, packed)  # doctest: +SKIP
    >>> writer.close()  # every block written, or the first error raised  # doctest: +SKIP
    """

    def __init__(self, depth: int = 2) -> None:
        self.queue: queue.Queue[tuple[Sink, Any] | None] = queue.Queue(max(1, depth))
        self.error: BaseException | None = None
        self.written = 0
        self.thread = threading.Thread(target=self._run, name="loomx-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                sink, packed = item
                try:
                    sink.write_packed(packed)
                    self.written += 1
                except BaseException as err:  # raised again in the caller's thread
                    self.error = err

    def put(self, sink: Sink, packed: Any) -> None:
        """Queue ``packed`` for ``sink``, waiting while the queue is full."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put((sink, packed), timeout=0.05)
                return
            except queue.Full:
                continue

    def close(self, raise_error: bool = True) -> None:
        """Wait until every queued block is written; raise the first write error."""
        self.queue.put(None)
        self.thread.join()
        if raise_error and self.error is not None:
            raise self.error


def aligned(arr: da.Array, chunks: tuple[int, int], col0: int = 0) -> da.Array:
    """Rechunk so that block edges fall on HDF5 chunk edges (no partial-chunk rewrites),
    for ``arr`` written at column ``col0``."""
    new = []
    for sizes, step, total, offset in zip(arr.chunks, chunks, arr.shape, (0, col0), strict=True):
        edges = np.cumsum(sizes)
        if np.all(((edges + offset) % step == 0) | (edges == total)):
            new.append(sizes)
            continue
        cut = np.unique(np.append((edges + offset) // step * step - offset, total))
        cut = cut[cut > 0]
        new.append(tuple(np.diff(np.concatenate([[0], cut])).tolist()))
    return arr if tuple(new) == arr.chunks else arr.rechunk(tuple(new), method="tasks")


def _block_regions(arr: da.Array) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...]]]:
    offsets = [np.concatenate([[0], np.cumsum(c)]) for c in arr.chunks]
    for idx in itertools.product(*(range(n) for n in arr.numblocks)):
        yield idx, tuple(slice(int(o[i]), int(o[i + 1])) for o, i in zip(offsets, idx, strict=True))


def scheduler(arrays: list[da.Array] | None = None) -> Callable[..., Any] | None:
    """The scheduler ``compute`` would use for ``arrays`` (None: no collections given and
    nothing configured).

    While ``distributed`` is not imported no client can exist, and a configured name or
    function (or dask's threads) is found without importing it, which dask would do.
    """
    setting = dask.config.get("scheduler", None)
    if "distributed" not in sys.modules:
        if setting is None:
            return dask.threaded.get if arrays else None
        if callable(setting):
            return setting
        if setting in dask.base.named_schedulers:
            return dask.base.named_schedulers[setting]
    return dask.base.get_scheduler(collections=arrays)


def current_client() -> Any:
    """The ``dask.distributed`` client computations go to now, or None (its workers may
    hold read handles that a writer must release)."""
    get = scheduler()
    return get.__self__ if get is not None and scheduler_kind(get) == "distributed" else None


def lost_scheduler(client: Any, err: BaseException) -> ConnectionError | None:
    """The error to raise when ``err`` (from waiting on ``client``) means the client lost
    its scheduler (killed, network gone), else None: distributed then cancels every
    future ("scheduler-connection-lost") or fails a connection."""
    from distributed.comm.core import CommClosedError

    connected = getattr(client, "status", "running") in ("running", "newly-created")
    cancelled = isinstance(err, concurrent.futures.CancelledError) and "connection-lost" in str(err)
    if connected and not cancelled and not isinstance(err, CommClosedError):
        return None
    address = getattr(getattr(client, "scheduler", None), "address", None) or "?"
    return ConnectionError(
        f"lost the connection to the dask scheduler at {address} ({type(err).__name__}: "
        f"{err}); expected a running scheduler: start it again and retry"
    )


def scheduler_kind(get: Callable[..., Any]) -> str:
    owner = getattr(get, "__self__", None)
    if owner is not None and type(owner).__name__ == "Client":
        return "distributed"
    if get in (dask.threaded.get, dask.local.get_sync):
        return "local"
    return "other"


def stream(
    arrays: list[da.Array],
    sinks: list[Sink],
    get: Callable[..., Any],
    client: Any = None,
    overlap: bool = False,
) -> None:
    """Compute every block and hand it to its sink in this process, memory bounded.

    With ``overlap``, packed blocks are written by one :class:`Writer` thread while the next
    ones compute: for files no reader sees until they are complete (new files, spools).
    Writes in place stay in the order the blocks arrive (the rollback journal and the crash
    tests follow the writes step by step)."""
    if not overlap:
        _compute_into(arrays, sinks, get, client)
        return
    writer = Writer()
    for sink in sinks:
        sink.writer = writer
    try:
        _compute_into(arrays, sinks, get, client)
    except BaseException:
        writer.close(raise_error=False)
        raise
    else:
        writer.close()
    finally:
        for sink in sinks:
            sink.writer = None


def _compute_into(
    arrays: list[da.Array], sinks: list[Sink], get: Callable[..., Any], client: Any = None
) -> None:
    kind = scheduler_kind(get)
    if kind == "local":
        da.store(arrays, sinks, lock=False, scheduler=get)
        return
    jobs = ((i, idx, reg) for i, arr in enumerate(arrays) for idx, reg in _block_regions(arr))
    if kind == "distributed":
        from distributed import as_completed

        client = client or get.__self__
        window = 2 * max(1, sum(client.nthreads().values()))
        running: dict[str, tuple[int, tuple[slice, ...]]] = {}
        queue = as_completed(loop=client.loop)  # the client given, not the default one

        def submit() -> None:
            for i, idx, region in itertools.islice(jobs, 1):
                future = client.compute(arrays[i].blocks[idx])
                running[future.key] = (i, region)
                queue.add(future)

        try:
            for _ in range(window):
                submit()
            for future in queue:
                i, region = running.pop(future.key)
                sinks[i][region] = future.result()
                future.release()
                submit()
        except Exception as err:
            lost = lost_scheduler(client, err)
            if lost is not None:
                raise lost from err
            raise
        return
    workers = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    extra: dict[str, Any] = {}
    pool = None
    if get is dask.multiprocessing.get and dask.config.get("pool", None) is None:
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=dask.multiprocessing.get_context()
        )
        extra["pool"] = pool
    try:
        while batch := list(itertools.islice(jobs, 2 * workers)):
            blocks = dask.compute(
                *(arrays[i].blocks[idx] for i, idx, _ in batch), scheduler=get, **extra
            )
            for (i, _, region), block in zip(batch, blocks, strict=True):
                sinks[i][region] = block
    finally:
        if pool is not None:
            pool.shutdown()


def queue_columns(
    jobs: list,
    dset: h5py.Dataset,
    arr: da.Array,
    col0: int,
    lock: threading.Lock,
    rows: np.ndarray | None = None,
) -> None:
    """Queue ``arr[rows]`` for columns ``col0:`` of ``dset``: the whole chunks in between
    are compressed in the dask tasks (in parallel, rows reordered while packing); partial
    chunks at either end, which another input shares, go through h5py's filters.

    With ``rows``, ``arr`` must be in full-height blocks."""
    chunks = dset.chunks or dset.shape
    level = None if dset.scaleoffset else storage_of_dataset(dset).deflate_level
    k, width = arr.shape[1], chunks[1]
    head = min(k, -col0 % width)
    tail = k if col0 + k == dset.shape[1] else max(head, (col0 + k) // width * width - col0)
    for a, b, pack in ((0, head, False), (head, tail, level is not None), (tail, k, False)):
        if b > a:
            piece = aligned(arr[:, a:b], chunks, col0 + a)
            if pack:
                piece = _packing.packed(piece, dset, level, origin=(0, col0 + a), rows=rows)
            elif rows is not None:
                piece = piece[rows]
            jobs.append((piece, Sink(dset, lock, col0=col0 + a)))


def run_queue(jobs: list[tuple[da.Array, Sink]], client: Any = None, overlap: bool = False) -> None:
    """Compute every queued ``(array, sink)`` and write it, on the current scheduler (or
    through ``client``, a ``dask.distributed`` client); ``overlap``: see :func:`stream`."""
    if jobs:
        arrays = [arr for arr, _ in jobs]
        get = scheduler(arrays) or dask.threaded.get
        stream(arrays, [sink for _, sink in jobs], get, client, overlap)

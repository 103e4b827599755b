"""Minibatches of cells for training: :func:`batches` (``ds.loom.batches``).

Each batch is a dict of numpy arrays: ``"X"`` (cells x genes, the layer transposed),
``"index"`` (the cells' positions along the column dim) and one entry per chosen column
attribute.  Two orders:

- ``mode="block"`` (block-shuffled, the approach of the h5ad and zarr loaders): the cells
  cut into blocks aligned with the layer's HDF5 chunks, the blocks taken in a random order,
  read a buffer at a time (``buffer_size`` cells, whole blocks) and shuffled within the
  buffer.  Reads are whole chunks, so it runs at the speed of a full pass.
- ``mode="uniform"``: an exact uniform permutation of all cells, cut into batches; a buffer
  of consecutive batches is read at once, each HDF5 chunk its picks fall in read once, and
  the rows handed out in the permutation's order.

Both are deterministic for a given ``seed`` and epoch (``epoch=`` or :meth:`set_epoch`), and
every cell is handed out exactly once per epoch, also when the epoch is split into shards:
``shard=(i, n)`` or :meth:`BatchLoader.split` for dask workers, and automatically among the
workers of a PyTorch ``DataLoader`` (``torch.utils.data.get_worker_info()``, looked up only
when torch is already imported).  Reads run ahead on a few threads, ``prefetch`` buffers at
most: the rows held in buffers never exceed :attr:`BatchLoader.max_rows` (counted in
:attr:`BatchLoader.rows_held_peak`).  torch is optional: :meth:`BatchLoader.torch_dataset`
wraps a loader as a ``torch.utils.data.IterableDataset``.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
from xarray.core.indexing import OuterIndexer

from loomx._format import names as conv
from loomx._hdf5 import kernels as _kernels
from loomx._read.layer import LayerArray
from loomx.errors import LoomNameError

__all__ = ["MODES", "BatchLoader", "batches"]

MODES = ("block", "uniform")
"""The orders a :class:`BatchLoader` hands cells out in."""

_RESERVED = ("X", "index")


@dataclass(frozen=True)
class _Fetch:
    """One buffer's read: the sorted cells to read, then which pool rows form each batch
    (positions into the carried rows followed by this read's rows) and which are carried
    over to the next buffer."""

    cells: np.ndarray
    take: list[np.ndarray]
    keep: np.ndarray


@dataclass
class _Gauge:
    """Rows held in buffers (reads in flight or waiting, and the shuffle pool); its peak."""

    now: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, rows: int) -> None:
        with self.lock:
            self.now += rows
            self.peak = max(self.peak, self.now)


class BatchLoader:
    """Minibatches of the cells of one layer; made by :func:`batches`.

    Iterating gives one epoch (dicts with ``"X"``, ``"index"`` and the chosen attributes);
    iterate again for the same epoch, or call :meth:`set_epoch` first for the next one.
    A loader pickles (to dask workers, to ``DataLoader`` worker processes) as the recipe of
    its Dataset and its settings.

    Examples
    --------
    >>> loader = ds.loom.batches(256, attrs=["ClusterID"], seed=0)  # doctest: +SKIP
    >>> for epoch in range(3):  # doctest: +SKIP
    ...     loader.set_epoch(epoch)
    ...     for batch in loader:
    ...         train_step(batch["X"], batch["ClusterID"])
    """

    def __init__(
        self,
        ds: xr.Dataset,
        batch_size: int = 256,
        *,
        layer: str = "matrix",
        attrs: Sequence[str] = (),
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        mode: str = "block",
        block_size: int | None = None,
        buffer_size: int | None = None,
        prefetch: int = 2,
        threads: int = 2,
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
    ):
        row_dim, col_dim = conv.dataset_dims(ds)
        if layer not in ds.data_vars or ds[layer].dims != (row_dim, col_dim):
            raise LoomNameError(f"no layer {layer!r} on ({row_dim!r}, {col_dim!r})")
        for name in attrs:
            if name in _RESERVED:
                raise LoomNameError(f"attribute name {name!r} clashes with a batch key")
            if name not in ds.variables or ds[name].dims[:1] != (col_dim,):
                raise LoomNameError(f"no column attribute {name!r} on dim {col_dim!r}")
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {MODES}")
        if batch_size < 1 or prefetch < 1 or threads < 1:
            raise ValueError(
                f"batch_size {batch_size}, prefetch {prefetch}, threads {threads}: "
                "expected each >= 1"
            )
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard {shard}: expected (i, n) with 0 <= i < n")
        chunks = ds[layer].encoding.get("chunksizes")
        block = int(block_size or (chunks[1] if chunks else 64))
        if block < 1:
            raise ValueError(f"block_size {block}: expected >= 1")
        buffer = int(buffer_size or max(8 * batch_size, 16 * block))
        buffer = max(buffer, batch_size, block)
        self._ds = ds
        self._layer = layer
        self._attrs = tuple(attrs)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.mode = mode
        self.block_size = block
        self.buffer_size = buffer - buffer % block if mode == "block" else buffer
        self.prefetch = int(prefetch)
        self.threads = int(threads)
        self.drop_last = bool(drop_last)
        self.shard = (int(index), int(count))
        self.n_cells = int(ds.sizes[col_dim])
        self._gauge = _Gauge()

    @property
    def max_rows(self) -> int:
        """The most rows the buffers hold at once, by construction: ``prefetch`` buffers
        (each at most ``buffer_size`` cells) read, in flight or waiting, the one being
        handed out among them, plus fewer than ``batch_size`` rows carried over."""
        return self.prefetch * self.buffer_size + self.batch_size - 1

    @property
    def rows_held_peak(self) -> int:
        """The most rows the buffers held at once since this loader was made (or pickled)."""
        return self._gauge.peak

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_gauge"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._gauge = _Gauge()

    def set_epoch(self, epoch: int) -> None:
        """Hand out the order of ``epoch`` from the next iteration on.

        Examples
        --------
        >>> loader.set_epoch(1)  # doctest: +SKIP
        """
        self.epoch = int(epoch)

    def split(self, n: int) -> list[BatchLoader]:
        """This loader's shard cut into ``n`` loaders that together hand out its cells
        once each per epoch: one per dask worker (or process).

        Examples
        --------
        >>> futures = client.map(train_on, ds.loom.batches(256).split(4))  # doctest: +SKIP
        """
        if n < 1:
            raise ValueError(f"split({n}): expected n >= 1")
        index, count = self.shard
        out = []
        for i in range(n):
            part = self.__class__.__new__(self.__class__)
            part.__setstate__(self.__getstate__())
            part.shard = (index + i * count, count * n)
            out.append(part)
        return out

    def _active_shard(self) -> tuple[int, int]:
        """:attr:`shard`, subdivided among the workers of a PyTorch ``DataLoader``."""
        index, count = self.shard
        torch_data = sys.modules.get("torch.utils.data")  # in a DataLoader worker, imported
        info = None if torch_data is None else torch_data.get_worker_info()
        if info is None:
            return index, count
        return index + int(info.id) * count, count * int(info.num_workers)

    def plan(self, shard: tuple[int, int] | None = None) -> list[np.ndarray]:
        """The cells of every batch of this epoch, for ``shard`` (default the loader's own,
        split among ``DataLoader`` workers when run in one), without reading anything.

        Examples
        --------
        >>> first = ds.loom.batches(256, seed=0).plan()[0]  # doctest: +SKIP
        """
        out = []
        carried = np.zeros(0, np.int64)
        for fetch in self._fetches(*(shard or self._active_shard())):
            pool = np.concatenate([carried, fetch.cells])
            out.extend(pool[t] for t in fetch.take)
            carried = pool[fetch.keep]
        return out

    def __len__(self) -> int:
        return len(self.plan())

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        fetches = self._fetches(*self._active_shard())
        values = {name: np.asarray(self._ds[name].values) for name in self._attrs}
        data = self._ds[self._layer].data
        gauge = self._gauge
        pending: deque[tuple[_Fetch, np.ndarray, Future[np.ndarray]]] = deque()
        biggest = max((len(f.cells) for f in fetches), default=0)
        spare: list[np.ndarray] = []  # buffers whose rows are handed out: read into again
        pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="loomx-batches")
        todo = iter(fetches)
        carried_ids = np.zeros(0, np.int64)
        carried: np.ndarray | None = None
        try:
            while True:
                while len(pending) < self.prefetch:
                    fetch = next(todo, None)
                    if fetch is None:
                        break
                    gauge.add(len(fetch.cells))
                    base = spare.pop() if spare else np.empty((biggest, data.shape[0]), data.dtype)
                    out = base[: len(fetch.cells)]
                    pending.append((fetch, base, pool.submit(_read_cells, data, fetch.cells, out)))
                if not pending:
                    break
                fetch, base, future = pending.popleft()
                rows = future.result()
                ids = np.concatenate([carried_ids, fetch.cells])
                for take in fetch.take:
                    picked = ids[take]
                    batch = {"X": _gather(carried, rows, take), "index": picked}
                    batch.update((name, v[picked]) for name, v in values.items())
                    yield batch
                carried_ids, carried = ids[fetch.keep], _gather(carried, rows, fetch.keep)
                spare.append(base)  # every row taken from it is a copy
                gauge.add(len(carried_ids) - len(ids))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            gauge.add(-gauge.now)

    def _rng(self, *extra: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *extra])

    def _fetches(self, index: int, count: int) -> list[_Fetch]:
        if self.mode == "block":
            return self._block_fetches(index, count)
        return self._uniform_fetches(index, count)

    def _block_fetches(self, index: int, count: int) -> list[_Fetch]:
        """Blocks of ``block_size`` cells in a random order (the same for every shard),
        dealt to the shards in turn, read ``buffer_size`` cells at a time, shuffled within
        the pool of the buffer and the rows carried from the last one."""
        starts = np.arange(0, self.n_cells, self.block_size, dtype=np.int64)
        order = self._rng().permutation(len(starts)) if self.shuffle else np.arange(len(starts))
        mine = order[index::count]
        per_fetch = self.buffer_size // self.block_size
        rng = self._rng(index, count)
        out = []
        carried = 0
        for f in range(0, len(mine), per_fetch):
            group = mine[f : f + per_fetch]
            ends = np.minimum(starts[group] + self.block_size, self.n_cells)
            cells = np.concatenate(
                [np.arange(a, b) for a, b in zip(starts[group], ends, strict=True)]
            )
            size = carried + len(cells)
            positions = rng.permutation(size) if self.shuffle else np.arange(size)
            full = size // self.batch_size * self.batch_size
            last = f + per_fetch >= len(mine)
            if last and not self.drop_last:
                full = size
            take = [positions[i : i + self.batch_size] for i in range(0, full, self.batch_size)]
            keep = positions[full:] if not last else np.zeros(0, np.int64)
            out.append(_Fetch(np.sort(cells), take, keep))
            carried = len(keep)
        return out

    def _uniform_fetches(self, index: int, count: int) -> list[_Fetch]:
        """An exact uniform permutation of all cells (the same for every shard), dealt to
        the shards in turn and cut into batches; the batches of one buffer are read at once,
        each cell's chunk once."""
        order = self._rng().permutation(self.n_cells) if self.shuffle else np.arange(self.n_cells)
        mine = order[index::count].astype(np.int64)
        full = len(mine) // self.batch_size * self.batch_size
        if not self.drop_last:
            full = len(mine)
        per_fetch = max(1, self.buffer_size // self.batch_size) * self.batch_size
        out = []
        for f in range(0, full, per_fetch):
            picks = mine[f : min(f + per_fetch, full)]
            cells = np.sort(picks)
            where = np.searchsorted(cells, picks)
            take = [where[i : i + self.batch_size] for i in range(0, len(picks), self.batch_size)]
            out.append(_Fetch(cells, take, np.zeros(0, np.int64)))
        return out

    def torch_dataset(self) -> Any:
        """This loader as a ``torch.utils.data.IterableDataset`` (torch must be installed):
        give it to ``DataLoader(..., batch_size=None)``; each worker hands out its own part
        of every epoch.

        Examples
        --------
        >>> from torch.utils.data import DataLoader  # doctest: +SKIP
        >>> data = loader.torch_dataset()  # doctest: +SKIP
        >>> dl = DataLoader(data, batch_size=None, num_workers=2)  # doctest: +SKIP
        """
        return _torch_class()(self)


def _gather(carried: np.ndarray | None, rows: np.ndarray, take: np.ndarray) -> np.ndarray:
    """Rows ``take`` of ``carried`` and ``rows`` stacked, without stacking them (positions
    below ``len(carried)`` are carried rows): only the rows taken are copied."""
    if carried is None or not len(carried):
        return rows[take]
    out = np.empty((len(take), rows.shape[1]), rows.dtype)
    old = take < len(carried)
    out[old] = carried[take[old]]
    out[~old] = rows[take[~old] - len(carried)]
    return out


if _kernels.available():

    @_kernels.compiled
    def _transpose_compiled(src: np.ndarray, dst: np.ndarray) -> None:  # pragma: no cover
        """``dst[j, i] = src[i, j]`` in 16 x 16 tiles, without the GIL."""
        rows, cols = src.shape
        for i0 in range(0, rows, 16):
            i1 = min(i0 + 16, rows)
            for j0 in range(0, cols, 16):
                j1 = min(j0 + 16, cols)
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        dst[j, i] = src[i, j]


def _transpose_into(src: np.ndarray, dst: np.ndarray) -> None:
    """``dst[...] = src.T`` for a genes x cells block read from the layer: in tiles that
    stay in cache (3.6 GB/s of float32 against NumPy's strided copy at 0.6 GB/s, 2-core
    machine; the loader's largest cost at 28k genes)."""
    if dst.shape != src.shape[::-1]:
        raise ValueError(f"a {src.shape} block does not fit {dst.shape} rows")
    kind = src.dtype.kind in "biuf" and src.dtype != np.float16  # numba has no float16
    if _kernels.available() and kind and src.dtype == dst.dtype and src.dtype.isnative:
        _transpose_compiled(src, dst)
    else:
        dst[...] = src.T


_RUN = 64
"""Cells per contiguous run from which a read takes whole boxes rather than picks."""


def _read_cells(data: Any, cells: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The columns ``cells`` (sorted) of a layer's array as C-ordered rows (into ``out``,
    ``len(cells)`` x genes, when given: a buffer read into again saves the page faults of
    a new one).

    A layer as loomx opened it is read through its backend array: contiguous runs of cells
    (the blocks of ``"block"`` mode) as boxes, scattered cells as picks, each HDF5 chunk
    once and without a dask graph; any other array through dask (or numpy)."""
    if out is None:
        out = np.empty((len(cells), data.shape[0]), data.dtype)
    if not len(cells):
        return out
    source = getattr(data, "_source", None)
    if type(data) is not LayerArray or source is None or source.shape != data.shape:
        block = data[:, cells]
        if hasattr(block, "compute"):
            block = block.compute(scheduler="synchronous")
        _transpose_into(np.asarray(block), out)
        return out
    runs = np.split(cells, np.flatnonzero(np.diff(cells) != 1) + 1)
    if len(runs) * _RUN > len(cells):
        _transpose_into(np.asarray(source[OuterIndexer((slice(None), cells))]), out)
        return out
    at = 0
    for run in runs:
        box = source[OuterIndexer((slice(None), slice(int(run[0]), int(run[-1]) + 1)))]
        _transpose_into(np.asarray(box), out[at : at + len(run)])
        at += len(run)
    return out


_TORCH_CLASS: list[type] = []


def _torch_class() -> type:
    """``TorchBatches``: an ``IterableDataset`` over a :class:`BatchLoader`, made once on
    first use so that importing loomx never imports torch."""
    if not _TORCH_CLASS:
        from torch.utils.data import IterableDataset

        class TorchBatches(IterableDataset):  # type: ignore[misc, type-arg]
            def __init__(self, loader: BatchLoader):
                self.loader = loader

            def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
                return iter(self.loader)

            def set_epoch(self, epoch: int) -> None:
                self.loader.set_epoch(epoch)

        TorchBatches.__module__ = __name__
        TorchBatches.__qualname__ = "TorchBatches"
        _TORCH_CLASS.append(TorchBatches)
    return _TORCH_CLASS[0]


def __getattr__(name: str) -> Any:
    if name == "TorchBatches":  # found by pickle in a process that has not made it yet
        return _torch_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def batches(ds: xr.Dataset, batch_size: int = 256, **options: Any) -> BatchLoader:
    """Minibatches of cells (columns) of ``layer``, for training.

    Parameters
    ----------
    ds
        A Loom Dataset (:func:`loomx.open_loom`).
    batch_size
        Cells per batch; the last batch of an epoch may be smaller unless ``drop_last``.
    **options
        Keyword-only, each with its default (:class:`BatchLoader` takes the same):
    layer
        The layer to read (``"matrix"``).
    attrs
        Column attributes handed out with each batch, under their names (none).
    shuffle
        False: cells in file order, batch after batch (True).
    seed, epoch
        The order is a function of ``(seed, epoch)`` (and the shard) (0, 0).
    mode
        ``"block"`` (the default): random order of chunk-aligned blocks, shuffled within a buffer;
        ``"uniform"``: an exact uniform permutation of the cells.
    block_size
        Cells per block (``"block"`` mode); default the layer's HDF5 chunk width.
    buffer_size
        Cells read at once (rounded down to whole blocks in ``"block"`` mode); default
        ``max(8 * batch_size, 16 * block_size)``.
    prefetch, threads
        Buffers read ahead at most, and the threads reading them (2, 2).
    drop_last
        Leave out the last, smaller batch of each shard's epoch (False).
    shard
        ``(i, n)``: hand out the ``i``-th of ``n`` disjoint parts of every epoch
        (``(0, 1)``).

    Returns
    -------
    BatchLoader
        Iterable of dicts: ``"X"`` (cells x genes, the layer's dtype), ``"index"`` (int64
        column positions) and each of ``attrs``.

    Raises
    ------
    LoomNameError
        No such layer or column attribute, or an attribute named ``X`` or ``index``.
    ValueError
        A size below 1, an unknown ``mode`` or a shard outside ``0 <= i < n``.

    Examples
    --------
    >>> ds = loomx.open_loom("pbmc.loom")  # doctest: +SKIP
    >>> for batch in ds.loom.batches(128, attrs=["ClusterID"], seed=1):  # doctest: +SKIP
    ...     x, y = batch["X"], batch["ClusterID"]  # (128, genes), (128,)
    """
    return BatchLoader(ds, batch_size, **options)

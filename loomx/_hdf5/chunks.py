"""HDF5 chunk index and the fast read path: the index of a dataset's chunks, the per-chunk
Python decode path, and :func:`read_through_handle`, which reads a dataset of an open
handle through them.

HDF5 runs every call, decompression included, under one global lock, so h5py reads do not
scale with threads and spend most of their time in library overhead.  This module reads the
chunk index of a dataset once (:meth:`ChunkIndex.from_dataset`) and afterwards decodes raw
chunk bytes itself: the only I/O is ``read_at(offset, nbytes)``, so the same code can read a
local file (:class:`loomx._hdf5.chunkio.FileReader`) or byte ranges over HTTP/S3
(:mod:`loomx._hdf5.remote`).

Supported: chunked or contiguous layout, 1-D to n-D, the filters deflate, shuffle and
fletcher32 (checksum verified) in any pipeline order with per-chunk filter masks, unallocated
chunks (fill value), every integer and float dtype whose file type is the plain IEEE/two's
complement type, either byte order.  Anything else makes :meth:`ChunkIndex.from_dataset`
return ``None`` and the caller reads through h5py.

Measured on a loompy-like file (4000 x 6000 float32, 7 % non-zero, 64 x 64 chunks, gzip 2,
96 MB raw, in the page cache; 2-core machine; MB/s of raw data, best of 5):

=====================================  =========  =========  ==========
MB/s                                   zlib       isal       libdeflate
=====================================  =========  =========  ==========
inflate only, 1 / 2 threads            960/1730   1950/2960  2860/4660
``ChunkIndex.read``, whole matrix      685        1080       1360
same, chunks split over 2 / 4 threads  910/850    1040/760   1190/915
=====================================  =========  =========  ==========

h5py reads the same matrix at 530 MB/s (``dset[...]``) or 550 MB/s (512-row bands).

The table above is the per-chunk Python path (``ChunkIndex.read(..., inflater=name)``),
where copying chunks into the output and the Python work per chunk hold the GIL.  By
default :meth:`ChunkIndex.read` of 1-D and 2-D datasets gathers the stored bytes of every
needed chunk into one buffer (``preadv`` straight into it for local files) and decodes and
places all of them in one compiled call that releases the GIL (:mod:`loomx._hdf5.batched`,
:func:`loomx._hdf5.kernels.decode_chunks`): threads reading different blocks run in
parallel.
Figures for both paths are in ``benchmarks/README.md``.

The per-chunk path's inflater is the fastest one installed: libdeflate (package
``deflate``), then isal (package ``isal``), then the standard library's zlib.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import zlib
from collections.abc import Callable
from functools import partial
from typing import Any

import h5py
import numpy as np

from loomx._hdf5 import batched as _batched
from loomx._hdf5 import handles as _handles
from loomx._hdf5 import kernels as _kernels
from loomx._hdf5 import lookup as _lookup
from loomx._hdf5.chunkio import FileReader, ReadAt, fetch_runs, run_bounds
from loomx._hdf5.filters import DECODED_FILTERS, DEFLATE, SHUFFLE
from loomx._hdf5.grid import axis_geometry, slice_bounds
from loomx._hdf5.pydecode import (
    DEFAULT_INFLATER,
    INFLATE,
    INFLATERS,
    check_fletcher32,
    unshuffle,
)
from loomx.errors import LoomFileError

__all__ = [
    "DEFAULT_INFLATER",
    "INFLATERS",
    "ChunkIndex",
    "box_of_picks",
    "read_through_handle",
    "take_picks",
]

MAX_GRID_CELLS = 1 << 24
"""Datasets with more chunk-grid cells than this (a declared 1e7 x 1e7 matrix) are read
through h5py: the index keeps one entry per cell."""


class ChunkIndex:
    """Where every chunk of one HDF5 dataset lies in the file.  Picklable, small.

    Build it with :meth:`from_dataset`; read with :meth:`read`.  ``offsets``, ``sizes`` and
    ``masks`` have one entry per chunk, laid out like the chunk grid: byte offset in the file
    (``-1``: unallocated, reads as ``fill_value``), stored size and filter mask.  A contiguous
    dataset is described as unfiltered chunks of one row each (1-D: one chunk).

    An index made with ``from_dataset(dset, lazy=True)`` is *incomplete* (``complete`` is
    False): its cells are :data:`loomx._hdf5.lookup.UNKNOWN` until
    :func:`loomx._hdf5.lookup.resolve` looks up the ones a read needs
    (:func:`read_through_handle` does); reading a cell not looked up raises.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunks: tuple[int, ...],
        fill_value: Any,
        filters: tuple[tuple[int, tuple[int, ...]], ...],
        offsets: np.ndarray,
        sizes: np.ndarray,
        masks: np.ndarray,
        complete: bool = True,
    ) -> None:
        self.complete = complete
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.chunks = tuple(int(c) for c in chunks)
        self.fill_value = np.asarray(fill_value, self.dtype)[()]
        self.filters = filters
        self.offsets = np.asarray(offsets, np.int64)
        self.sizes = np.asarray(sizes, np.int64)
        self.masks = np.asarray(masks, np.uint32)
        self._decoders: dict[tuple[int, str], Callable[[Any], Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_decoders"] = {}
        return state

    @classmethod
    def from_dataset(cls, dset: Any, lazy: bool = False) -> ChunkIndex | None:
        """Read the chunk index of an open h5py dataset.

        Parameters
        ----------
        dset : h5py.Dataset
            The dataset.  Only its metadata is read (no chunk data).
        lazy : bool
            Read none of HDF5's chunk index now: the cells are looked up as reads need
            them (:mod:`loomx._hdf5.lookup`).

        Returns
        -------
        ChunkIndex or None
            ``None`` when loomx cannot decode this dataset itself (other filters, compact,
            external or virtual storage, non-numeric or unusual file types, scalars); the
            caller then reads it with h5py.
        """
        dtype = dset.dtype
        if dtype.kind not in "iuf" or dtype.fields or dtype.subdtype or dtype.itemsize > 8:
            return None
        if dset.ndim == 0 or dset.is_virtual or dset.external:
            return None
        try:
            if dset.id.get_type() != h5py.h5t.py_create(dtype):
                return None
        except (TypeError, ValueError):
            return None
        plist = dset.id.get_create_plist()
        filters = []
        for i in range(plist.get_nfilters()):
            code, _flags, values, _name = plist.get_filter(i)
            if code not in DECODED_FILTERS:
                return None
            filters.append((int(code), tuple(int(v) for v in values)))
        layout = plist.get_layout()
        fill = dset.fillvalue
        if layout == h5py.h5d.CONTIGUOUS and not filters:
            start = dset.id.get_offset()
            chunks = (1, *dset.shape[1:]) if dset.ndim > 1 else dset.shape
            grid = (dset.shape[0] if dset.ndim > 1 else 1,) + (1,) * (dset.ndim - 1)
            nbytes = int(np.prod(chunks)) * dtype.itemsize
            rows = np.arange(grid[0], dtype=np.int64).reshape(grid)
            offsets = rows * 0 - 1 if start is None else start + rows * nbytes
            return cls(dset.shape, dtype, chunks, fill, (), offsets, rows * 0 + nbytes, rows * 0)
        if layout != h5py.h5d.CHUNKED:
            return None
        chunks = dset.chunks
        grid = tuple(-(-n // c) for n, c in zip(dset.shape, chunks, strict=True))
        if math.prod(grid) > MAX_GRID_CELLS:  # a huge, mostly unwritten dataset: h5py
            return None
        offsets = np.full(grid, _lookup.UNKNOWN, np.int64)
        sizes = np.zeros(grid, np.int64)
        masks = np.zeros(grid, np.uint32)
        index = cls(dset.shape, dtype, chunks, fill, tuple(filters), offsets, sizes, masks, False)
        if not lazy:
            _lookup.fill_all(index, dset.id)
        return index

    def _decoder(self, mask: int, inflater: str) -> Callable[[Any], Any]:
        """Bytes as stored -> bytes of one chunk, for chunks with this filter mask."""
        found = self._decoders.get((mask, inflater))
        if found is not None:
            return found
        inflate = INFLATE[inflater]
        size: int | None = int(np.prod(self.chunks)) * self.dtype.itemsize
        steps: list[Callable[[Any], Any]] = []
        for i, (code, values) in enumerate(self.filters):
            if mask >> i & 1:
                continue
            if code == DEFLATE:
                sized = None if size is None else lambda buf, n=size: inflate(buf, n)
                steps.append(zlib.decompress if sized is None else sized)
                size = None
            elif code == SHUFFLE:
                steps.append(partial(unshuffle, values[0] if values else self.dtype.itemsize))
            else:
                steps.append(check_fletcher32)
                size = None if size is None else size + 4
        steps.reverse()

        def decode(buf: Any) -> Any:
            for step in steps:
                buf = step(buf)
            return buf

        found = steps[0] if len(steps) == 1 else decode
        self._decoders[(mask, inflater)] = found
        return found

    def read(
        self,
        read_at: ReadAt,
        key: tuple[slice, ...] | slice = (),
        *,
        inflater: str | None = None,
    ) -> np.ndarray:
        """Return ``dset[key]``, bit-identical to h5py.

        Parameters
        ----------
        read_at : callable
            ``read_at(offset, nbytes) -> bytes`` reading the file; every needed chunk is read
            exactly once, runs of file-adjacent chunks in one call (at most 16 MB).  A reader
            with a ``read_ranges(runs) -> list of bytes`` method gets all the runs of this
            read in one call instead (``runs``: list of ``(offset, nbytes)``), and one with
            ``read_into(runs, buffer)`` reads them straight into the kernel's buffer.
        key : tuple of slice
            One step-1 slice per dimension; missing trailing dimensions mean the whole axis.
        inflater : str, optional
            One of :data:`INFLATERS`; default :data:`DEFAULT_INFLATER`.

        Returns
        -------
        numpy.ndarray
            A new array of dtype :attr:`dtype`.
        """
        starts, stops = slice_bounds(self.shape, key)
        out = np.empty([b - a for a, b in zip(starts, stops, strict=True)], self.dtype)
        if out.size == 0:
            return out
        if not self.complete:
            _lookup.check_known(self, _lookup.needed_cells(self, tuple(map(slice, starts, stops))))
        if inflater is None and len(self.shape) <= 2 and _kernels.available():
            return _batched.read_box(self, read_at, starts, stops, out)
        inflater = inflater or DEFAULT_INFLATER
        out_keys: list[list[slice]] = []
        in_keys: list[list[slice]] = []
        cells: list[slice] = []
        for a, b, c in zip(starts, stops, self.chunks, strict=True):
            first, last, out_at, in_at, count = axis_geometry(a, b, c)
            cells.append(slice(first, last))
            out_keys.append(list(map(slice, out_at.tolist(), (out_at + count).tolist())))
            in_keys.append(list(map(slice, in_at.tolist(), (in_at + count).tolist())))
        cell = tuple(cells)
        offsets = self.offsets[cell].ravel()
        grid_shape = self.offsets[cell].shape

        def region(flat: np.ndarray, keys: list[list[slice]]) -> list[tuple[slice, ...]]:
            idx = np.unravel_index(flat, grid_shape)
            per_dim = [[k[i] for i in ix.tolist()] for k, ix in zip(keys, idx, strict=True)]
            return list(zip(*per_dim, strict=True))

        missing = np.flatnonzero(offsets < 0)
        for okey in region(missing, out_keys):
            out[okey] = self.fill_value
        present = np.flatnonzero(offsets >= 0)
        if not present.size:
            return out
        order = present[np.argsort(offsets[present], kind="stable")]
        offs = offsets[order]
        sizes = self.sizes[cell].ravel()[order]
        masks = self.masks[cell].ravel()[order]
        bounds = run_bounds(offs, sizes).tolist()
        okeys = region(order, out_keys)
        ikeys = region(order, in_keys)
        ends = (offs + sizes).tolist()
        offs_l = offs.tolist()
        mask_l = masks.tolist()
        uniform = not masks.any()
        decode = self._decoder(0, inflater)
        dtype, chunks = self.dtype, self.chunks
        nbytes = int(np.prod(chunks)) * dtype.itemsize
        runs = [(offs_l[r0], ends[r1 - 1] - offs_l[r0]) for r0, r1 in itertools.pairwise(bounds)]
        for (r0, r1), (base, want), got in zip(
            itertools.pairwise(bounds), runs, fetch_runs(read_at, runs), strict=True
        ):
            buf = memoryview(got)
            if buf.nbytes != want:
                raise LoomFileError(f"short read at byte {base}: {buf.nbytes} bytes")
            for k in range(r0, r1):
                if not uniform:
                    decode = self._decoder(mask_l[k], inflater)
                try:
                    raw = decode(buf[offs_l[k] - base : ends[k] - base])
                except Exception as e:
                    raise LoomFileError(f"chunk at byte {offs_l[k]} cannot be decoded: {e}") from e
                if len(raw) != nbytes:
                    raise LoomFileError(
                        f"chunk at byte {offs_l[k]} decodes to {len(raw)} bytes, not {nbytes}"
                    )
                out[okeys[k]] = np.ndarray(chunks, dtype, raw)[ikeys[k]]
        return out

    def read_picks(
        self,
        read_at: ReadAt,
        key: tuple[slice, slice],
        axis: int,
        picks: np.ndarray,
    ) -> np.ndarray:
        """Return ``dset[key]`` with positions ``picks`` taken along ``axis`` of a 2-D
        dataset: only the chunks that hold a picked position are read, and each picked row
        or column goes straight to its place in the result (no intermediate block).

        Parameters
        ----------
        read_at : callable
            As for :meth:`read`.
        key : tuple of two step-1 slices
            The other axis's range (the slice along ``axis`` is ignored).
        axis : int
            0 to pick rows, 1 to pick columns.
        picks : 1-D integer array
            Positions along ``axis``, in any order, repeats allowed.

        Returns
        -------
        numpy.ndarray
            ``len(picks)`` long along ``axis``.
        """
        if len(self.shape) != 2 or not _kernels.available():
            raise ValueError("read_picks reads 2-D datasets with the compiled kernels")
        picks = np.asarray(picks, np.int64)
        n = self.shape[axis]
        if picks.ndim != 1 or (picks.size and (picks.min() < 0 or picks.max() >= n)):
            raise IndexError(f"picks must be positions in 0..{n - 1} along axis {axis}")
        starts, stops = slice_bounds(self.shape, key)
        if not self.complete and picks.size:
            box = tuple(map(slice, starts, stops))
            _lookup.check_known(self, _lookup.needed_cells(self, box, (axis, picks)))
        return _batched.read_picks(self, read_at, starts, stops, axis, picks)


def _index_in(f: Any, h5path: str) -> ChunkIndex | None:
    """The chunk index of ``f[h5path]``, to be filled as reads need it; None for a dataset
    stored in another file (an external link followed): its chunks are not at offsets of
    ``f``."""
    dset = f[h5path]
    if h5py.h5f.get_name(dset.id) != h5py.h5f.get_name(f.id):
        return None
    return ChunkIndex.from_dataset(dset, lazy=True)


def _resolved(
    index: ChunkIndex | None, f: Any, h5path: str, key: Any, picks: Any, read_at: ReadAt
) -> Any:
    """``index`` with the cells a read of ``key`` (and ``picks``) needs looked up in the
    open file ``f`` (its B-tree nodes read through ``read_at``)."""
    if index is not None and not index.complete:
        if picks is not None and not (len(index.shape) == 2 and _kernels.available()):
            key, picks = box_of_picks(key, picks), None  # read as their bounding box
        box = tuple(map(slice, *slice_bounds(index.shape, key)))
        _lookup.resolve(index, f[h5path].id, _lookup.needed_cells(index, box, picks), read_at)
    return index


def read_through_handle(
    open_file: Callable[[], contextlib.AbstractContextManager[Any]],
    h5path: str,
    key: tuple[slice, ...],
    label: str = "",
    remote: Any = None,
    picks: tuple[int, np.ndarray] | None = None,
) -> np.ndarray:
    """Return ``dset[key]`` from the file an open h5py handle refers to, fast when possible.

    The chunk index comes from the handle, and the bytes from a descriptor of our own that
    is checked to name the same file (device and inode) as the handle's: a file replaced on
    disk after it was opened is read through h5py from the handle, never by mixing one
    file's index with another's bytes.  (A duplicate of h5py's descriptor would share its
    HDF5 file lock and keep it after h5py closes the file.)  Drivers without a file
    descriptor and datasets :meth:`ChunkIndex.from_dataset` refuses are read with h5py.

    Parameters
    ----------
    open_file : callable
        Context manager factory giving the open :class:`h5py.File` (``LoomStore.open``).
    h5path : str
        The dataset.
    key : tuple of slice
        Step-1 slices, as for :meth:`ChunkIndex.read`.
    label : str
        File name for error messages.
    remote : loomx._hdf5.remote.RemoteSource, optional
        The remote file the handle reads: chunks are fetched with its ``read_ranges``, and
        the chunk index comes from its ``chunk_index(h5path, build)``.
    picks : tuple of (int, numpy.ndarray), optional
        ``(axis, positions)``: take these positions along ``axis`` of a 2-D dataset
        (:meth:`ChunkIndex.read_picks`: only the chunks that hold them are read); ``key``
        gives the other axis's range.
    """
    if remote is not None:
        with open_file() as f:
            index = remote.chunk_index(h5path, lambda: _index_in(f, h5path))
            index = _resolved(index, f, h5path, key, picks, remote)
            if index is None:
                return take_picks(_read_h5py(f[h5path], box_of_picks(key, picks)), picks)
        if picks is not None and len(index.shape) == 2 and _kernels.available():
            return index.read_picks(remote, key, *picks)
        return take_picks(index.read(remote, box_of_picks(key, picks)), picks)
    with open_file() as f:
        try:
            fd = f.id.get_vfd_handle()
        except Exception:
            fd = None
        if not isinstance(fd, int):
            return take_picks(_read_h5py(f[h5path], box_of_picks(key, picks)), picks)
        st = os.fstat(fd)
        fkey = (os.getpid(), "fd", st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        index = _handles.CHUNK_INDEXES.get((*fkey, h5path), lambda: _index_in(f, h5path))
        if index is None:
            return take_picks(_read_h5py(f[h5path], box_of_picks(key, picks)), picks)
        label = label or f.filename
        handle = _handles.descriptor(fkey, f.filename)
        own = os.fstat(handle.fd)
        if (own.st_dev, own.st_ino) != (st.st_dev, st.st_ino):
            _handles.forget_descriptor(fkey)  # the path now names another file
            return take_picks(_read_h5py(f[h5path], box_of_picks(key, picks)), picks)
        reader = FileReader(handle, label)
        index = _resolved(index, f, h5path, key, picks, reader)

    if picks is not None and len(index.shape) == 2 and _kernels.available():
        return index.read_picks(reader, key, *picks)
    return take_picks(index.read(reader, box_of_picks(key, picks)), picks)


def box_of_picks(key: tuple[slice, ...], picks: tuple[int, np.ndarray] | None) -> tuple[slice, ...]:
    """``key`` with the picked axis narrowed to the picks' bounding range."""
    if picks is None or not len(picks[1]):
        return key
    axis, positions = picks
    box = list(key) + [slice(None)] * (axis + 1 - len(key))
    box[axis] = slice(int(positions.min()), int(positions.max()) + 1)
    return tuple(box)


def take_picks(block: np.ndarray, picks: tuple[int, np.ndarray] | None) -> np.ndarray:
    """The picks of a block read for :func:`box_of_picks`."""
    if picks is None:
        return block
    axis, positions = picks
    low = int(positions.min()) if len(positions) else 0
    return np.take(block, np.asarray(positions) - low, axis=axis)


def _read_h5py(dset: Any, key: tuple[slice, ...] | slice) -> np.ndarray:
    starts, stops = slice_bounds(dset.shape, key)
    return dset[tuple(map(slice, starts, stops))]

"""HDF5 chunk index and the fast read path.

HDF5 runs every call, decompression included, under one global lock, so h5py reads do not
scale with threads and spend most of their time in library overhead.  This module reads the
chunk index of a dataset once (:meth:`ChunkIndex.from_dataset`) and afterwards decodes raw
chunk bytes itself: the only I/O is ``read_at(offset, nbytes)``, so the same code can read a
local file (:class:`FileReader`) or byte ranges over HTTP/S3 (:mod:`loomx._hdf5.remote`).

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
places all of them in one compiled call that releases the GIL
(:func:`loomx._hdf5.kernels.decode_chunks`): threads reading different blocks run in parallel.
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
from collections.abc import Callable, Iterable
from functools import lru_cache, partial
from typing import Any

import numpy as np

from loomx._hdf5 import kernels as _kernels
from loomx._hdf5.lru import LRUCache
from loomx.errors import LoomFileError

ReadAt = Callable[[int, int], bytes]
_Inflate = Callable[[Any, int], Any]

_DEFLATE, _SHUFFLE, _FLETCHER32 = 1, 2, 3
_MAX_RUN = 16 << 20  # largest single read_at when coalescing adjacent chunks
MAX_GRID_CELLS = 1 << 24
"""Datasets with more chunk-grid cells than this (a declared 1e7 x 1e7 matrix) are read
through h5py: the index keeps one entry per cell."""


def _find_inflaters() -> dict[str, _Inflate]:
    found: dict[str, _Inflate] = {}
    with contextlib.suppress(ImportError):
        import deflate

        found["libdeflate"] = deflate.zlib_decompress
    with contextlib.suppress(ImportError):
        from isal import isal_zlib

        found["isal"] = lambda data, size, f=isal_zlib.decompress: f(data, 15, max(size, 1))
    found["zlib"] = lambda data, size: zlib.decompress(data, 15, max(size, 1))
    return found


_INFLATE_FUNCS = _find_inflaters()
#: Names of the inflaters installed, fastest first.
INFLATERS: tuple[str, ...] = tuple(_INFLATE_FUNCS)
#: The inflater :meth:`ChunkIndex.read` uses unless told otherwise.
DEFAULT_INFLATER: str = INFLATERS[0]


def _unshuffle(itemsize: int, buf: Any) -> np.ndarray:
    src = np.frombuffer(buf, np.uint8)
    n = src.size // itemsize
    body = n * itemsize
    dst = np.empty(src.size, np.uint8)
    dst[:body].reshape(n, itemsize)[...] = src[:body].reshape(itemsize, n).T
    dst[body:] = src[body:]
    return dst


@lru_cache(maxsize=4)
def _fletcher_weights(nwords: int) -> np.ndarray:
    return (np.arange(nwords, 0, -1, dtype=np.uint64) % 65535).astype(np.uint32)


def _fletcher32(data: np.ndarray) -> int:
    """HDF5's Fletcher-32 of a uint8 array (16-bit big-endian words, ones' complement sums)."""
    if data.size % 2:
        data = np.append(data, np.uint8(0))
    words = data.view(">u2").astype(np.uint64)
    if not words.size:
        return 0
    s1 = int(words.sum())
    if s1 == 0:
        return 0
    s2 = int(np.dot(words, _fletcher_weights(words.size)))
    return (((s2 - 1) % 65535 + 1) << 16) | ((s1 - 1) % 65535 + 1)


def _check_fletcher32(buf: Any) -> np.ndarray:
    a = np.frombuffer(buf, np.uint8)
    if a.size < 4:
        raise LoomFileError("chunk too short for its fletcher32 checksum")
    data = a[:-4]
    stored = int.from_bytes(a[-4:].tobytes(), "little")
    value = _fletcher32(data)
    swapped = ((value & 0x00FF00FF) << 8) | ((value >> 8) & 0x00FF00FF)
    if stored not in (value, swapped):
        raise LoomFileError("data error detected by fletcher32 checksum")
    return data


def _bounds(shape: tuple[int, ...], key: Any) -> tuple[list[int], list[int]]:
    """Start and stop per dimension of a key of step-1 slices."""
    if not isinstance(key, tuple):
        key = (key,)
    if len(key) > len(shape):
        raise IndexError(f"{len(key)} indices for a {len(shape)}-D dataset")
    key = key + (slice(None),) * (len(shape) - len(key))
    starts, stops = [], []
    for k, n in zip(key, shape, strict=True):
        if not isinstance(k, slice):
            raise TypeError(f"only slices are supported here, got {k!r}")
        start, stop, step = k.indices(n)
        if step != 1:
            raise ValueError(f"only step-1 slices are supported here, got {k!r}")
        starts.append(start)
        stops.append(max(start, stop))
    return starts, stops


def _run_bounds(offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Start indices of runs of file-adjacent chunks (sorted by offset), plus the end."""
    n = offsets.size
    new = np.ones(n, bool)
    if n > 1:
        new[1:] = offsets[1:] != offsets[:-1] + sizes[:-1]
        band = np.cumsum(sizes) // _MAX_RUN
        new[1:] |= band[1:] != band[:-1]
    return np.append(np.flatnonzero(new), n)


def _fetch(read_at: ReadAt, runs: list[tuple[int, int]]) -> Iterable[Any]:
    """The bytes of each ``(offset, nbytes)`` run: one ``read_at.read_ranges(runs)`` call
    when the reader has it (remote readers fetch the runs concurrently), else one
    ``read_at`` call per run, made as the caller consumes them."""
    read_ranges = getattr(read_at, "read_ranges", None)
    if read_ranges is not None:
        return read_ranges(runs)
    return (read_at(offset, nbytes) for offset, nbytes in runs)


class ChunkIndex:
    """Where every chunk of one HDF5 dataset lies in the file.  Picklable, small.

    Build it with :meth:`from_dataset`; read with :meth:`read`.  ``offsets``, ``sizes`` and
    ``masks`` have one entry per chunk, laid out like the chunk grid: byte offset in the file
    (``-1``: unallocated, reads as ``fill_value``), stored size and filter mask.  A contiguous
    dataset is described as unfiltered chunks of one row each (1-D: one chunk).
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
    ) -> None:
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
    def from_dataset(cls, dset: Any) -> ChunkIndex | None:
        """Read the chunk index of an open h5py dataset.

        Parameters
        ----------
        dset : h5py.Dataset
            The dataset.  Only its metadata is read (no chunk data).

        Returns
        -------
        ChunkIndex or None
            ``None`` when loomx cannot decode this dataset itself (other filters, compact,
            external or virtual storage, non-numeric or unusual file types, scalars); the
            caller then reads it with h5py.
        """
        import h5py

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
            if code not in (_DEFLATE, _SHUFFLE, _FLETCHER32):
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
        flat: list[int] = []
        extend = flat.extend
        dsid = dset.id
        try:
            dsid.chunk_iter(
                lambda s: extend((*s.chunk_offset, s.byte_offset, s.size, s.filter_mask))
            )
        except (AttributeError, NotImplementedError):
            for i in range(dsid.get_num_chunks()):
                s = dsid.get_chunk_info(i)
                extend((*s.chunk_offset, s.byte_offset, s.size, s.filter_mask))
        table = np.array(flat, np.int64).reshape(-1, dset.ndim + 3)
        where = table[:, : dset.ndim] // np.array(chunks, np.int64)
        table, where = table[(where < grid).all(axis=1)], where[(where < grid).all(axis=1)]
        cell = tuple(where.T)
        offsets = np.full(grid, -1, np.int64)
        sizes = np.zeros(grid, np.int64)
        masks = np.zeros(grid, np.uint32)
        offsets[cell] = table[:, -3]
        sizes[cell] = table[:, -2]
        masks[cell] = table[:, -1]
        return cls(dset.shape, dtype, chunks, fill, tuple(filters), offsets, sizes, masks)

    def _decoder(self, mask: int, inflater: str) -> Callable[[Any], Any]:
        """Bytes as stored -> bytes of one chunk, for chunks with this filter mask."""
        found = self._decoders.get((mask, inflater))
        if found is not None:
            return found
        inflate = _INFLATE_FUNCS[inflater]
        size: int | None = int(np.prod(self.chunks)) * self.dtype.itemsize
        steps: list[Callable[[Any], Any]] = []
        for i, (code, values) in enumerate(self.filters):
            if mask >> i & 1:
                continue
            if code == _DEFLATE:
                sized = None if size is None else lambda buf, n=size: inflate(buf, n)
                steps.append(zlib.decompress if sized is None else sized)
                size = None
            elif code == _SHUFFLE:
                steps.append(partial(_unshuffle, values[0] if values else self.dtype.itemsize))
            else:
                steps.append(_check_fletcher32)
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
        starts, stops = _bounds(self.shape, key)
        out = np.empty([b - a for a, b in zip(starts, stops, strict=True)], self.dtype)
        if out.size == 0:
            return out
        if inflater is None and len(self.shape) <= 2 and _kernels.available():
            return self._read_batched(read_at, starts, stops, out)
        inflater = inflater or DEFAULT_INFLATER
        out_keys: list[list[slice]] = []
        in_keys: list[list[slice]] = []
        cells: list[slice] = []
        for a, b, c in zip(starts, stops, self.chunks, strict=True):
            first, last, out_at, in_at, count = _axis_geometry(a, b, c)
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
        bounds = _run_bounds(offs, sizes).tolist()
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
            itertools.pairwise(bounds), runs, _fetch(read_at, runs), strict=True
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

    def _read_batched(
        self, read_at: ReadAt, starts: list[int], stops: list[int], out: np.ndarray
    ) -> np.ndarray:
        """:meth:`read` for 1-D and 2-D datasets: every chunk decoded and placed in one
        compiled call without the GIL (:func:`loomx._hdf5.kernels.decode_chunks`)."""
        starts, stops = [0, *starts][-2:], [1, *stops][-2:]  # 1-D: one row
        chunks = [1, *self.chunks][-2:]
        geometry = [_axis_geometry(a, b, c) for a, b, c in zip(starts, stops, chunks, strict=True)]
        cells = tuple(slice(first, last) for first, last, *_ in geometry)
        (*_, out_row, in_row, n_rows), (*_, out_col, in_col, n_cols) = geometry
        item = self.dtype.itemsize

        def place(i: np.ndarray, j: np.ndarray) -> np.ndarray:
            out_at, in_at, width = out_col[j] * item, in_col[j] * item, n_cols[j] * item
            return np.column_stack([out_row[i], out_at, in_row[i], in_at, n_rows[i], width])

        dst = out.reshape(len(out) if out.ndim > 1 else 1, -1).view(np.uint8)
        return self._decode_cells(read_at, cells, place, out, dst)

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
        other = 1 - axis
        starts, stops = _bounds(self.shape, key)
        shape = [0, 0]
        shape[axis], shape[other] = picks.size, stops[other] - starts[other]
        out = np.empty(shape, self.dtype)
        if out.size == 0:
            return out
        size = self.chunks[axis]
        order = np.argsort(picks // size, kind="stable")
        cell_of = picks[order] // size
        used, first = np.unique(cell_of, return_index=True)
        pick_ptr = np.append(first, picks.size).astype(np.int64)
        pick_in = (picks[order] - cell_of * size).astype(np.int64)
        pick_out = order.astype(np.int64)
        geometry = _axis_geometry(starts[other], stops[other], self.chunks[other])
        first_cell, last_cell, out_at, in_at, count = geometry
        cells: list[Any] = [None, None]
        cells[axis], cells[other] = used, slice(first_cell, last_cell)
        item = self.dtype.itemsize

        def place(i: np.ndarray, j: np.ndarray) -> np.ndarray:
            g, o = (i, j) if axis == 0 else (j, i)
            zero = np.zeros_like(g)
            if axis == 1:  # rows as the box says, columns picked
                fields = [out_at[o], zero, in_at[o], zero, count[o], zero]
            else:
                fields = [zero, out_at[o] * item, zero, in_at[o] * item, zero, count[o] * item]
            return np.column_stack([*fields, g])

        picked = (2 if axis == 0 else 1, pick_ptr, pick_in, pick_out)
        dst = out.view(np.uint8)
        return self._decode_cells(read_at, tuple(cells), place, out, dst, picked)

    def _decode_cells(
        self,
        read_at: ReadAt,
        cells: tuple[Any, Any],
        place: Callable[[np.ndarray, np.ndarray], np.ndarray],
        out: np.ndarray,
        dst: np.ndarray,
        picked: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Read, decode and place the chunks of grid ``cells`` (slices or index arrays per
        axis); ``place(i, j)`` gives the kernel's placement rows for cell positions."""
        grid_shape = self.offsets.shape if self.offsets.ndim == 2 else (1, self.offsets.size)

        def at(table: np.ndarray) -> np.ndarray:
            return table.reshape(grid_shape)[np.ix_(*map(_positions, cells, grid_shape))]

        offsets = at(self.offsets)
        flat = offsets.ravel()
        present = np.flatnonzero(flat >= 0)
        if present.size < flat.size:
            out[...] = self.fill_value
        if not present.size:
            return out
        order = present[np.argsort(flat[present], kind="stable")]
        offs = flat[order]
        sizes = at(self.sizes).ravel()[order]
        masks = at(self.masks).ravel()[order].astype(np.int64)
        placed = place(*np.divmod(order, offsets.shape[1]))
        src, chunk_starts = gather_chunks(read_at, offs, sizes)
        item = self.dtype.itemsize
        codes = np.array([code for code, _ in self.filters], np.int64)
        params = np.array([v[0] if v else item for _, v in self.filters], np.int64)
        chunks = [1, *self.chunks][-2:]
        status = np.zeros(3, np.int64)
        pick_axis, pick_ptr, pick_in, pick_out = picked or (0, *(_NO_PICKS,) * 3)
        _kernels.decode_chunks(
            src,
            chunk_starts,
            sizes,
            masks,
            codes,
            params,
            chunks[0],
            chunks[1] * item,
            item,
            np.ascontiguousarray(placed[:, :6]),
            dst,
            status,
            pick_axis,
            placed[:, 6].copy() if picked else _NO_PICKS,
            pick_ptr,
            pick_in,
            pick_out,
        )
        if status[0]:
            raise _kernel_error(status, int(offs[status[1]]), math.prod(chunks) * item)
        return out


_NO_PICKS = np.zeros(0, np.int64)


def _positions(cells: Any, n: int) -> np.ndarray:
    """Grid positions of a slice or an index array of cells."""
    return np.arange(n)[cells] if isinstance(cells, slice) else np.asarray(cells)


def _axis_geometry(
    start: int, stop: int, chunk: int
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """For ``start:stop`` along an axis chunked by ``chunk``: the first and last+1 chunk
    cells, and per cell the output position, position inside the chunk and length."""
    first, last = start // chunk, (stop - 1) // chunk + 1
    corner = np.arange(first, last, dtype=np.int64) * chunk
    lo, hi = np.maximum(corner, start), np.minimum(corner + chunk, stop)
    return first, last, lo - start, lo - corner, hi - lo


def _kernel_error(status: np.ndarray, offset: int, nbytes: int) -> LoomFileError:
    code, detail = int(status[0]), int(status[2])
    if code == _kernels.INFLATE_FAILED and detail == _kernels.LIBDEFLATE_INSUFFICIENT_SPACE:
        return LoomFileError(f"chunk at byte {offset} decodes to more than {nbytes} bytes")
    if code == _kernels.BAD_SIZE:
        return LoomFileError(f"chunk at byte {offset} decodes to {detail} bytes, not {nbytes}")
    reason = {
        _kernels.INFLATE_FAILED: f"invalid deflate stream (libdeflate result {detail})",
        _kernels.BAD_CHECKSUM: "data error detected by fletcher32 checksum",
        _kernels.TOO_SHORT: "chunk too short for its fletcher32 checksum",
    }[code]
    return LoomFileError(f"chunk at byte {offset} cannot be decoded: {reason}")


def gather_chunks(
    read_at: ReadAt, offsets: np.ndarray, sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The stored bytes of chunks at ``offsets`` (increasing) of ``sizes`` bytes, read in
    runs of file-adjacent chunks into one array, and where each chunk starts in it."""
    bounds = _run_bounds(offsets, sizes)
    first, last = bounds[:-1], bounds[1:] - 1
    run_offsets = offsets[first]
    run_sizes = offsets[last] + sizes[last] - run_offsets
    in_buffer = np.cumsum(run_sizes) - run_sizes
    run_of = np.repeat(np.arange(first.size), np.diff(bounds))
    runs = list(zip(run_offsets.tolist(), run_sizes.tolist(), strict=True))
    src = _gather(read_at, runs, int(run_sizes.sum()))
    return src, in_buffer[run_of] + offsets - run_offsets[run_of]


def _gather(read_at: ReadAt, runs: list[tuple[int, int]], total: int) -> np.ndarray:
    """The bytes of every ``(offset, nbytes)`` run, concatenated into one array."""
    buf = np.empty(total, np.uint8)
    read_into = getattr(read_at, "read_into", None)
    if read_into is not None:
        read_into(runs, buf)
        return buf
    pos = 0
    for (offset, nbytes), got in zip(runs, _fetch(read_at, runs), strict=True):
        part = np.frombuffer(got, np.uint8)
        if part.size != nbytes:
            raise LoomFileError(f"short read at byte {offset}: {part.size} bytes")
        buf[pos : pos + nbytes] = part
        pos += nbytes
    return buf


class FileHandle:
    """One open file descriptor, closed when the last reader using it goes away."""

    __slots__ = ("fd", "path", "pid")

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.path = path
        self.pid = os.getpid()

    def __del__(self) -> None:
        if os.getpid() == self.pid:
            with contextlib.suppress(OSError):
                os.close(self.fd)


_handles: LRUCache[FileHandle] = LRUCache()
_indexes: LRUCache[ChunkIndex | None] = LRUCache()


def _file_key(path: str | os.PathLike[str]) -> tuple[Any, ...]:
    real = os.path.realpath(path)
    st = os.stat(real)
    return (os.getpid(), real, st.st_mtime_ns, st.st_size, st.st_ino)


def _check_extent(offset: int, nbytes: int, size: int, label: str) -> None:
    """Raise :class:`LoomFileError` unless bytes ``offset..offset + nbytes`` lie in a file
    of ``size`` bytes."""
    if offset < 0 or nbytes < 0 or offset + nbytes > size:
        raise LoomFileError(
            f"the chunk index points at bytes {offset}..{offset + nbytes} of a file of "
            f"{size} bytes; the file is truncated or corrupt",
            path=label,
        )


def _pread_exact(fd: int, offset: int, nbytes: int, label: str) -> bytes:
    """``nbytes`` bytes at ``offset`` of ``fd``; a short file raises :class:`LoomFileError`."""
    _check_extent(offset, nbytes, os.fstat(fd).st_size, label)
    parts = [os.pread(fd, nbytes, offset)]
    done = len(parts[0])
    while done < nbytes:
        parts.append(os.pread(fd, nbytes - done, offset + done))
        if not parts[-1]:
            raise LoomFileError(f"short read at byte {offset + done}", path=label)
        done += len(parts[-1])
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _pread_into(fd: int, runs: list[tuple[int, int]], buffer: np.ndarray, label: str) -> None:
    """Read every ``(offset, nbytes)`` run of ``fd`` into ``buffer``, one after another,
    without intermediate copies; a run past the end of the file raises
    :class:`LoomFileError`."""
    if not hasattr(os, "preadv"):  # pragma: no cover - platforms without preadv
        pos = 0
        for offset, nbytes in runs:
            buffer[pos : pos + nbytes] = np.frombuffer(
                _pread_exact(fd, offset, nbytes, label), np.uint8
            )
            pos += nbytes
        return
    size = os.fstat(fd).st_size
    view = memoryview(buffer)
    pos = 0
    for offset, nbytes in runs:
        _check_extent(offset, nbytes, size, label)
        done = 0
        while done < nbytes:
            got = os.preadv(fd, [view[pos + done : pos + nbytes]], offset + done)
            if not got:
                raise LoomFileError(f"short read at byte {offset + done}", path=label)
            done += got
        pos += nbytes


class FileReader:
    """``read_at`` on the descriptor of a cached :class:`FileHandle` (kept alive here)."""

    __slots__ = ("handle", "label")

    def __init__(self, handle: FileHandle, label: str) -> None:
        self.handle, self.label = handle, label

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileReader:
        """A reader of the local file ``path`` on a descriptor of its own.

        Examples
        --------
        >>> index.read(FileReader.of("pbmc.loom"), (slice(0, 64),))  # doctest: +SKIP
        """
        return cls(FileHandle(os.fspath(path)), os.fspath(path))

    def __reduce__(self) -> tuple[Any, ...]:
        # a descriptor means nothing in another process: pickle as the file's path
        return (FileReader.of, (self.handle.path,))

    def __call__(self, offset: int, nbytes: int) -> bytes:
        return _pread_exact(self.handle.fd, offset, nbytes, self.label)

    def read_into(self, runs: list[tuple[int, int]], buffer: np.ndarray) -> None:
        _pread_into(self.handle.fd, runs, buffer, self.label)


def _index_in(f: Any, h5path: str) -> ChunkIndex | None:
    """The chunk index of ``f[h5path]``; None for a dataset stored in another file (an
    external link followed): its chunks are not at offsets of ``f``."""
    import h5py

    dset = f[h5path]
    if h5py.h5f.get_name(dset.id) != h5py.h5f.get_name(f.id):
        return None
    return ChunkIndex.from_dataset(dset)


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
        index = _indexes.get((*fkey, h5path), lambda: _index_in(f, h5path))
        if index is None:
            return take_picks(_read_h5py(f[h5path], box_of_picks(key, picks)), picks)
        label = label or f.filename
        handle = _handles.get(fkey, lambda: FileHandle(f.filename))
        own = os.fstat(handle.fd)
        if (own.st_dev, own.st_ino) != (st.st_dev, st.st_ino):
            _handles.pop(fkey)  # the path now names another file
            return take_picks(_read_h5py(f[h5path], box_of_picks(key, picks)), picks)

    reader = FileReader(handle, label)
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
    starts, stops = _bounds(dset.shape, key)
    return dset[tuple(map(slice, starts, stops))]

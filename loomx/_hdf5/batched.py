"""The compiled read path of the chunk reader: the stored bytes of every chunk a read
needs gathered into one buffer, then decoded and placed in one call of
:func:`loomx._hdf5.kernels.decode_chunks`, without the GIL (1-D and 2-D datasets; whole
boxes, or picked rows or columns).  A process's first small reads, before the compiled
kernel is loaded, go through its Python twin instead
(:func:`loomx._hdf5.pydecode.takes_python_path`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from loomx._hdf5 import kernels as _kernels
from loomx._hdf5 import pydecode as _pydecode
from loomx._hdf5.chunkio import ReadAt, gather_chunks
from loomx._hdf5.grid import axis_geometry, cell_positions
from loomx.errors import LoomFileError

__all__ = ["read_box", "read_picks"]

_NO_PICKS = np.zeros(0, np.int64)


class ChunkTable(Protocol):
    """What the compiled path reads of a :class:`loomx._hdf5.chunks.ChunkIndex`."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    fill_value: Any
    filters: tuple[tuple[int, tuple[int, ...]], ...]
    offsets: np.ndarray
    sizes: np.ndarray
    masks: np.ndarray


def read_box(
    index: ChunkTable, read_at: ReadAt, starts: list[int], stops: list[int], out: np.ndarray
) -> np.ndarray:
    """Fill ``out`` with the box ``starts:stops`` of a 1-D or 2-D dataset
    (:meth:`loomx._hdf5.chunks.ChunkIndex.read`): every chunk decoded and placed in one
    compiled call without the GIL (:func:`loomx._hdf5.kernels.decode_chunks`)."""
    starts, stops = [0, *starts][-2:], [1, *stops][-2:]  # 1-D: one row
    chunks = [1, *index.chunks][-2:]
    geometry = [axis_geometry(a, b, c) for a, b, c in zip(starts, stops, chunks, strict=True)]
    cells = tuple(slice(first, last) for first, last, *_ in geometry)
    (*_, out_row, in_row, n_rows), (*_, out_col, in_col, n_cols) = geometry
    item = index.dtype.itemsize

    def place(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        out_at, in_at, width = out_col[j] * item, in_col[j] * item, n_cols[j] * item
        return np.column_stack([out_row[i], out_at, in_row[i], in_at, n_rows[i], width])

    dst = out.reshape(len(out) if out.ndim > 1 else 1, -1).view(np.uint8)
    return _decode_cells(index, read_at, cells, place, out, dst)


def read_picks(
    index: ChunkTable,
    read_at: ReadAt,
    starts: list[int],
    stops: list[int],
    axis: int,
    picks: np.ndarray,
) -> np.ndarray:
    """The box ``starts:stops`` of a 2-D dataset with positions ``picks`` (checked, int64)
    taken along ``axis`` instead (:meth:`loomx._hdf5.chunks.ChunkIndex.read_picks`): only
    the chunks that hold a picked position are read, and each picked row or column goes
    straight to its place in the result."""
    other = 1 - axis
    shape = [0, 0]
    shape[axis], shape[other] = picks.size, stops[other] - starts[other]
    out = np.empty(shape, index.dtype)
    if out.size == 0:
        return out
    size = index.chunks[axis]
    order = np.argsort(picks // size, kind="stable")
    cell_of = picks[order] // size
    used, first = np.unique(cell_of, return_index=True)
    pick_ptr = np.append(first, picks.size).astype(np.int64)
    pick_in = (picks[order] - cell_of * size).astype(np.int64)
    pick_out = order.astype(np.int64)
    geometry = axis_geometry(starts[other], stops[other], index.chunks[other])
    first_cell, last_cell, out_at, in_at, count = geometry
    cells: list[Any] = [None, None]
    cells[axis], cells[other] = used, slice(first_cell, last_cell)
    item = index.dtype.itemsize

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
    return _decode_cells(index, read_at, tuple(cells), place, out, dst, picked)


def _decode_cells(
    index: ChunkTable,
    read_at: ReadAt,
    cells: tuple[Any, Any],
    place: Callable[[np.ndarray, np.ndarray], np.ndarray],
    out: np.ndarray,
    dst: np.ndarray,
    picked: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Read, decode and place the chunks of grid ``cells`` (slices or index arrays per
    axis); ``place(i, j)`` gives the kernel's placement rows for cell positions."""
    grid_shape = index.offsets.shape if index.offsets.ndim == 2 else (1, index.offsets.size)

    def at(table: np.ndarray) -> np.ndarray:
        return table.reshape(grid_shape)[np.ix_(*map(cell_positions, cells, grid_shape))]

    offsets = at(index.offsets)
    flat = offsets.ravel()
    present = np.flatnonzero(flat >= 0)
    if present.size < flat.size:
        out[...] = index.fill_value
    if not present.size:
        return out
    order = present[np.argsort(flat[present], kind="stable")]
    offs = flat[order]
    sizes = at(index.sizes).ravel()[order]
    masks = at(index.masks).ravel()[order].astype(np.int64)
    placed = place(*np.divmod(order, offsets.shape[1]))
    src, chunk_starts = gather_chunks(read_at, offs, sizes)
    item = index.dtype.itemsize
    codes = np.array([code for code, _ in index.filters], np.int64)
    params = np.array([v[0] if v else item for _, v in index.filters], np.int64)
    chunks = [1, *index.chunks][-2:]
    status = np.zeros(3, np.int64)
    pick_axis, pick_ptr, pick_in, pick_out = picked or (0, *(_NO_PICKS,) * 3)
    small = _pydecode.takes_python_path(offs.size * math.prod(chunks) * item)
    (_pydecode.decode_chunks if small else _kernels.decode_chunks)(
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

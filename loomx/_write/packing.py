"""Compress layer blocks into finished HDF5 deflate chunks where the blocks are computed.

The writer turns every dask block of a layer into a
:class:`~loomx._hdf5.codecs.PackedBlock`: the block cut into the dataset's HDF5 chunks (edge
chunks padded to the full chunk shape, as HDF5 stores them), each compressed to a zlib
stream exactly as HDF5's deflate filter stores it (:mod:`loomx._hdf5.codecs`).  Packing runs
in dask tasks, so threads (every codec releases the GIL while compressing), processes and
``dask.distributed`` workers compress in parallel; the one process that holds the output
open only hands the finished bytes to ``H5Dwrite_chunk``
(:func:`~loomx._hdf5.codecs.write_packed`).
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

import dask.array as da
import numpy as np
from dask.array.core import normalize_chunks

from loomx._hdf5 import codecs as _codecs
from loomx._read.chunking import block_bytes

__all__ = ["in_blocks", "packed"]


def in_blocks(values: np.ndarray, chunk_shape: tuple[int, int]) -> da.Array:
    """An in-memory layer as a dask array of blocks of whole chunks, about
    :func:`~loomx._read.chunking.block_bytes` each.

    The blocks are views of ``values`` (``dask.array.from_array`` would copy it whole).
    """
    blocks = normalize_chunks(
        "auto", values.shape, limit=block_bytes(), dtype=values.dtype, previous_chunks=chunk_shape
    )
    name = f"loomx-in-memory-{uuid.uuid4().hex}"
    offsets = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in blocks]
    graph = {
        (name, i, j): values[offsets[0][i] : offsets[0][i + 1], offsets[1][j] : offsets[1][j + 1]]
        for i in range(len(blocks[0]))
        for j in range(len(blocks[1]))
    }
    return da.Array(graph, name, blocks, meta=values[:0, :0])


def _pack_task(block: Any, block_info: Any = None, **kwargs: Any) -> np.ndarray:
    location = block_info[0]["array-location"]
    shift = kwargs.pop("origin")
    origin = (shift[0] + location[0][0], shift[1] + location[1][0])
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = _codecs.pack_block(block, origin, **kwargs)
    return out


def packed(
    arr: da.Array,
    dset: Any,
    level: int,
    keep_raw: bool = False,
    origin: tuple[int, int] = (0, 0),
    codec: str | None = None,
    rows: np.ndarray | None = None,
) -> da.Array:
    """Pack every block of ``arr`` into ``dset``'s chunks, in the tasks that compute it.

    Parameters
    ----------
    arr
        2-D dask array whose block edges fall on ``dset``'s chunk edges (or its end).
    dset
        The h5py dataset the chunks are for (its ``chunks`` and ``dtype`` are used).
    level, codec
        Deflate level and codec, see :func:`~loomx._hdf5.codecs.compressor`.
    keep_raw
        Keep each block's values too (see :func:`~loomx._hdf5.codecs.pack_block`).
    origin
        Position of ``arr`` within ``dset``.
    rows
        Row order applied to every block while packing (blocks must be full height).

    Returns
    -------
    dask.array.Array
        Object array with one ``(1, 1)`` block per block of ``arr``, holding its
        :class:`~loomx._hdf5.codecs.PackedBlock`.
    """
    pack = partial(
        _pack_task,
        origin=(int(origin[0]), int(origin[1])),
        chunk_shape=tuple(dset.chunks),
        dtype=dset.dtype,
        level=int(level),
        codec=codec
        or _codecs.fastest_codec(level, int(np.prod(dset.chunks)) * dset.dtype.itemsize),
        keep_raw=keep_raw,
        rows=rows,
    )
    if rows is not None and arr.numblocks[0] != 1:
        raise ValueError("packing with a row order needs full-height blocks")
    return arr.map_blocks(
        pack,
        chunks=tuple((1,) * n for n in arr.numblocks),
        dtype=object,
        meta=np.empty((0, 0), dtype=object),
    )

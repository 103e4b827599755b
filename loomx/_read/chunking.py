"""The chunking policy: dask blocks of layers as whole multiples of their HDF5 chunks,
about :data:`BLOCK_BYTES` raw each, and users' ``chunks`` arguments resolved per dim.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import dask
import numpy as np
from dask.array.core import normalize_chunks

__all__ = ["BLOCK_BYTES", "band_width", "block_bytes", "default_chunks", "resolve_chunks"]

BLOCK_BYTES = 16 * 2**20
"""Target raw size of one dask block of a layer, read or written (see :func:`block_bytes`).

16 MiB rather than dask's 128 MiB default: a block's NaN check, reductions and packing then
run in cache, and blocks stay below glibc's largest ``mmap`` threshold (32 MiB), so freed
blocks are reused instead of every new one paying page faults (measured in
``benchmarks/README.md``: reductions 1.27-1.51x faster than with 64 MiB blocks)."""


def block_bytes() -> int:
    """Raw bytes per dask block of a layer: :data:`BLOCK_BYTES`, or dask's
    ``array.chunk-size`` setting when that is smaller (``dask.config.set`` changes it)."""
    configured = dask.utils.parse_bytes(dask.config.get("array.chunk-size"))
    return int(min(BLOCK_BYTES, configured))


def band_width(
    length: int, itemsize: int, step: int | None = None, *, split_step: bool = False
) -> int:
    """Lines (rows or columns) of ``length`` items per band of whole lines: about
    :func:`block_bytes` raw, a whole multiple of ``step`` (the HDF5 chunk's or the current
    block's extent across the lines; default 1).

    When one step alone holds more than :func:`block_bytes`, the band is one step (each
    HDF5 chunk is still read once), or with ``split_step`` as many lines as fit (at least
    one: memory stays bounded, chunks may be read more than once).

    Examples
    --------
    >>> band_width(1000, 4, 64)  # columns of 1000 float32 values: 4000 bytes each
    4160
    >>> band_width(10**7, 8, 64), band_width(10**7, 8, 64, split_step=True)
    (64, 1)
    """
    step = max(int(step or 1), 1)
    width = max(1, block_bytes() // max(1, int(length) * int(itemsize)))
    if width < step and split_step:
        return width
    return max(step, width // step * step)


def default_chunks(
    shape: Sequence[int],
    dtype: np.dtype,
    hdf5_chunks: Sequence[int] | None,
    target_bytes: int | None = None,
) -> tuple[int, ...]:
    """Dask chunk shape: whole multiples of the HDF5 chunks, about ``target_bytes`` raw
    (default :func:`block_bytes`).

    Contiguous datasets are treated as stored in full rows (bands of whole rows).
    """
    shape = tuple(int(s) for s in shape)
    if not shape or any(s == 0 for s in shape):
        return tuple(max(s, 1) for s in shape)
    base = tuple(hdf5_chunks) if hdf5_chunks else (1,) * (len(shape) - 1) + (shape[-1],)
    limit = block_bytes() if target_bytes is None else target_bytes
    return _auto_chunks(shape, np.dtype(dtype), tuple(int(b) for b in base), int(limit))


@functools.lru_cache(maxsize=256)
def _auto_chunks(
    shape: tuple[int, ...], dtype: np.dtype, base: tuple[int, ...], limit: int
) -> tuple[int, ...]:
    """:func:`default_chunks` of a non-empty shape (a file's layers share one: cached)."""
    chunks = normalize_chunks("auto", shape=shape, dtype=dtype, previous_chunks=base, limit=limit)
    out = []
    for size, dim_chunks, b in zip(shape, chunks, base, strict=True):
        c = max(dim_chunks[0], 1)
        c = max(b, (c // b) * b) if c < size else size
        out.append(min(c, size))
    return tuple(out)


def resolve_chunks(
    chunks: int | str | dict[str, Any],
    dims: Sequence[str],
    preferred: dict[str, int],
    shape: Sequence[int],
) -> dict[str, int]:
    """Per-dim chunk sizes from a user's ``chunks`` argument (``-1`` = whole dim)."""
    if isinstance(chunks, str):
        if chunks != "auto":
            raise ValueError(f"chunks must be 'auto', an int or a dict, found {chunks!r}")
        chunks = {}
    if isinstance(chunks, int):
        chunks = dict.fromkeys(dims, chunks)
    if not isinstance(chunks, dict):
        raise ValueError(f"chunks must be 'auto', an int or a dict, found {chunks!r}")
    unknown = set(chunks) - set(dims)
    if unknown:
        raise ValueError(f"chunks names dims {sorted(unknown)} that are not in {tuple(dims)}")
    out = {}
    for dim, size in zip(dims, shape, strict=True):
        value = chunks.get(dim, "auto")
        if not (value in ("auto", None) or isinstance(value, int | np.integer)):
            raise ValueError(f"chunks[{dim!r}] must be an int, -1 or 'auto', found {value!r}")
        if value in ("auto", None):
            value = preferred[dim]
        elif value == -1:
            value = max(size, 1)
        out[dim] = int(value)
    return out

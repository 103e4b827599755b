"""isal's deflate as a batch kernel: many chunks compressed in one compiled call.

The ``isal`` wheel's extension modules export ISA-L's C API; ``isal_deflate_stateless``
compresses one whole buffer to a zlib stream (``gzip_flag = IGZIP_ZLIB``) through an
``isal_zstream``, which this module lays out in a byte array at ISA-L 2.32's offsets (checked
when loaded: ``isal_deflate_stateless_init`` must leave the fields where they are expected,
else the kernel stays off).  :func:`deflate_tiles` compresses a batch of equal-sized tiles
(HDF5 chunks) without the GIL; callers choose it or libdeflate's
:func:`loomx._hdf5.kernels.encode_chunks` by measured speed (:mod:`loomx._hdf5.codecs`).

Status codes of :func:`deflate_tiles` (``status[0]``; ``status[1]`` the tile, ``status[2]``
isal's result): 0 success, 1 isal failed (an output too small: ``STATELESS_OVERFLOW``).
"""

from __future__ import annotations

import ctypes
import glob
import os
from typing import Any

import numpy as np

from loomx._hdf5 import kernels as _kernels

__all__ = ["DEFLATE_FAILED", "available", "deflate_tiles", "isal_level", "tile_bound"]

DEFLATE_FAILED = 1
_IGZIP_ZLIB = 3
_STREAM_BYTES = 1 << 18
"""Room for an ``isal_zstream`` (its internal state, history and hash: about 100 KB)."""
_LEVEL_BUF_BYTES = 1 << 21
"""Room for the largest level buffer isal asks for (level 3, ``ISAL_DEF_LVL3_EXTRA_LARGE``)."""

# byte offsets in struct isal_zstream (x86-64 and aarch64, ISA-L 2.30-2.32)
_NEXT_IN, _AVAIL_IN, _NEXT_OUT, _AVAIL_OUT, _TOTAL_OUT = 0, 8, 16, 24, 28
_HUFFTABLES, _LEVEL, _LEVEL_BUF_SIZE, _LEVEL_BUF = 32, 40, 44, 48
_END_OF_STREAM, _FLUSH, _GZIP_FLAG, _HIST_BITS = 56, 58, 60, 62


def _library() -> str | None:
    try:
        import isal
    except ImportError:
        return None
    found = glob.glob(os.path.join(os.path.dirname(isal.__file__), "igzip_lib*"))
    libraries = [p for p in found if p.endswith((".so", ".pyd", ".dylib"))]
    return libraries[0] if libraries else None


def _layout_matches(lib: ctypes.CDLL) -> bool:
    """``isal_deflate_stateless_init`` sets the fields at the offsets this module uses."""
    stream = np.full(_STREAM_BYTES, 0xA5, np.uint8)
    lib.isal_deflate_stateless_init(ctypes.c_void_p(stream.ctypes.data))
    header = stream[:64]
    pointers = header.view(np.uint64)
    words = header.view(np.uint32)
    halves = header.view(np.uint16)
    return bool(
        pointers[_HUFFTABLES // 8] != 0
        and pointers[_HUFFTABLES // 8] != 0xA5A5A5A5A5A5A5A5
        and words[_LEVEL // 4] == 0
        and words[_LEVEL_BUF_SIZE // 4] == 0
        and pointers[_LEVEL_BUF // 8] == 0
        and all(halves[k // 2] == 0 for k in (_END_OF_STREAM, _FLUSH, _GZIP_FLAG, _HIST_BITS))
    )


def _load() -> dict[str, Any] | None:
    if not _kernels.available():
        return None
    path = _library()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        if not hasattr(lib, "isal_deflate_stateless") or not _layout_matches(lib):
            return None
    except (OSError, RuntimeError):
        return None
    return _kernels.external_functions(
        path,
        lambda types: {
            "init": types.ExternalFunction("isal_deflate_stateless_init", types.void(types.uintp)),
            "deflate": types.ExternalFunction("isal_deflate_stateless", types.int32(types.uintp)),
        },
    )


_LIB = _load()


def available() -> bool:
    """Whether :func:`deflate_tiles` runs here (numba, ``deflate`` and ``isal`` installed,
    ISA-L's stream laid out as expected)."""
    return _LIB is not None


def isal_level(level: int) -> int:
    """isal's level (1-3) for a zlib level (1-9): 1-3 -> 1, 4-6 -> 2, 7-9 -> 3."""
    return min(3, (int(level) + 2) // 3)


def tile_bound(nbytes: int) -> int:
    """Bytes of output :func:`deflate_tiles` gives each tile of ``nbytes``: stored blocks
    (5 bytes per 65,535), the zlib header and checksum, and slack."""
    return int(nbytes + 5 * (nbytes // 65535 + 1) + 64)


if _LIB is not None:
    _init, _deflate = _LIB["init"], _LIB["deflate"]

    @_kernels.compiled
    def _deflate_tiles(
        tiles: np.ndarray,
        level: int,
        bound: int,
        out: np.ndarray,
        bounds: np.ndarray,
        stream: np.ndarray,
        level_buf: np.ndarray,
        status: np.ndarray,
    ) -> None:  # pragma: no cover - compiled
        n, nbytes = tiles.shape
        header = stream[:64]
        pointers = header.view(np.uint64)
        words = header.view(np.uint32)
        halves = header.view(np.uint16)
        pos = 0
        status[0] = 0
        for k in range(n):
            _init(stream.ctypes.data)
            pointers[_NEXT_IN // 8] = tiles.ctypes.data + k * tiles.strides[0]
            words[_AVAIL_IN // 4] = nbytes
            pointers[_NEXT_OUT // 8] = out.ctypes.data + pos
            words[_AVAIL_OUT // 4] = bound
            words[_LEVEL // 4] = level
            words[_LEVEL_BUF_SIZE // 4] = level_buf.size
            pointers[_LEVEL_BUF // 8] = level_buf.ctypes.data
            halves[_END_OF_STREAM // 2] = 1
            halves[_GZIP_FLAG // 2] = _IGZIP_ZLIB
            result = _deflate(stream.ctypes.data)
            if result != 0:
                status[0], status[1], status[2] = DEFLATE_FAILED, k, result
                return
            bounds[k] = pos
            pos += words[_TOTAL_OUT // 4]
        bounds[n] = pos


def deflate_tiles(tiles: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Compress each row of ``tiles`` (a C-ordered ``(n, nbytes)`` uint8 array) to a zlib
    stream with isal, in one call without the GIL.

    Parameters
    ----------
    tiles
        One chunk's bytes per row.
    level
        zlib level 1-9 (mapped by :func:`isal_level`).

    Returns
    -------
    (data, bounds)
        The streams back to back, and where each starts (``n + 1`` offsets).

    Raises
    ------
    ValueError
        ``tiles`` is not 2-D, or ``level`` is not 1-9.
    RuntimeError
        isal failed on a tile (its result code named).

    Examples
    --------
    >>> data, bounds = deflate_tiles(np.zeros((4, 16384), np.uint8), 1)  # doctest: +SKIP
    >>> zlib.decompress(data[bounds[0] : bounds[1]])  # 16384 zero bytes  # doctest: +SKIP
    """
    if not available():
        raise RuntimeError("the isal kernel is not available here")
    if not 1 <= level <= 9:
        raise ValueError(f"deflate level must be in 1-9 for isal; got {level}")
    if np.ndim(tiles) != 2:
        raise ValueError(f"tiles must be a 2-D (tiles, bytes) array; got shape {np.shape(tiles)}")
    tiles = np.ascontiguousarray(tiles, dtype=np.uint8)
    n, nbytes = tiles.shape
    bound = tile_bound(nbytes)
    out = np.empty(max(1, n * bound), np.uint8)
    bounds = np.zeros(n + 1, np.int64)
    stream = _aligned(_STREAM_BYTES)
    level_buf = np.empty(_LEVEL_BUF_BYTES, np.uint8)
    status = np.zeros(3, np.int64)
    _deflate_tiles(tiles, isal_level(level), bound, out, bounds, stream, level_buf, status)
    if status[0]:
        raise RuntimeError(
            f"isal_deflate_stateless failed on tile {int(status[1])} of {n} "
            f"({nbytes} bytes): result {int(status[2])}"
        )
    return out[: bounds[-1]], bounds


def _aligned(nbytes: int, alignment: int = 64) -> np.ndarray:
    """A zeroed uint8 array of ``nbytes`` starting on an ``alignment``-byte boundary (the
    stream's internal buffers are declared 32-byte aligned)."""
    raw = np.zeros(nbytes + alignment, np.uint8)
    skip = -raw.ctypes.data % alignment
    return raw[skip : skip + nbytes]

"""HDF5's filter pipeline in Python: the inflaters installed, the shuffle filter, the
Fletcher-32 checksum, and :func:`decode_chunks`, the compiled kernel's twin for the first
small reads of a process.

The compiled kernel (:func:`loomx._hdf5.kernels.decode_chunks`) decodes a chunk in a few
microseconds, but the first call in a process pays numba's initialisation, even with every
kernel cached on disk (:data:`loomx._hdf5.first_calls.LOAD_SECONDS`), more than decoding
the 4,380 chunks of ten random columns of the seed file takes in Python.  So a process's
first small reads go through the twin here, within the budget of
:func:`loomx._hdf5.first_calls.runs_in_python_first`; the first larger read loads the kernel,
and from then on every read is compiled.  The twin takes the kernel's arguments, checks
them with :func:`loomx._hdf5.kernels.check_decode`, writes the same bytes and reports
errors in the same ``status`` codes.

Examples
--------
>>> takes_python_path(4096)  # before anything compiled has run here  # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from loomx._hdf5 import first_calls as _first_calls
from loomx._hdf5 import kernels as _kernels
from loomx._hdf5.filters import DEFLATE, FLETCHER32
from loomx.errors import LoomFileError

__all__ = [
    "BYTE_SECONDS",
    "DEFAULT_INFLATER",
    "INFLATE",
    "INFLATERS",
    "check_fletcher32",
    "decode_chunks",
    "fletcher32",
    "takes_python_path",
    "unshuffle",
]

Inflate = Callable[[Any, int], Any]


def _find_inflaters() -> dict[str, Inflate]:
    found: dict[str, Inflate] = {}
    with contextlib.suppress(ImportError):
        import deflate

        found["libdeflate"] = deflate.zlib_decompress
    with contextlib.suppress(ImportError):
        from isal import isal_zlib

        found["isal"] = lambda data, size, f=isal_zlib.decompress: f(data, 15, max(size, 1))
    found["zlib"] = lambda data, size: zlib.decompress(data, 15, max(size, 1))
    return found


INFLATE: dict[str, Inflate] = _find_inflaters()
"""``name -> inflate(data, size)`` of every inflater installed, fastest first (``size``: the
expected output size; libdeflate refuses a stream that inflates to more)."""
INFLATERS: tuple[str, ...] = tuple(INFLATE)
"""Names of the inflaters installed, fastest first."""
DEFAULT_INFLATER: str = INFLATERS[0]
"""The inflater of the Python paths unless told otherwise."""


def unshuffle(itemsize: int, buf: Any) -> np.ndarray:
    """Undo HDF5's shuffle filter: the i-th bytes of every element are stored together."""
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


def fletcher32(data: np.ndarray) -> int:
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


def _checksum_matches(a: np.ndarray) -> bool:
    stored = int.from_bytes(a[-4:].tobytes(), "little")
    value = fletcher32(a[:-4])
    swapped = ((value & 0x00FF00FF) << 8) | ((value >> 8) & 0x00FF00FF)
    return stored in (value, swapped)


def check_fletcher32(buf: Any) -> np.ndarray:
    """The data of a chunk stored with its Fletcher-32 checksum, after checking it."""
    a = np.frombuffer(buf, np.uint8)
    if a.size < 4:
        raise LoomFileError("chunk too short for its fletcher32 checksum")
    if not _checksum_matches(a):
        raise LoomFileError("data error detected by fletcher32 checksum")
    return a[:-4]


BYTE_SECONDS = 3e-9
"""Python's time per decoded byte in :func:`decode_chunks` (22-53 us for a 16 KB chunk,
5 ms for a 2 MB one; 2-core machine)."""


def takes_python_path(nbytes: int) -> bool:
    """Whether a read that decodes ``nbytes`` bytes of chunks goes through
    :func:`decode_chunks` here rather than the compiled kernel
    (:func:`loomx._hdf5.first_calls.runs_in_python_first`)."""
    return _first_calls.runs_in_python_first(nbytes * BYTE_SECONDS)


def _inflate_status(data: np.ndarray, cap: int) -> tuple[int, int]:
    """``(code, detail)`` for a stream libdeflate would not inflate into ``cap`` bytes:
    too long for the space, or not a valid stream (libdeflate's ``BAD_DATA``)."""
    with contextlib.suppress(zlib.error):
        if len(zlib.decompressobj().decompress(data, cap + 1)) > cap:
            return _kernels.INFLATE_FAILED, _kernels.LIBDEFLATE_INSUFFICIENT_SPACE
    return _kernels.INFLATE_FAILED, 1


def _decode_one(
    cur: np.ndarray, mask: int, codes: np.ndarray, params: np.ndarray, cap: int, inflate: Inflate
) -> tuple[np.ndarray, int, int]:
    """One chunk's stored bytes -> ``(bytes, code, detail)``, filters undone in reverse."""
    for f in range(codes.size - 1, -1, -1):
        if (mask >> f) & 1:
            continue
        code = int(codes[f])
        if code == FLETCHER32:
            if cur.size < 4:
                return cur, _kernels.TOO_SHORT, cur.size
            if not _checksum_matches(cur):
                return cur, _kernels.BAD_CHECKSUM, 0
            cur = cur[:-4]
        elif code == DEFLATE:
            try:
                out = inflate(cur, cap)
            except Exception:
                return cur, *_inflate_status(cur, cap)
            if len(out) > cap:
                return cur, _kernels.INFLATE_FAILED, _kernels.LIBDEFLATE_INSUFFICIENT_SPACE
            cur = np.frombuffer(out, np.uint8)
        else:
            if cur.size > cap:  # raw bytes (deflate skipped by the mask) larger than a chunk
                return cur, _kernels.BAD_SIZE, cur.size
            cur = unshuffle(int(params[f]), cur)
    return cur, 0, 0


def decode_chunks(*args: Any) -> None:
    """:func:`loomx._hdf5.kernels.decode_chunks` in Python, chunk by chunk with the GIL held:
    the same arguments, checks, output bytes and ``status`` codes.

    Examples
    --------
    >>> decode_chunks(src, starts, lengths, masks, codes, params, 64, 256, 4,
    ...               place, dst, status, 0, *(np.zeros(0, np.int64),) * 4)  # doctest: +SKIP
    """
    _kernels.check_decode(*args)
    (src, starts, lengths, masks, codes, params, chunk_rows, chunk_row_bytes, itemsize) = args[:9]
    place, dst, status, pick_axis, group, pick_ptr, pick_in, pick_out = args[9:]
    nbytes = chunk_rows * chunk_row_bytes
    cap = nbytes + 4 * codes.size
    inflate = INFLATE[DEFAULT_INFLATER]
    lanes = np.arange(itemsize)
    status[0] = 0
    for k in range(starts.size):
        stored = src[starts[k] : starts[k] + lengths[k]]
        cur, code, detail = _decode_one(stored, int(masks[k]), codes, params, cap, inflate)
        if not code and cur.size != nbytes:
            code, detail = _kernels.BAD_SIZE, cur.size
        if code:
            status[0], status[1], status[2] = code, k, detail
            return
        chunk = cur.reshape(chunk_rows, chunk_row_bytes)
        out_row, out_col, in_row, in_col, rows, width = (int(v) for v in place[k])
        if pick_axis:
            picks = slice(pick_ptr[group[k]], pick_ptr[group[k] + 1])
            if pick_axis == 1:
                to = (pick_out[picks, None] * itemsize + lanes).ravel()
                at = (pick_in[picks, None] * itemsize + lanes).ravel()
                dst[out_row : out_row + rows, to] = chunk[in_row : in_row + rows, at]
            else:
                dst[pick_out[picks], out_col : out_col + width] = chunk[
                    pick_in[picks], in_col : in_col + width
                ]
            continue
        dst[out_row : out_row + rows, out_col : out_col + width] = chunk[
            in_row : in_row + rows, in_col : in_col + width
        ]

"""Compiled batch kernels: many HDF5 chunks per call, without the GIL.

Reading or writing a layer chunk by chunk from Python holds the GIL for every chunk (a
20000 x 30000 loompy file has 146 797 chunks of 64 x 64), so threads barely overlap.  The
kernels here take every chunk of one read (or one written block) in a single call compiled
with numba, ``nogil=True``: inflating or deflating through libdeflate's C API (exported by
the ``deflate`` wheel, loaded with ``llvmlite.binding.load_library_permanently`` and called
by symbol name, so numba's on-disk cache stays valid across processes), HDF5's shuffle
filter, its Fletcher-32 checksum, and the copy of each chunk's part into the output.

:func:`available` says whether the kernels can run here; without numba or the ``deflate``
wheel, callers use their Python paths (``ChunkIndex.read`` with an explicit inflater,
``pack_block`` with another codec).  ``LOOMX_KERNELS=0`` in the environment turns the
kernels off, for comparisons.

Error codes of :func:`decode_chunks` (``status[0]``; ``status[1]`` is the chunk,
``status[2]`` a detail): 1 inflate failed (libdeflate's result), 2 decoded size differs from
the chunk's (the size found), 3 Fletcher-32 mismatch, 4 chunk shorter than its checksum.

Bounds: the compiled code indexes raw pointers, and the chunk index (offsets, sizes, filter
masks) comes from the file.  :func:`decode_chunks` and :func:`encode_chunks` are the only
entries: each checks every offset, size and shape it is given against the buffers
(:func:`check_decode`, :func:`check_encode`) before the compiled call, and raises
:class:`~loomx.errors.LoomFileError` instead; what only decoding can tell (the size a chunk
inflates to, with filters skipped by its mask) is checked inside, before it is used.
"""

from __future__ import annotations

import ctypes
import os
from functools import partial
from typing import Any

import numpy as np

from loomx._hdf5 import first_calls as _first_calls
from loomx._hdf5.filters import DEFLATE, FLETCHER32, SHUFFLE
from loomx.errors import LoomFileError

__all__ = [
    "BAD_CHECKSUM",
    "BAD_SIZE",
    "INFLATE_FAILED",
    "LIBDEFLATE_INSUFFICIENT_SPACE",
    "TOO_SHORT",
    "available",
    "check_decode",
    "check_encode",
    "compiled",
    "cython_function",
    "decode_chunks",
    "encode_bound",
    "encode_chunks",
    "load",
]

INFLATE_FAILED, BAD_SIZE, BAD_CHECKSUM, TOO_SHORT = 1, 2, 3, 4
_SYMBOLS = (
    "alloc_decompressor",
    "free_decompressor",
    "zlib_decompress",
    "alloc_compressor",
    "free_compressor",
    "zlib_compress",
    "zlib_compress_bound",
)
LIBDEFLATE_INSUFFICIENT_SPACE = 3
"""libdeflate's result when a stream inflates to more bytes than the space given."""


def _load() -> dict[str, Any] | None:
    if os.environ.get("LOOMX_KERNELS", "1") == "0":
        return None
    try:
        import deflate
        import llvmlite.binding as llvm
        import numba
        from numba import types
    except ImportError:
        return None
    libraries = extension_files(deflate)
    if not libraries:
        return None
    try:
        exported = ctypes.CDLL(libraries[0])
        if not all(hasattr(exported, f"libdeflate_{name}") for name in _SYMBOLS):
            return None  # an old wheel that does not export libdeflate's C API
        llvm.load_library_permanently(libraries[0])
    except (OSError, RuntimeError):
        return None
    u, i32 = types.uintp, types.int32
    fns = {
        "alloc_decompressor": types.ExternalFunction("libdeflate_alloc_decompressor", u()),
        "free_decompressor": types.ExternalFunction("libdeflate_free_decompressor", types.void(u)),
        "zlib_decompress": types.ExternalFunction(
            "libdeflate_zlib_decompress", i32(u, u, u, u, u, u)
        ),
        "alloc_compressor": types.ExternalFunction("libdeflate_alloc_compressor", u(i32)),
        "free_compressor": types.ExternalFunction("libdeflate_free_compressor", types.void(u)),
        "zlib_compress": types.ExternalFunction("libdeflate_zlib_compress", u(u, u, u, u, u)),
        "zlib_compress_bound": types.ExternalFunction("libdeflate_zlib_compress_bound", u(u, u)),
        "memcpy": types.ExternalFunction("memcpy", u(u, u, u)),
    }
    return {"numba": numba, **fns}


def extension_files(package: Any) -> list[str]:
    """The compiled extension modules of ``package``: the package itself when it is one
    (``deflate`` 0.7: ``deflate.so``), else its submodules that are (``deflate._deflate``),
    found through the imported modules, not by guessing file names."""
    import importlib.machinery
    import types as _types

    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    modules = [package, *(v for v in vars(package).values() if isinstance(v, _types.ModuleType))]
    files = [getattr(m, "__file__", None) or "" for m in modules]
    return [f for f in dict.fromkeys(files) if f.endswith(suffixes)]


def external_functions(path: str, declare: Any) -> dict[str, Any] | None:
    """C functions of the shared library at ``path`` for compiled kernels to call:
    ``declare(numba.types)`` returns ``{key: types.ExternalFunction(symbol, signature)}``;
    None where numba is missing or the library cannot be loaded."""
    try:
        import llvmlite.binding as llvm
        from numba import types
    except ImportError:
        return None
    try:
        llvm.load_library_permanently(path)
    except (OSError, RuntimeError):
        return None
    return declare(types)


_LIB = _load()


def available() -> bool:
    """Whether the compiled kernels run in this process (numba and ``deflate`` installed,
    ``LOOMX_KERNELS`` not ``0``)."""
    return _LIB is not None


def load() -> None:
    """Load the compiled :func:`decode_chunks` now (an empty call): every read after it is
    compiled (:func:`loomx._hdf5.first_calls.runs_in_python_first`)."""
    if available():
        none = np.zeros(0, np.int64)
        place = np.zeros((0, 6), np.int64)
        dst = np.zeros((1, 4), np.uint8)
        args = (np.zeros(0, np.uint8), none, none, none, none, none, 1, 4, 4, place, dst)
        decode_chunks(*args, np.zeros(3, np.int64), 0, none, none, none, none)


def compiled(function: Any = None, *, fastmath: Any = False, cache: bool = True) -> Any:
    """``numba.njit(nogil=True, fastmath=fastmath)``, cached on disk where numba finds a
    writable place (unless ``cache`` is false: a function that calls a C function pointer
    cannot be cached): the decorator of every compiled loop in loomx (the one place numba
    is imported); without numba the function stays plain Python."""
    if function is None:
        return partial(compiled, fastmath=fastmath, cache=cache)
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        return function
    if not cache:
        dispatcher = numba.njit(nogil=True, fastmath=fastmath)(function)
    else:
        try:
            dispatcher = numba.njit(nogil=True, cache=True, fastmath=fastmath)(function)
        except RuntimeError:  # no writable cache location: compile once per process
            dispatcher = numba.njit(nogil=True, fastmath=fastmath)(function)
    return _first_calls.register(dispatcher)


def cython_function(module: str, name: str, n_pointers: int) -> Any:
    """The C function ``name`` that Cython ``module`` exports (for example SciPy's
    ``scipy.linalg.cython_blas``), as a ctypes function of ``n_pointers`` pointer arguments
    returning nothing: callable from :func:`compiled` code, which then releases the GIL."""
    import ctypes

    from numba.extending import get_cython_function_address

    address = get_cython_function_address(module, name)
    return ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * n_pointers)(address)


if _LIB is not None:
    _njit = compiled
    _alloc_d, _free_d = _LIB["alloc_decompressor"], _LIB["free_decompressor"]
    _inflate = _LIB["zlib_decompress"]
    _alloc_c, _free_c = _LIB["alloc_compressor"], _LIB["free_compressor"]
    _deflate, _bound = _LIB["zlib_compress"], _LIB["zlib_compress_bound"]
    _memcpy = _LIB["memcpy"]
else:  # pragma: no cover - exercised only without numba or deflate

    def _njit(f: Any) -> Any:
        return f


@_njit
def _fletcher32(buf: np.ndarray, n: int) -> int:  # pragma: no cover - compiled
    """HDF5's ``H5_checksum_fletcher32`` of ``buf[:n]`` (sums fit 32 bits as in HDF5)."""
    sum1 = 0
    sum2 = 0
    words = n // 2
    p = 0
    while words:
        t = min(words, 360)
        words -= t
        for _ in range(t):
            sum1 += (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])
            sum2 += sum1
            p += 2
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    if n % 2:
        sum1 += np.int64(buf[p]) << 8
        sum2 += sum1
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
    sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    return (sum2 << 16) | sum1


@_njit
def _unshuffle(src: np.ndarray, n: int, size: int, dst: np.ndarray) -> None:  # pragma: no cover
    count = n // size
    for j in range(size):
        base = j * count
        for i in range(count):
            dst[i * size + j] = src[base + i]
    for k in range(count * size, n):
        dst[k] = src[k]


@_njit
def _decode_compiled(
    src: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    masks: np.ndarray,
    codes: np.ndarray,
    params: np.ndarray,
    chunk_rows: int,
    chunk_row_bytes: int,
    itemsize: int,
    place: np.ndarray,
    dst: np.ndarray,
    status: np.ndarray,
    pick_axis: int,
    group: np.ndarray,
    pick_ptr: np.ndarray,
    pick_in: np.ndarray,
    pick_out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Decode stored chunks and copy their parts into ``dst``, all in one call.

    Parameters
    ----------
    src : uint8 array
        The stored bytes of every chunk (runs of the file, concatenated).
    starts, lengths : int64 arrays
        Where each chunk's stored bytes lie in ``src``.
    masks : int64 array
        Each chunk's HDF5 filter mask (bit ``i`` set: filter ``i`` was skipped).
    codes, params : int64 arrays
        The filter pipeline in the order HDF5 applied it when writing (1 deflate, 2 shuffle,
        3 fletcher32), and each filter's parameter (shuffle: element size).
    chunk_rows, chunk_row_bytes, itemsize : int
        A chunk seen as ``chunk_rows`` rows of ``chunk_row_bytes`` bytes.
    place : int64 array of shape (n, 6)
        Per chunk: output row and byte column, chunk row and byte column, rows and bytes
        per row to copy.
    dst : 2-D uint8 array
        The output, as rows of bytes.
    status : int64 array of 3
        Set to ``(code, chunk, detail)`` on the first error; ``code`` 0 means success.
    pick_axis : int
        0: copy each chunk's box (``place``; the pick arrays are unused, may be empty).
        1: copy picked columns: the chunk's columns
        ``pick_in[pick_ptr[g]:pick_ptr[g + 1]]`` (``g = group[k]``) go to output columns
        ``pick_out[...]``, rows as ``place`` says (its column fields are unused).  2: the
        same with rows picked, columns as ``place`` says.
    """
    nbytes = chunk_rows * chunk_row_bytes
    cap = nbytes + 4 * codes.size
    a = np.empty(cap, np.uint8)
    b = np.empty(cap, np.uint8)
    actual = np.zeros(1, np.int64)  # a size_t, written by libdeflate
    decompressor = _alloc_d()
    status[0] = 0
    for k in range(starts.size):
        cur = src[starts[k] : starts[k] + lengths[k]]
        n = lengths[k]
        spare = a
        for f in range(codes.size - 1, -1, -1):
            if (masks[k] >> f) & 1:
                continue
            code = codes[f]
            if code == FLETCHER32:
                if n < 4:
                    status[0], status[1], status[2] = TOO_SHORT, k, n
                    break
                stored = (
                    np.int64(cur[n - 4])
                    | (np.int64(cur[n - 3]) << 8)
                    | (np.int64(cur[n - 2]) << 16)
                    | (np.int64(cur[n - 1]) << 24)
                )
                value = _fletcher32(cur, n - 4)
                swapped = ((value & 0x00FF00FF) << 8) | ((value >> 8) & 0x00FF00FF)
                if stored != value and stored != swapped:
                    status[0], status[1], status[2] = BAD_CHECKSUM, k, 0
                    break
                n -= 4
            elif code == DEFLATE:
                result = _inflate(
                    decompressor,
                    cur.ctypes.data,
                    n,
                    spare.ctypes.data,
                    cap,
                    actual.ctypes.data,
                )
                if result != 0:
                    status[0], status[1], status[2] = INFLATE_FAILED, k, result
                    break
                n = actual[0]
                cur = spare
                spare = b if spare is a else a
            else:
                if n > cap:  # raw bytes (deflate skipped by the mask) larger than a chunk
                    status[0], status[1], status[2] = BAD_SIZE, k, n
                    break
                _unshuffle(cur, n, params[f], spare)
                cur = spare
                spare = b if spare is a else a
        if status[0]:
            break
        if n != nbytes:
            status[0], status[1], status[2] = BAD_SIZE, k, n
            break
        out_row, out_col, in_row, in_col = place[k, 0], place[k, 1], place[k, 2], place[k, 3]
        rows, width = place[k, 4], place[k, 5]
        stride = dst.strides[0]
        if pick_axis == 1:
            for p in range(pick_ptr[group[k]], pick_ptr[group[k] + 1]):
                to = pick_out[p] * itemsize
                at = in_row * chunk_row_bytes + pick_in[p] * itemsize
                for r in range(rows):
                    for i in range(itemsize):
                        dst[out_row + r, to + i] = cur[at + r * chunk_row_bytes + i]
            continue
        if pick_axis == 2:
            for p in range(pick_ptr[group[k]], pick_ptr[group[k] + 1]):
                _memcpy(
                    dst.ctypes.data + pick_out[p] * stride + out_col,
                    cur.ctypes.data + pick_in[p] * chunk_row_bytes + in_col,
                    width,
                )
            continue
        to = dst.ctypes.data + out_row * stride + out_col
        src_at = cur.ctypes.data + in_row * chunk_row_bytes + in_col
        if width == chunk_row_bytes and width == stride:
            _memcpy(to, src_at, rows * width)
        else:
            for r in range(rows):
                _memcpy(to + r * stride, src_at + r * chunk_row_bytes, width)
    _free_d(decompressor)


@_njit
def _encode_compiled(
    values: np.ndarray,
    rows: np.ndarray,
    chunk_rows: int,
    chunk_row_bytes: int,
    level: int,
    out: np.ndarray,
    bounds: np.ndarray,
    zeros: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Cut a block into chunks (edge chunks zero-padded, as HDF5 stores them) and deflate
    each into ``out``, all in one call.

    Parameters
    ----------
    values : 2-D uint8 array
        The block as rows of bytes.
    rows : int64 array
        The block's rows in the order to pack them (``values[rows]``).
    chunk_rows, chunk_row_bytes : int
        The chunk shape in rows and bytes per row.
    level : int
        Deflate level.
    out : uint8 array
        Space for the compressed chunks: :func:`encode_bound` bytes per chunk.
    bounds : int64 array of (grid rows * grid columns + 1)
        Set to where each chunk's stream starts in ``out`` (row-major grid), and the end.
    zeros : uint8 array of (grid rows * grid columns)
        Set to 1 where a chunk is all zero bits.
    """
    height = rows.size
    width = values.shape[1]
    grid_rows = (height + chunk_rows - 1) // chunk_rows
    grid_cols = (width + chunk_row_bytes - 1) // chunk_row_bytes
    nbytes = chunk_rows * chunk_row_bytes
    tile = np.zeros(nbytes, np.uint8)
    compressor = _alloc_c(level)
    bound = _bound(compressor, nbytes)
    pos = 0
    for gr in range(grid_rows):
        for gc in range(grid_cols):
            k = gr * grid_cols + gc
            c0 = gc * chunk_row_bytes
            w = min(chunk_row_bytes, width - c0)
            h = min(chunk_rows, height - gr * chunk_rows)
            if w < chunk_row_bytes or h < chunk_rows:
                tile[:] = 0
            for r in range(h):
                src = values[rows[gr * chunk_rows + r]]
                tile[r * chunk_row_bytes : r * chunk_row_bytes + w] = src[c0 : c0 + w]
            nonzero = False
            for i in range(nbytes):
                if tile[i]:
                    nonzero = True
                    break
            zeros[k] = 0 if nonzero else 1
            bounds[k] = pos
            pos += np.int64(
                _deflate(compressor, tile.ctypes.data, nbytes, out.ctypes.data + pos, bound)
            )
    bounds[grid_rows * grid_cols] = pos
    _free_c(compressor)


@_njit
def encode_bound(level: int, chunk_nbytes: int) -> int:  # pragma: no cover - compiled
    """The most bytes :func:`encode_chunks` writes for one chunk of ``chunk_nbytes`` bytes."""
    compressor = _alloc_c(level)
    bound = _bound(compressor, chunk_nbytes)
    _free_c(compressor)
    return np.int64(bound)


# --------------------------------------------------------------------------- bounds


def _refuse(what: str) -> LoomFileError:
    return LoomFileError(
        f"a chunk read or write out of bounds was refused before the compiled kernel ran: "
        f"{what} (a damaged or crafted chunk index, or a wrong read plan)"
    )


def _int_array(name: str, a: np.ndarray, size: int | None = None, ndim: int = 1) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.int64 or a.ndim != ndim:
        raise _refuse(f"{name} must be a {ndim}-D int64 array")
    if size is not None and a.shape[0] != size:
        raise _refuse(f"{name} holds {a.shape[0]} entries, expected {size}")


def _within(name: str, values: np.ndarray, low: int, high: int) -> None:
    """Every value in ``low..high`` (inclusive)."""
    if values.size and (int(values.min()) < low or int(values.max()) > high):
        raise _refuse(
            f"{name} ranges {int(values.min())}..{int(values.max())}, expected {low}..{high}"
        )


def _byte_rows(name: str, a: np.ndarray) -> None:
    """A 2-D uint8 array whose rows are contiguous bytes, one after another."""
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 2:
        raise _refuse(f"{name} must be a 2-D uint8 array")
    spread = a.shape[1] > 1 and a.strides[1] != 1
    if spread or (a.shape[0] > 1 and a.shape[1] and a.strides[0] < a.shape[1]):
        raise _refuse(f"{name} must hold its rows as contiguous bytes (strides {a.strides})")


def _pick_tables(group, pick_ptr, pick_in, pick_out, n: int) -> None:  # type: ignore[no-untyped-def]
    _int_array("group", group, n)
    _int_array("pick_ptr", pick_ptr)
    _int_array("pick_in", pick_in)
    _int_array("pick_out", pick_out, pick_in.size)
    if pick_ptr.size < 1:
        raise _refuse("pick_ptr is empty")
    _within("group", group, 0, pick_ptr.size - 2)
    _within("pick_ptr", pick_ptr, 0, pick_in.size)
    if pick_ptr.size > 1 and (np.diff(pick_ptr) < 0).any():
        raise _refuse("pick_ptr decreases")


def check_decode(*args: Any) -> None:
    """Raise :class:`~loomx.errors.LoomFileError` unless every offset, size and shape given
    to :func:`decode_chunks` lies inside the buffers it reads and writes.

    Examples
    --------
    >>> check_decode(src, starts, lengths, ...)  # doctest: +SKIP
    """
    (src, starts, lengths, masks, codes, params, chunk_rows, chunk_row_bytes, itemsize) = args[:9]
    place, dst, status, pick_axis, group, pick_ptr, pick_in, pick_out = args[9:]
    if not isinstance(src, np.ndarray) or src.dtype != np.uint8 or src.ndim != 1:
        raise _refuse("src must be a 1-D uint8 array")
    if not src.flags.c_contiguous:
        raise _refuse("src must be contiguous")
    _int_array("starts", starts)
    n = starts.size
    _int_array("lengths", lengths, n)
    _int_array("masks", masks, n)
    _int_array("codes", codes)
    _int_array("params", params, codes.size)
    _int_array("place", place, n, ndim=2)
    _int_array("status", status)
    if status.size < 3:
        raise _refuse(f"status holds {status.size} entries, expected 3")
    if place.shape[1] != 6:
        raise _refuse(f"place has {place.shape[1]} columns, expected 6")
    _byte_rows("dst", dst)
    if min(chunk_rows, chunk_row_bytes, itemsize) < 1 or chunk_row_bytes % itemsize:
        raise _refuse(
            f"a chunk of {chunk_rows} rows of {chunk_row_bytes} bytes of {itemsize}-byte items"
        )
    _within("stored chunk starts", starts, 0, src.size)
    _within("stored chunk sizes", lengths, 0, src.size)
    if n and int((starts + lengths).max()) > src.size:
        k = int(np.argmax(starts + lengths))
        raise _refuse(
            f"chunk {k} lies at bytes {int(starts[k])}..{int(starts[k] + lengths[k])} of "
            f"{src.size} bytes read"
        )
    _within("filter codes", codes, DEFLATE, FLETCHER32)
    _within("shuffle element sizes", params[codes == SHUFFLE], 1, 1 << 20)
    _within("placement", place, 0, np.iinfo(np.int64).max // 4)
    out_row, out_col, in_row, in_col, rows, width = place.T
    rows_end, cols_end = dst.shape
    if pick_axis not in (0, 1, 2):
        raise _refuse(f"pick_axis {pick_axis}, expected 0, 1 or 2")
    if pick_axis != 2:
        _within("chunk rows copied", in_row + rows, 0, chunk_rows)
        _within("output rows written", out_row + rows, 0, rows_end)
    if pick_axis != 1:
        _within("chunk bytes copied", in_col + width, 0, chunk_row_bytes)
        _within("output bytes written", out_col + width, 0, cols_end)
    if pick_axis == 0:
        return
    _pick_tables(group, pick_ptr, pick_in, pick_out, n)
    if pick_axis == 1:
        _within("picked chunk columns", pick_in, 0, chunk_row_bytes // itemsize - 1)
        _within("picked output columns", pick_out, 0, cols_end // itemsize - 1)
    else:
        _within("picked chunk rows", pick_in, 0, chunk_rows - 1)
        _within("picked output rows", pick_out, 0, rows_end - 1)


def decode_chunks(*args: Any) -> None:
    """Decode stored chunks and copy their parts into ``dst``, all in one compiled call
    without the GIL, after :func:`check_decode`.  The arguments, in order: ``src, starts,
    lengths, masks, codes, params, chunk_rows, chunk_row_bytes, itemsize, place, dst,
    status, pick_axis, group, pick_ptr, pick_in, pick_out``, documented at the compiled
    kernel (``_decode_compiled``).

    Examples
    --------
    >>> decode_chunks(src, starts, lengths, masks, codes, params, 64, 256, 4,
    ...               place, dst, status, 0, *(np.zeros(0, np.int64),) * 4)  # doctest: +SKIP
    """
    check_decode(*args)
    _decode_compiled(*args)


def check_encode(*args: Any) -> None:
    """Raise :class:`~loomx.errors.LoomFileError` unless every index and size given to
    :func:`encode_chunks` lies inside its buffers (``out`` large enough for every chunk's
    worst case; ``args``: those of :func:`encode_chunks`)."""
    values, rows, chunk_rows, chunk_row_bytes, level, out, bounds, zeros = args
    _byte_rows("values", values)
    _int_array("rows", rows)
    _int_array("bounds", bounds)
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.ndim != 1:
        raise _refuse("out must be a 1-D uint8 array")
    if not isinstance(zeros, np.ndarray) or zeros.dtype != np.uint8 or zeros.ndim != 1:
        raise _refuse("zeros must be a 1-D uint8 array")
    if min(chunk_rows, chunk_row_bytes) < 1 or not 0 <= level <= 12:
        raise _refuse(f"chunks of {chunk_rows} x {chunk_row_bytes} bytes at level {level}")
    _within("rows", rows, 0, values.shape[0] - 1)
    grid = -(-rows.size // chunk_rows) * -(-values.shape[1] // chunk_row_bytes)
    if bounds.size < grid + 1 or zeros.size < grid:
        raise _refuse(f"bounds/zeros hold {bounds.size}/{zeros.size}, expected {grid + 1}/{grid}")
    need = grid * encode_bound(level, chunk_rows * chunk_row_bytes) if grid else 0
    if out.size < need:
        raise _refuse(f"out holds {out.size} bytes, the chunks may need {need}")


def encode_chunks(*args: Any) -> None:
    """Cut a block into chunks and deflate each into ``out`` in one compiled call without
    the GIL, after :func:`check_encode`.  The arguments, in order: ``values, rows,
    chunk_rows, chunk_row_bytes, level, out, bounds, zeros``, documented at the compiled
    kernel (``_encode_compiled``).

    Examples
    --------
    >>> encode_chunks(values, rows, 64, 256, 2, out, bounds, zeros)  # doctest: +SKIP
    """
    check_encode(*args)
    _encode_compiled(*args)

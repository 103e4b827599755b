"""Per-chunk codecs: a 2-D block cut into HDF5 chunks, each compressed to a zlib stream
exactly as HDF5's deflate filter stores it, and written with ``H5Dwrite_chunk``.

Any zlib stream inflates through HDF5's filter, so the codec is free.  The default,
``libdeflate``, packs all chunks of a block in one compiled call that releases the GIL
(:func:`loomx._hdf5.kernels.encode_chunks`); ``isal`` (from the ``fast`` extra) does the same
through ISA-L's stateless deflate (:func:`loomx._hdf5.deflaters.deflate_tiles`), or one
chunk per Python call where that kernel cannot run; ``zlib`` compresses one chunk per call
and gives the very bytes HDF5's own filter writes at the same level.  The writer picks
between the two batch kernels by their measured speed (:func:`fastest_codec`).  Plain
numpy and bytes, no dask: the writer runs these in its tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
import zlib
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from loomx._hdf5 import deflaters as _deflaters
from loomx._hdf5 import kernels as _kernels

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "compressor",
    "deflate_level",
    "fastest_codec",
    "pack_block",
    "write_packed",
]

Compress = Callable[[Any], bytes]


def _find_codecs() -> dict[str, Callable[[int], Compress]]:
    found: dict[str, Callable[[int], Compress]] = {}
    if _kernels.available():
        import deflate

        found["libdeflate"] = lambda level: partial(deflate.zlib_compress, compresslevel=level)
    with contextlib.suppress(ImportError):
        from isal import isal_zlib

        def isal(level: int, f: Any = isal_zlib.compress) -> Compress:
            # isal has levels 0-3 (0 is not "stored"); zlib 1-3 -> 1, 4-6 -> 2, 7-9 -> 3
            return partial(f, level=min(3, (level + 2) // 3))

        found["isal"] = isal
    found["zlib"] = lambda level: partial(zlib.compress, level=level)
    return found


_CODECS = _find_codecs()
#: Names of the installed codecs, fastest first.
CODECS: tuple[str, ...] = tuple(_CODECS)
#: The codec :func:`pack_block` uses unless told otherwise (the fastest installed).
DEFAULT_CODEC: str = CODECS[0]


def compressor(level: int, codec: str | None = None) -> Compress:
    """A function compressing one chunk's bytes to a zlib stream at deflate ``level``.

    Parameters
    ----------
    level
        Deflate level 0-9 as given to HDF5's filter; level 0 (stored) always uses zlib.
    codec
        One of :data:`CODECS`; default :data:`DEFAULT_CODEC`.

    Returns
    -------
    Callable
        ``f(buffer) -> bytes``.
    """
    if not 0 <= level <= 9:
        raise ValueError(f"deflate level must be in 0-9; got {level}")
    codec = codec or DEFAULT_CODEC
    if codec not in _CODECS:
        raise ValueError(f"codec {codec!r} is not installed; expected one of {CODECS}")
    return _CODECS["zlib" if level == 0 else codec](level)


@dataclasses.dataclass
class PackedBlock:
    """One dask block as finished HDF5 chunks.

    Attributes
    ----------
    origin
        Row and column of the block's first element in the layer.
    grid
        Number of HDF5 chunks along rows and columns in the block.
    chunks
        Compressed chunks in row-major order of the grid.
    zeros
        Positions in :attr:`chunks` of the chunks whose values are all zero bits.
    raw
        The block's values, kept only when the writer compares them with the disk.
    """

    origin: tuple[int, int]
    grid: tuple[int, int]
    chunks: list[bytes]
    zeros: frozenset[int] = frozenset()
    raw: np.ndarray | None = None

    def offsets(self, chunk_shape: tuple[int, int]) -> list[tuple[int, int]]:
        """Logical offset of each chunk in the layer, in the order of :attr:`chunks`."""
        (r0, c0), (nr, nc), (cr, cc) = self.origin, self.grid, chunk_shape
        return [(r0 + a * cr, c0 + b * cc) for a in range(nr) for b in range(nc)]


def _dense(block: Any, dtype: np.dtype) -> np.ndarray:
    if hasattr(block, "todense"):
        block = block.todense()
    elif hasattr(block, "toarray"):
        block = block.toarray()
    return np.asarray(block, dtype=dtype)


def pack_block(
    block: Any,
    origin: tuple[int, int],
    chunk_shape: tuple[int, int],
    dtype: np.dtype,
    level: int,
    codec: str | None = None,
    keep_raw: bool = False,
    rows: np.ndarray | None = None,
) -> PackedBlock:
    """Cut a 2-D block into HDF5 chunks and compress each.

    Parameters
    ----------
    block
        numpy (or sparse) values of the block; its first element sits at ``origin`` and its
        edges fall on chunk edges or on the layer's edges.
    origin
        Position of the block in the layer.
    chunk_shape
        The dataset's HDF5 chunk shape.
    dtype
        The dataset's dtype (the bytes are written in it).
    level, codec
        Deflate level and codec, see :func:`compressor`.
    keep_raw
        Keep the block's values in the result (for comparison with the disk).
    rows
        Row order: pack ``block[rows]`` (without making that copy).

    Returns
    -------
    PackedBlock
    """
    values = _dense(block, np.dtype(dtype))
    if rows is not None:
        rows = np.asarray(rows)
        if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= len(values))):
            raise ValueError(f"rows must index the block's {len(values)} rows")
    height = len(values) if rows is None else len(rows)
    width, (cr, cc) = values.shape[1], chunk_shape
    nr, nc = -(-height // cr), -(-width // cc)
    codec = codec or DEFAULT_CODEC
    if codec == "libdeflate" and level > 0 and _kernels.available():
        chunks, zeros = _encode_batched(values, rows, chunk_shape, level)
    elif codec == "isal" and level > 0 and _deflaters.available():
        chunks, zeros = _encode_isal(values, rows, chunk_shape, level)
    else:
        chunks, zeros = _encode_chunkwise(values, rows, chunk_shape, level, codec)
    raw = None
    if keep_raw:
        raw = values if rows is None else values[rows]
    return PackedBlock((int(origin[0]), int(origin[1])), (nr, nc), chunks, zeros, raw)


def _encode_batched(
    values: np.ndarray, rows: np.ndarray | None, chunk_shape: tuple[int, int], level: int
) -> tuple[list[bytes], frozenset[int]]:
    """Every chunk of the block compressed in one compiled call without the GIL."""
    height = len(values) if rows is None else len(rows)
    width, (cr, cc) = values.shape[1], chunk_shape
    n = -(-height // cr) * -(-width // cc)
    if n == 0:
        return [], frozenset()
    item = values.dtype.itemsize
    as_bytes = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), width * item)
    order = np.arange(height, dtype=np.int64) if rows is None else rows.astype(np.int64)
    out = np.empty(n * _kernels.encode_bound(level, cr * cc * item), np.uint8)
    bounds = np.empty(n + 1, np.int64)
    zeros = np.empty(n, np.uint8)
    _kernels.encode_chunks(as_bytes, order, cr, cc * item, level, out, bounds, zeros)
    data = out[: bounds[-1]].tobytes()
    ends = bounds.tolist()
    chunks = [data[a:b] for a, b in itertools.pairwise(ends)]
    return chunks, frozenset(np.flatnonzero(zeros).tolist())


def _encode_isal(
    values: np.ndarray, rows: np.ndarray | None, chunk_shape: tuple[int, int], level: int
) -> tuple[list[bytes], frozenset[int]]:
    """Every chunk of the block cut out by numpy (edge chunks zero-padded) and compressed
    by isal in one compiled call without the GIL."""
    block = values if rows is None else values[rows]
    (height, width), (cr, cc) = block.shape, chunk_shape
    nr, nc = -(-height // cr), -(-width // cc)
    if nr * nc == 0:
        return [], frozenset()
    if height % cr or width % cc:
        padded = np.zeros((nr * cr, nc * cc), block.dtype)
        padded[:height, :width] = block
        block = padded
    tiles = block.reshape(nr, cr, nc, cc).transpose(0, 2, 1, 3).reshape(nr * nc, cr * cc)
    as_bytes = np.ascontiguousarray(tiles).view(np.uint8)
    data, bounds = _deflaters.deflate_tiles(as_bytes, level)
    raw = data.tobytes()
    chunks = [raw[a:b] for a, b in itertools.pairwise(bounds.tolist())]
    return chunks, frozenset(np.flatnonzero(~as_bytes.any(axis=1)).tolist())


_FASTEST: dict[tuple[int, int, str], str] = {}


def fastest_codec(level: int, chunk_nbytes: int) -> str:
    """The codec the writer uses at ``level`` for chunks of ``chunk_nbytes``: the faster
    of the two batch kernels (libdeflate's and isal's), measured once per process on
    count-like data of that chunk size; :data:`DEFAULT_CODEC` when it is not libdeflate
    (set by hand) or isal's kernel cannot run.

    Examples
    --------
    >>> fastest_codec(2, 64 * 64 * 4) in CODECS  # doctest: +SKIP
    True
    """
    if DEFAULT_CODEC != "libdeflate" or level == 0 or not _deflaters.available():
        return DEFAULT_CODEC
    key = (int(level), int(chunk_nbytes), DEFAULT_CODEC)
    if key not in _FASTEST:
        rng = np.random.default_rng(0)
        n = max(1, (1 << 20) // max(1, chunk_nbytes))
        counts = rng.negative_binomial(1, 0.3, -(-n * chunk_nbytes // 4))
        sample = (counts * (rng.random(counts.size) < 0.2)).astype(np.float32)
        values = sample.view(np.uint8)[: n * chunk_nbytes].reshape(n, chunk_nbytes)
        shape = (1, chunk_nbytes)
        timings = {}
        for codec in ("libdeflate", "isal"):
            encode = _encode_batched if codec == "libdeflate" else _encode_isal
            encode(values[:1], None, shape, level)  # compiled (or loaded) before timing
            start = time.perf_counter()
            encode(values, None, shape, level)
            timings[codec] = time.perf_counter() - start
        _FASTEST[key] = min(timings, key=timings.__getitem__)
    return _FASTEST[key]


def _encode_chunkwise(
    values: np.ndarray,
    rows: np.ndarray | None,
    chunk_shape: tuple[int, int],
    level: int,
    codec: str,
) -> tuple[list[bytes], frozenset[int]]:
    """Every chunk of the block compressed by ``codec``, one Python call per chunk."""
    height = len(values) if rows is None else len(rows)
    width, (cr, cc) = values.shape[1], chunk_shape
    nr, nc = -(-height // cr), -(-width // cc)
    # one column strip at a time, in a reused buffer where every chunk is contiguous
    strip = np.zeros((nr * cr, cc), values.dtype)
    compress = compressor(level, codec)
    empty = b""
    out: list[bytes] = [b""] * (nr * nc)
    zeros: set[int] = set()
    for b in range(nc):
        cols = slice(b * cc, min((b + 1) * cc, width))
        w = cols.stop - cols.start
        if w < cc:
            strip[:] = 0
        if rows is None:
            strip[:height, :w] = values[:, cols]
        else:
            np.take(values[:, cols], rows, axis=0, out=strip[:height, :w])
        tiles = strip.reshape(nr, cr * cc)
        nonzero = tiles.view(f"u{tiles.dtype.itemsize}").any(axis=1)
        for a in range(nr):
            if nonzero[a]:
                out[a * nc + b] = compress(tiles[a])
            else:
                empty = empty or compress(np.zeros(chunk_shape, values.dtype))
                out[a * nc + b] = empty
                zeros.add(a * nc + b)
    return out, frozenset(zeros)


def write_packed(dset: Any, packed: PackedBlock, fresh: bool = True) -> None:
    """Write a packed block's chunks into an h5py dataset with its deflate filter.

    Into ``fresh`` chunks (never written: they read as the fill value), all-zero chunks are
    not written when the fill value is zero: they cost no space in the file.
    """
    write = dset.id.write_direct_chunk
    skip = packed.zeros if fresh and not np.asarray(dset.fillvalue).any() else frozenset()
    for k, (offset, data) in enumerate(
        zip(packed.offsets(dset.chunks), packed.chunks, strict=True)
    ):
        if k not in skip:
            write(offset, data)


def deflate_level(compression: Any, compression_opts: Any) -> int | None:
    """The deflate level when h5py's ``compression`` arguments mean gzip, else None.

    None means the layer goes through h5py and its filters (no compression, lzf, ...).
    """
    if compression != "gzip":
        return None
    level = 4 if compression_opts is None else compression_opts  # h5py's default level
    return int(level) if isinstance(level, int | np.integer) and 0 <= level <= 9 else None

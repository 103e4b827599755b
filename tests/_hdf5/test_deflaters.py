"""Tests for loomx._hdf5.deflaters: isal's batch kernel against zlib's inflate (every
stream inflates back to its tile), output space that is too small, a library whose stream
layout differs, and packing through it against the per-chunk zlib path."""

from __future__ import annotations

import ctypes
import zlib

import h5py
import numpy as np
import pytest

import loomx
from loomx._hdf5 import codecs as _codecs
from loomx._hdf5 import deflaters

pytestmark = pytest.mark.skipif(not deflaters.available(), reason="isal's kernel is off here")


def tiles_of(kind: str, n: int = 12, nbytes: int = 16384) -> np.ndarray:
    rng = np.random.default_rng(3)
    if kind == "counts":
        counts = rng.negative_binomial(1, 0.3, n * nbytes // 4) * (
            rng.random(n * nbytes // 4) < 0.2
        )
        return counts.astype(np.float32).view(np.uint8).reshape(n, nbytes)
    if kind == "random":  # incompressible: stored blocks
        return rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    if kind == "zeros":
        return np.zeros((n, nbytes), np.uint8)
    return rng.integers(0, 3, (n, nbytes), dtype=np.uint8)  # "runs": small alphabet


@pytest.mark.parametrize("kind", ["counts", "random", "zeros", "runs"])
@pytest.mark.parametrize("level", [1, 2, 4, 6, 9])
def test_every_stream_inflates_back_to_its_tile(kind, level):
    tiles = tiles_of(kind)
    data, bounds = deflaters.deflate_tiles(tiles, level)
    assert bounds[0] == 0 and bounds[-1] == data.size and np.all(np.diff(bounds) > 0)
    for k, tile in enumerate(tiles):
        stream = data[bounds[k] : bounds[k + 1]].tobytes()
        assert zlib.decompress(stream) == tile.tobytes()  # a zlib stream: header, Adler-32
        assert len(stream) <= deflaters.tile_bound(tiles.shape[1])


@pytest.mark.parametrize("nbytes", [1, 7, 4096, 65536 + 3])
def test_odd_tile_sizes_and_non_contiguous_input(nbytes):
    rng = np.random.default_rng(4)
    wide = rng.integers(0, 4, (5, 2 * nbytes), dtype=np.uint8)
    tiles = wide[:, ::2]  # strided: copied to C order first
    data, bounds = deflaters.deflate_tiles(tiles, 1)
    for k in range(5):
        assert zlib.decompress(data[bounds[k] : bounds[k + 1]].tobytes()) == tiles[k].tobytes()


def test_output_space_too_small_is_refused_naming_the_tile(monkeypatch):
    monkeypatch.setattr(deflaters, "tile_bound", lambda nbytes: 16)
    with pytest.raises(RuntimeError, match=r"failed on tile 0 of 3 \(16384 bytes\)"):
        deflaters.deflate_tiles(tiles_of("random", n=3), 1)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="level"):
        deflaters.deflate_tiles(tiles_of("zeros", n=1), 0)
    with pytest.raises(ValueError, match="2-D"):
        deflaters.deflate_tiles(np.zeros(10, np.uint8), 1)


def test_a_library_with_another_stream_layout_turns_the_kernel_off():
    class Shifted:
        """An ``isal_deflate_stateless_init`` that writes its fields 8 bytes later."""

        @staticmethod
        def isal_deflate_stateless_init(pointer: ctypes.c_void_p) -> None:
            stream = (ctypes.c_uint8 * 128).from_address(pointer.value)
            for i in range(8, 72):
                stream[i] = 0
            stream[40] = 1  # a non-zero "hufftables" pointer

    class Zeroed:
        """Every field zero, the Huffman tables pointer too."""

        @staticmethod
        def isal_deflate_stateless_init(pointer: ctypes.c_void_p) -> None:
            ctypes.memset(pointer.value, 0, 128)

    class Untouched:
        @staticmethod
        def isal_deflate_stateless_init(pointer: ctypes.c_void_p) -> None:
            pass

    assert not deflaters._layout_matches(Shifted())
    assert not deflaters._layout_matches(Untouched())
    assert not deflaters._layout_matches(Zeroed())
    assert deflaters._layout_matches(ctypes.CDLL(deflaters._library()))


@pytest.mark.parametrize("shape", [(128, 192), (100, 150), (64, 1)])
@pytest.mark.parametrize("with_rows", [False, True])
def test_isal_packing_equals_the_zlib_path(shape, with_rows):
    rng = np.random.default_rng(5)
    values = (rng.poisson(0.5, shape) * (rng.random(shape) < 0.3)).astype(np.float32)
    rows = rng.permutation(shape[0]) if with_rows else None
    values[np.arange(32) if rows is None else rows[:32], :32] = 0  # an all-zero chunk
    got = _codecs.pack_block(values, (0, 0), (32, 32), values.dtype, 2, codec="isal", rows=rows)
    ref = _codecs.pack_block(values, (0, 0), (32, 32), values.dtype, 2, codec="zlib", rows=rows)
    assert got.grid == ref.grid and got.zeros == ref.zeros and 0 in got.zeros
    for a, b in zip(got.chunks, ref.chunks, strict=True):
        assert zlib.decompress(a) == zlib.decompress(b)


def test_the_writer_uses_the_measured_codec_and_files_read_in_h5py(tmp_path, monkeypatch):
    chosen = _codecs.fastest_codec(2, 64 * 64 * 4)
    assert chosen in ("libdeflate", "isal")
    monkeypatch.setattr(_codecs, "DEFAULT_CODEC", "zlib")  # set by hand: no measuring
    assert _codecs.fastest_codec(2, 64 * 64 * 4) == "zlib"
    monkeypatch.setattr(_codecs, "DEFAULT_CODEC", "libdeflate")
    monkeypatch.setitem(_codecs._FASTEST, (2, 64 * 64 * 4, "libdeflate"), "isal")
    used = []
    real = deflaters.deflate_tiles
    monkeypatch.setattr(deflaters, "deflate_tiles", lambda *a: used.append(1) or real(*a))
    rng = np.random.default_rng(6)
    matrix = rng.poisson(1.0, (150, 260)).astype(np.float32)
    loomx.to_loom(loomx.from_arrays(matrix), tmp_path / "isal.loom")
    assert used
    with h5py.File(tmp_path / "isal.loom", "r") as f:
        np.testing.assert_array_equal(f["matrix"][...], matrix)

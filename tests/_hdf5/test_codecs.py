"""loomx._hdf5.codecs: blocks cut into HDF5 chunks and compressed to deflate streams by
every installed codec, compared with h5py's own gzip filter on the same values (chunk
table, filter pipeline, values bit for bit) and with zlib; compression settings,
``pack_block``'s chunk layout and errors, ``write_packed``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import awkward_values
from hypothesis import given, settings
from hypothesis import strategies as st

import loomx
from loomx._hdf5 import codecs as _codecs
from loomx._write.writer import to_loom


def _h5py_reference(path: Path, values: np.ndarray, level: int = 2) -> None:
    """The layer as h5py's own gzip filter writes it, with loompy's storage settings."""
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "matrix",
            data=values,
            chunks=(min(64, values.shape[0]), min(64, values.shape[1])),
            maxshape=(values.shape[0], None),
            compression="gzip",
            compression_opts=level,
        )


def _chunk_table(dset: h5py.Dataset) -> dict[tuple[int, ...], tuple[int, bytes]]:
    out = {}
    for i in range(dset.id.get_num_chunks()):
        info = dset.id.get_chunk_info(i)
        out[info.chunk_offset] = (info.filter_mask, dset.id.read_direct_chunk(info.chunk_offset)[1])
    return out


def _chunk_box(offset: tuple[int, int], chunks: tuple[int, int] = (64, 64)) -> tuple[slice, ...]:
    return tuple(slice(o, o + c) for o, c in zip(offset, chunks, strict=True))


@pytest.mark.parametrize("codec", _codecs.CODECS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int8", "uint16", "int64"])
@pytest.mark.parametrize("lazy", [True, False])
def test_compressed_chunks_read_as_h5py_gzip(tmp_path, monkeypatch, codec, dtype, lazy):
    monkeypatch.setattr(_codecs, "DEFAULT_CODEC", codec)
    values = awkward_values(dtype)
    data = da.from_array(values, chunks=(100, 70)) if lazy else values
    path, reference = tmp_path / "out.loom", tmp_path / "h5py.h5"
    to_loom(xr.Dataset({"matrix": (("row", "col"), data)}), path)
    _h5py_reference(reference, values)
    with h5py.File(path, "r") as f, h5py.File(reference, "r") as r:
        mine, theirs = f["matrix"], r["matrix"]
        assert (mine.dtype, mine.shape, mine.chunks, mine.maxshape) == (
            theirs.dtype,
            theirs.shape,
            theirs.chunks,
            theirs.maxshape,
        )
        plist, ref_plist = mine.id.get_create_plist(), theirs.id.get_create_plist()
        filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
        assert filters == [ref_plist.get_filter(i) for i in range(ref_plist.get_nfilters())]
        assert filters == [(h5py.h5z.FILTER_DEFLATE, 1, (2,), b"deflate")]
        assert (mine.compression, mine.compression_opts, mine.shuffle) == ("gzip", 2, False)
        table, ref_table = _chunk_table(mine), _chunk_table(theirs)
        zero = {k for k in ref_table if not values[_chunk_box(k)].view(f"u{values.itemsize}").any()}
        assert (0, 64) in zero  # all-zero chunks are not stored: they read as the fill value
        assert sorted(table) == sorted(set(ref_table) - zero)
        assert len(ref_table) == 3 * 5
        assert {mask for mask, _ in table.values()} == {0}  # the deflate filter applies
        np.testing.assert_array_equal(mine[:], theirs[:])
        assert mine[:].tobytes() == values.tobytes()  # -0.0 and NaN bits kept
        assert mine[64:128, :64].tobytes() == values[64:128, :64].tobytes()
        same_stream = zlib.compress(values[:64, :64].tobytes(), 2) == ref_table[(0, 0)][1]
        if codec == "zlib" and same_stream:  # byte for byte what HDF5's own filter wrote
            assert table == {k: v for k, v in ref_table.items() if k not in zero}
    back = loomx.open_loom(path)
    np.testing.assert_array_equal(back["matrix"].values, values)


@pytest.mark.parametrize(
    ("compression", "opts", "level"),
    [("gzip", 2, 2), ("gzip", None, 4), ("gzip", 9, 9), ("gzip", 0, 0), (None, None, None)],
)
def test_compression_settings(tmp_path, compression, opts, level):
    values = awkward_values("float32")
    path = tmp_path / "c.loom"
    ds = xr.Dataset({"matrix": (("row", "col"), da.from_array(values, chunks=(64, 128)))})
    to_loom(ds, path, compression=compression, compression_opts=opts)
    assert _codecs.deflate_level(compression, opts) == level
    with h5py.File(path, "r") as f:
        assert f["matrix"].compression == compression
        assert f["matrix"].compression_opts == level
        np.testing.assert_array_equal(f["matrix"][:], values)


def test_lzf_layers_go_through_h5py(tmp_path):
    values = awkward_values("float32")
    path = tmp_path / "lzf.loom"
    ds = xr.Dataset({"matrix": (("row", "col"), values)})
    to_loom(ds, path, compression="lzf", compression_opts=None)
    assert _codecs.deflate_level("lzf", None) is None
    with h5py.File(path, "r") as f:
        assert f["matrix"].compression == "lzf"
        np.testing.assert_array_equal(f["matrix"][:], values)


@settings(deadline=None)
@given(
    shape=st.tuples(st.integers(1, 150), st.integers(1, 150)),
    chunk_shape=st.tuples(st.integers(1, 70), st.integers(1, 70)),
    dtype=st.sampled_from(["float32", "int16", "uint8", "float64"]),
    permute=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_packed_chunks_are_the_blocks_values_in_hdf5_chunk_layout(
    shape, chunk_shape, dtype, permute, seed
):
    rng = np.random.default_rng(seed)
    values = (rng.random(shape) * 4 * (rng.random(shape) < 0.4)).astype(dtype)
    rows = rng.permutation(shape[0]) if permute else None
    expected = values if rows is None else values[rows]
    block = _codecs.pack_block(values, (0, 0), chunk_shape, np.dtype(dtype), 2, rows=rows)
    cr, cc = chunk_shape
    assert block.grid == (-(-shape[0] // cr), -(-shape[1] // cc))
    padded = np.zeros((block.grid[0] * cr, block.grid[1] * cc), dtype)
    padded[: shape[0], : shape[1]] = expected
    for (r, c), data in zip(block.offsets(chunk_shape), block.chunks, strict=True):
        tile = np.frombuffer(zlib.decompress(data), dtype).reshape(chunk_shape)
        np.testing.assert_array_equal(tile, padded[r : r + cr, c : c + cc])


def test_pack_block_row_order_must_index_the_block():
    values = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="index the block"):
        _codecs.pack_block(values, (0, 0), (2, 2), values.dtype, 1, rows=np.array([0, 4]))
    rows = np.array([3, 1])  # a subset is allowed: the block's rows in this order
    block = _codecs.pack_block(
        values * np.arange(4)[:, None], (0, 0), (2, 2), values.dtype, 1, rows=rows, keep_raw=True
    )
    np.testing.assert_array_equal(block.raw[:, 0], [3, 1])


def test_pack_block_refuses_bad_levels_and_codecs():
    with pytest.raises(ValueError, match="0-9"):
        _codecs.compressor(10)
    with pytest.raises(ValueError, match="not installed"):
        _codecs.compressor(2, "snappy")
    block = _codecs.pack_block(np.ones((3, 5), np.uint8), (64, 128), (4, 4), np.uint8, 1)
    assert block.grid == (1, 2)
    assert block.offsets((4, 4)) == [(64, 128), (64, 132)]
    assert zlib.decompress(block.chunks[1]) == bytes([1, 0, 0, 0] * 3 + [0] * 4)


@pytest.mark.parametrize("chunk_nbytes", [1, 3, 6, 7 * 13 * 4, 64 * 64 * 4])
def test_the_fastest_codec_is_measured_for_any_chunk_size(chunk_nbytes):
    """Chunks of int8 (2, 3) are 6 bytes: the sample is cut into whole chunks of any size."""
    assert _codecs.fastest_codec(2, chunk_nbytes) in _codecs.CODECS

"""loomx._read.chunking: dask blocks of layers are whole multiples of the HDF5 chunks, near
``BLOCK_BYTES`` raw, compared with ``dask.array.core.normalize_chunks`` (dask's own "auto"
rule with the HDF5 chunks as ``previous_chunks``) and with the chunks h5py reports for
loompy's files; users' ``chunks`` arguments are resolved per dim or refused.
"""

from __future__ import annotations

import math

import dask
import h5py
import numpy as np
import pytest
from dask.array.core import normalize_chunks
from hypothesis import given, settings
from hypothesis import strategies as st

import loomx
from loomx._read import chunking


@settings(deadline=None)
@given(
    shape=st.tuples(st.integers(1, 200_000), st.integers(1, 200_000)),
    hdf5=st.tuples(st.integers(1, 512), st.integers(1, 512)),
    dtype=st.sampled_from(["float32", "float64", "int8", "uint16", "int64"]),
    limit=st.sampled_from([None, 2**12, 2**16, 2**20]),
)
def test_default_chunks_are_whole_hdf5_chunks_near_block_bytes(shape, hdf5, dtype, limit):
    hdf5 = tuple(min(c, s) for c, s in zip(hdf5, shape, strict=True))
    got = chunking.default_chunks(shape, np.dtype(dtype), hdf5, target_bytes=limit)
    limit = chunking.BLOCK_BYTES if limit is None else limit
    dasks = normalize_chunks("auto", shape, dtype=dtype, previous_chunks=hdf5, limit=limit)
    itemsize = np.dtype(dtype).itemsize
    for size, c, b, theirs in zip(shape, got, hdf5, dasks, strict=True):
        assert 1 <= c <= size
        assert c % b == 0 or c == size  # whole HDF5 chunks, or the whole dim
        # dask's block rounded down to whole HDF5 chunks (never below one HDF5 chunk)
        assert c == size or theirs[0] - b < c <= max(theirs[0], b)
    raw = math.prod(got) * itemsize
    assert raw <= max(limit, math.prod(hdf5) * itemsize)
    if all(c < s for c, s in zip(got, shape, strict=True)):  # not the whole layer
        assert raw > limit / 8  # near the target, not tiny


@pytest.mark.parametrize("limit", ["1MiB", "4MiB"])
def test_a_smaller_dask_chunk_size_setting_is_followed(limit):
    with dask.config.set({"array.chunk-size": limit}):
        assert chunking.block_bytes() == dask.utils.parse_bytes(limit)
        got = chunking.default_chunks((100_000, 30_000), np.dtype("float32"), (64, 64))
    assert math.prod(got) * 4 <= dask.utils.parse_bytes(limit)
    with dask.config.set({"array.chunk-size": "1GiB"}):  # larger: BLOCK_BYTES caps it
        assert chunking.block_bytes() == chunking.BLOCK_BYTES


def test_contiguous_layers_are_cut_in_bands_of_whole_rows():
    got = chunking.default_chunks((50_000, 3000), np.dtype("float64"), None)
    assert got[1] == 3000
    assert got[0] * 3000 * 8 <= chunking.BLOCK_BYTES < (got[0] + 1) * 3000 * 8 * 2


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_empty_layers_get_one_block(shape):
    assert chunking.default_chunks(shape, np.dtype("float32"), (64, 64)) == tuple(
        max(s, 1) for s in shape
    )


def test_open_loom_blocks_of_loompys_file_are_whole_hdf5_chunks(loompy_file):
    ds = loomx.open_loom(loompy_file["path"])
    with h5py.File(loompy_file["path"], "r") as f:
        for name, h5path in (("matrix", "matrix"), ("norm", "layers/norm")):
            hdf5 = f[h5path].chunks
            for size, blocks, b in zip(f[h5path].shape, ds[name].data.chunks, hdf5, strict=True):
                assert sum(blocks) == size
                assert all(c % b == 0 for c in blocks[:-1])


def test_resolve_chunks_per_dim():
    dims, preferred, shape = ("row", "col"), {"row": 64, "col": 128}, (300, 700)
    assert chunking.resolve_chunks("auto", dims, preferred, shape) == preferred
    assert chunking.resolve_chunks({}, dims, preferred, shape) == preferred
    assert chunking.resolve_chunks(10, dims, preferred, shape) == {"row": 10, "col": 10}
    assert chunking.resolve_chunks(-1, dims, preferred, shape) == {"row": 300, "col": 700}
    assert chunking.resolve_chunks({"col": -1, "row": None}, dims, preferred, shape) == {
        "row": 64,
        "col": 700,
    }
    assert chunking.resolve_chunks({"row": np.int64(5)}, dims, preferred, (0, 0)) == {
        "row": 5,
        "col": 128,
    }
    assert chunking.resolve_chunks(-1, dims, preferred, (0, 0)) == {"row": 1, "col": 1}


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ("big", r"'auto', an int or a dict, found 'big'"),
        ([64, 64], r"'auto', an int or a dict, found \[64, 64\]"),
        ({"gene": 10}, r"dims \['gene'\] that are not in \('row', 'col'\)"),
        ({"row": "64"}, r"chunks\['row'\] must be an int, -1 or 'auto', found '64'"),
        ({"row": 1.5}, r"chunks\['row'\] must be an int"),
    ],
)
def test_resolve_chunks_refuses_bad_arguments(chunks, message):
    with pytest.raises(ValueError, match=message):
        chunking.resolve_chunks(chunks, ("row", "col"), {"row": 64, "col": 64}, (10, 10))

"""loomx._write.packing: layer blocks compressed into finished deflate chunks in the dask
tasks that compute them, layers that loompy opens, in-memory layers cut into views in
bounded blocks.  The codecs themselves are tested in tests/_hdf5/test_codecs.py.
"""

from __future__ import annotations

import threading

import dask
import dask.array as da
import h5py
import numpy as np
import xarray as xr
from conftest import (
    CELLS,
    GENES,
    assert_loompy_valid,
    awkward_values,
)

from loomx._hdf5 import codecs as _codecs
from loomx._read import chunking as _chunking
from loomx._write import packing as _packing
from loomx._write.writer import to_loom

N, M = len(GENES), len(CELLS)


def test_compressed_layers_open_in_loompy(tmp_path):
    import loompy

    values = awkward_values("float32")
    ds = xr.Dataset(
        {"matrix": (("row", "col"), values), "norm": (("row", "col"), da.from_array(values * 2))},
        coords={"Gene": ("row", [f"g{i}" for i in range(values.shape[0])])},
    )
    to_loom(ds, tmp_path / "l.loom")
    to_loom(ds.assign(more=ds["matrix"] + 1), tmp_path / "l.loom", mode="a")
    assert_loompy_valid(tmp_path / "l.loom")
    with loompy.connect(str(tmp_path / "l.loom"), "r") as lp:
        np.testing.assert_array_equal(lp[:, :], values)
        np.testing.assert_array_equal(lp.layers["norm"][:, :], values * 2)
        np.testing.assert_array_equal(lp.layers["more"][:, :], values + 1)


def test_blocks_are_compressed_where_computed(tmp_path, monkeypatch):
    packed_in, written_in = [], []
    pack, write = _codecs.pack_block, _codecs.write_packed

    def packing(*args, **kwargs):
        packed_in.append(threading.get_ident())
        return pack(*args, **kwargs)

    def writing(dset, block):
        assert all(isinstance(c, bytes) for c in block.chunks)
        written_in.append(threading.get_ident())
        return write(dset, block)

    monkeypatch.setattr(_codecs, "pack_block", packing)
    monkeypatch.setattr(_codecs, "write_packed", writing)
    values = awkward_values("float32", (640, 640))
    ds = xr.Dataset({"matrix": (("row", "col"), da.from_array(values, chunks=(128, 128)))})
    with dask.config.set(scheduler="threads", num_workers=4):
        to_loom(ds, tmp_path / "t.loom")
    assert len(packed_in) == len(written_in) == 25  # one task per block
    assert threading.get_ident() not in packed_in  # in dask's worker threads
    with h5py.File(tmp_path / "t.loom", "r") as f:
        np.testing.assert_array_equal(f["matrix"][:], values)


def test_in_memory_layers_are_packed_in_bounded_blocks():
    values = np.zeros((5000, 6000), np.float32)
    arr = _packing.in_blocks(values, (64, 64))
    assert max(arr.chunks[0]) * max(arr.chunks[1]) * 4 <= _chunking.block_bytes()
    assert all(c % 64 == 0 for c in arr.chunks[0][:-1] + arr.chunks[1][:-1])
    assert arr.numblocks[0] * arr.numblocks[1] > 1


def test_in_memory_blocks_are_views_not_a_copy():
    values = np.arange(200 * 300, dtype=np.float32).reshape(200, 300)
    arr = _packing.in_blocks(values, (64, 64))
    graph = dict(arr.__dask_graph__())
    blocks = [v for v in graph.values() if isinstance(v, np.ndarray)]
    assert blocks and all(np.shares_memory(b, values) for b in blocks)
    np.testing.assert_array_equal(arr.compute(), values)

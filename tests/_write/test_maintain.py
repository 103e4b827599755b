"""loomx._write.maintain: ``delete`` is all or nothing and ``repack`` gives the space back,
checked with h5py (chunks, filters, stored chunk places) and against a copy deleted with h5py."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from conftest import REGION_SHAPE, chunk_places, region_file, sha256

import loomx
from loomx.errors import LoomNameError
from loomx.testing import assert_loom_identical

N, M = REGION_SHAPE


def test_delete_is_all_or_nothing_and_repack_reclaims_the_space(tmp_path):
    path = region_file(tmp_path / "r.loom")
    big = np.random.default_rng(2).random((N, M))
    with loomx.open_loom(path) as ds:
        loomx.to_loom(ds.assign(big=(("row", "col"), big)), path, mode="a")
    size_with = os.path.getsize(path)
    expected = tmp_path / "expected.loom"
    expected.write_bytes(path.read_bytes())
    with h5py.File(expected, "r+") as f:
        del f["layers/big"], f["row_attrs/Len"], f["col_graphs/KNN"]
    with pytest.raises(LoomNameError, match="no variable 'nope'"):
        loomx.delete(path, ["big", "nope"])
    with pytest.raises(LoomNameError, match="main matrix"):
        loomx.delete(path, "matrix")
    with loomx.open_loom(path) as ds:
        assert "big" in ds
    loomx.delete(path, ["big", "Len", "col_graphs:KNN"])
    assert_loom_identical(path, expected)
    assert os.path.getsize(path) >= size_with  # HDF5 keeps the space
    loomx.repack(path)
    assert_loom_identical(path, expected)
    assert os.path.getsize(path) < size_with - big.nbytes // 2  # the layer's space is back
    with h5py.File(path, "r") as f, h5py.File(expected, "r") as g:
        for h5path in ("matrix", "layers/spliced"):
            assert f[h5path].chunks == g[h5path].chunks
            assert f[h5path].compression == g[h5path].compression
            assert chunk_places(path, h5path).keys() == chunk_places(expected, h5path).keys()


def test_repack_to_another_file_keeps_the_source(tmp_path):
    path = region_file(tmp_path / "r.loom")
    digest = sha256(path)
    loomx.repack(path, tmp_path / "out.loom")
    assert sha256(path) == digest
    assert_loom_identical(tmp_path / "out.loom", path)

"""``from_arrays`` with sparse input: dask blocks cut along the sparse format's cheap axis,
values as scipy's ``toarray``."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from loomx.interop.arrays import SparseBlocks, from_arrays

N_ROWS, N_COLS = 1500, 1400


def _matrix(fmt: str, array: bool) -> sp.spmatrix | sp.sparray:
    made = sp.random(N_ROWS, N_COLS, density=0.01, format=fmt, dtype=np.float32, random_state=3)
    return sp.csc_array(made) if array and fmt == "csc" else made


@pytest.mark.parametrize(
    ("fmt", "array", "banded_axis"),
    [("csc", False, 1), ("csc", True, 1), ("csr", False, 0), ("coo", False, 0)],
)
def test_sparse_blocks_are_bands_along_the_cheap_axis(fmt, array, banded_axis):
    """CSC is cut into bands of columns (each block all rows, a slice of ``indptr``), CSR
    (and formats converted to it) into bands of rows."""
    matrix = _matrix(fmt, array)
    assert matrix.format == fmt
    data = from_arrays(matrix)["matrix"].data
    whole_axis = 1 - banded_axis
    assert data.chunks[whole_axis] == (matrix.shape[whole_axis],)  # every block spans it
    assert len(data.chunks[banded_axis]) > 1  # cut across the other
    np.testing.assert_array_equal(data.compute(), matrix.toarray())


@pytest.mark.parametrize("fmt", ["csc", "csr"])
def test_each_block_is_read_as_one_band(fmt, monkeypatch):
    matrix = _matrix(fmt, False)
    keys: list[tuple[slice, slice]] = []
    original = SparseBlocks.__getitem__

    def recorded(self, key):
        keys.append(key)
        return original(self, key)

    monkeypatch.setattr(SparseBlocks, "__getitem__", recorded)
    data = from_arrays(matrix)["matrix"].data
    np.testing.assert_array_equal(data.compute(scheduler="sync"), matrix.toarray())
    whole = 1 if fmt == "csr" else 0
    assert len(keys) == len(data.chunks[1 - whole]) > 1
    for key in keys:
        assert key[whole].indices(matrix.shape[whole]) == (0, matrix.shape[whole], 1)

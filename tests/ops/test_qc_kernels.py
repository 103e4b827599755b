"""The compiled per-band loops of QC (loomx.ops.qc_kernels): the top-N sums by counting
equal a full sort, values that are not counts fall back to selection, and one band's
statistics equal numpy's."""

from __future__ import annotations

import numpy as np
import pytest

from loomx.ops import qc_kernels


def sorted_top_sums(block: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """Sum of the ``n`` largest values of each column, by a full sort (the reference)."""
    descending = -np.sort(-block.astype(np.float64), axis=0)
    return np.stack([descending[:n].sum(axis=0) for n in ns])


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.int64, np.float64])
def test_counted_top_sums_equal_a_sort(dtype):
    """The counting pass (whole counts in bins, large ones kept) over more cells than one
    tile, with ties at every rank, values above the bins and empty cells."""
    rng = np.random.default_rng(7)
    block = rng.negative_binomial(1, 0.3, (700, 1100)) * (rng.random((700, 1100)) < 0.3)
    block[:40, 3] = 255 + np.arange(40)  # values beyond the bins, one cell
    block[::3, 600] = 1000  # many large values in a cell of the second tile
    block[:, 9] = 0  # an empty cell
    block = block.astype(dtype)
    ns = np.array([1, 5, 50, 233, 700])
    counted, ok = qc_kernels._count_top_sums(block, ns)
    assert ok
    np.testing.assert_array_equal(counted, sorted_top_sums(block, ns))
    nnz = (block != 0).sum(axis=0)
    np.testing.assert_array_equal(qc_kernels._top_sums(block, nnz, ns), counted)


@pytest.mark.parametrize("bad", ["fraction", "negative"])
def test_top_sums_of_values_that_are_not_counts_fall_back_to_selection(bad):
    rng = np.random.default_rng(8)
    block = rng.poisson(2, (300, 70)).astype(np.float64)
    block[150, 40] = 2.5 if bad == "fraction" else -1.0
    ns = np.array([1, 10, 100])
    assert not qc_kernels._count_top_sums(block, ns)[1]
    nnz = (block != 0).sum(axis=0)
    np.testing.assert_allclose(qc_kernels._top_sums(block, nnz, ns), sorted_top_sums(block, ns))


def test_band_stats_equal_numpy():
    rng = np.random.default_rng(3)
    block = rng.poisson(1.5, (50, 40)).astype(np.float32)
    mito = np.zeros(50, bool)
    mito[:5] = True
    ns = np.array([1, 10])
    stats = qc_kernels.band_stats(block, mito, ns)
    expected_cells = np.vstack(
        (block.sum(0), (block != 0).sum(0), block[mito].sum(0), sorted_top_sums(block, ns))
    )
    np.testing.assert_allclose(stats["cells"], expected_cells, rtol=1e-6)
    np.testing.assert_allclose(stats["sum"], block.sum(1), rtol=1e-6)
    np.testing.assert_allclose(stats["sumsq"], (block.astype(np.float64) ** 2).sum(1), rtol=1e-6)
    np.testing.assert_array_equal(stats["nnz"], (block != 0).sum(1))

"""The compiled band loops against numpy and scipy on the same dense bands."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from threadpoolctl import threadpool_info

from loomx.analysis import band_kernels as kernels


@st.composite
def bands(draw, dtype=np.float32, negative=False):
    """A dense genes x cells band with zeros, some all-zero rows and columns."""
    rows = draw(st.integers(0, 12))
    cols = draw(st.integers(0, 9))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values = rng.integers(-3 if negative else 0, 6, size=(rows, cols)) * rng.random((rows, cols))
    values = values.astype(dtype)
    values[rng.random((rows, cols)) < 0.5] = 0
    return values, rng


@given(bands(negative=True))
def test_to_csr_is_scipys_csr_of_the_band(drawn) -> None:
    dense, _ = drawn
    got = kernels.to_csr(dense)
    want = sp.csr_matrix(dense)
    assert got.shape == dense.shape and got.dtype == dense.dtype
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, want.data)


def test_to_csr_keeps_nan_and_reads_a_transposed_view() -> None:
    dense = np.array([[0.0, np.nan], [2.0, 0.0], [0.0, 3.0]]).T  # not C-contiguous
    got = kernels.to_csr(dense)
    np.testing.assert_array_equal(got.toarray(), dense)


@given(bands(negative=True))
def test_column_sums_and_positive_counts_match_numpy(drawn) -> None:
    dense, rng = drawn
    rows = rng.random(dense.shape[0]) < 0.6
    cols = rng.random(dense.shape[1]) < 0.6
    band = kernels.to_csr(dense)
    np.testing.assert_allclose(
        kernels.column_sums(band, rows), dense[rows].sum(axis=0, dtype=np.float64)
    )
    cells, total = kernels.positive_counts(band, cols)
    np.testing.assert_array_equal(cells, (dense[:, cols] > 0).sum(axis=1))
    np.testing.assert_allclose(total, dense[:, cols].sum(axis=1, dtype=np.float64))


@given(bands(negative=True))
def test_count_above_counts_zeros_over_negative_thresholds(drawn) -> None:
    dense, rng = drawn
    thresholds = rng.normal(size=dense.shape[1]).astype(dense.dtype)
    cols = rng.random(dense.shape[1]) < 0.7
    got = kernels.count_above(kernels.to_csr(dense), thresholds, cols)
    np.testing.assert_array_equal(got, (dense[:, cols] > thresholds[cols]).sum(axis=1))


@given(bands(), st.integers(1, 3))
def test_group_moments_match_numpy_per_group(drawn, groups) -> None:
    dense, rng = drawn
    codes = rng.integers(-1, groups, size=dense.shape[1])
    rows = rng.random(dense.shape[0]) < 0.7
    total, squares, nnz = kernels.group_moments(kernels.to_csr(dense), rows, codes, groups)
    for b in range(groups):
        part = dense[rows][:, codes == b]
        # squared in float32, as scanpy squares: a float64 square differs by ~1e-8
        np.testing.assert_allclose(total[b], part.sum(axis=1, dtype=np.float64), rtol=1e-12)
        want = (part * part).sum(axis=1, dtype=np.float64)
        np.testing.assert_allclose(squares[b], want, rtol=1e-12)
        np.testing.assert_array_equal(nnz[b], (part != 0).sum(axis=1))


@given(bands(np.float64, negative=True), st.integers(1, 3))
def test_clipped_sums_count_the_zeros_below_a_negative_clip(drawn, groups) -> None:
    dense, rng = drawn
    codes = rng.integers(-1, groups, size=dense.shape[1])
    rows = rng.random(dense.shape[0]) < 0.7
    clip = rng.normal(1, 2, size=(groups, int(rows.sum())))
    total, squares = kernels.clipped_sums(kernels.to_csr(dense), rows, codes, clip)
    for b in range(groups):
        part = np.minimum(dense[rows][:, codes == b], clip[b][:, None])
        np.testing.assert_allclose(total[b], part.sum(axis=1), atol=1e-12)
        np.testing.assert_allclose(squares[b], (part * part).sum(axis=1), atol=1e-12)


@given(bands())
def test_dense_rows_picks_rows_and_columns(drawn) -> None:
    dense, rng = drawn
    rows = rng.random(dense.shape[0]) < 0.5
    cols = rng.random(dense.shape[1]) < 0.5
    got = kernels.dense_rows(kernels.to_csr(dense), rows, cols)
    assert got.dtype == np.float64 and got.flags.f_contiguous
    np.testing.assert_array_equal(got, dense[rows][:, cols])


def test_gram_add_adds_the_upper_triangle_of_x_xt() -> None:
    rng = np.random.default_rng(0)
    x = np.asfortranarray(rng.normal(size=(40, 17)))
    gram = np.asfortranarray(np.triu(rng.normal(size=(40, 40))))
    start = gram.copy()
    kernels.gram_add(gram, x)
    np.testing.assert_allclose(np.triu(gram), np.triu(start + x @ x.T), rtol=1e-12)
    np.testing.assert_array_equal(np.tril(gram, -1), np.tril(start, -1))


def test_gram_add_refuses_c_ordered_or_mis_sized_arrays() -> None:
    with pytest.raises(ValueError, match="Fortran"):
        kernels.gram_add(np.zeros((3, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="Fortran"):
        kernels.gram_add(np.zeros((2, 2), order="F"), np.ones((3, 2), order="F"))


def test_dot_is_numpys_product() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 30)), rng.normal(size=(30, 7))
    np.testing.assert_allclose(kernels.dot(a.T.T, b), a @ b, rtol=1e-12)


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_one_blas_thread_holds_while_any_user_is_inside() -> None:
    before = _blas_threads()
    seen = []
    with kernels.one_blas_thread():  # a task of one thread
        seen.append(_blas_threads())
        with kernels.one_blas_thread():  # a task of another, starting before it ends
            seen.append(_blas_threads())
        seen.append(_blas_threads())  # the first task is still running
    assert seen and all(threads and set(threads) == {1} for threads in seen)
    assert _blas_threads() == before

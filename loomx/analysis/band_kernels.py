"""The compiled loops of the analysis steps: a band of cells (genes x cells, dense, as read)
turned into its non-zeros, and the per-gene and per-cell sums the steps need taken over
those non-zeros only.

Every derived layer of a pipeline (normalized, log1p) maps zero to zero, so a band's
non-zeros carry all of it: a step's arithmetic runs on them alone, and a band of counts at
7% density costs a fourteenth of the dense arithmetic.  The sums here skip zeros exactly
(a zero adds nothing to a sum, a sum of squares or a count of non-zeros).

Examples
--------
>>> import numpy as np
>>> band = to_csr(np.array([[0, 2.0], [3.0, 0]]))
>>> band.indices.tolist(), band.data.tolist()
([1, 0], [2.0, 3.0])
>>> column_sums(band, np.array([True, True])).tolist()
[3.0, 2.0]
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from scipy import sparse
from threadpoolctl import ThreadpoolController

from loomx._hdf5.kernels import compiled, cython_function

__all__ = [
    "clipped_sums",
    "column_sums",
    "count_above",
    "dense_rows",
    "dot",
    "gram_add",
    "group_moments",
    "one_blas_thread",
    "positive_counts",
    "to_csr",
    "with_values",
]


@compiled
def _row_nonzeros(block):  # pragma: no cover - compiled
    n_rows, n_cols = block.shape
    counts = np.zeros(n_rows + 1, dtype=np.int64)
    for r in range(n_rows):
        row = block[r]
        k = 0
        for c in range(n_cols):
            k += row[c] != 0
        counts[r + 1] = k
    return np.cumsum(counts)


@compiled
def _fill(block, indptr, indices, data):  # pragma: no cover - compiled
    n_rows, n_cols = block.shape
    for r in range(n_rows):
        row = block[r]
        k = indptr[r]
        for c in range(n_cols):
            v = row[c]
            if v != 0:
                indices[k] = c
                data[k] = v
                k += 1


def to_csr(block: Any) -> sparse.csr_matrix:
    """The non-zeros of a dense 2-D ``block`` as a CSR matrix of the same shape and dtype
    (NaN counts as a non-zero, as in scipy)."""
    block = np.ascontiguousarray(block)
    indptr = _row_nonzeros(block)
    indices = np.empty(indptr[-1], dtype=np.int32)
    data = np.empty(indptr[-1], dtype=block.dtype)
    _fill(block, indptr, indices, data)
    return sparse.csr_matrix((data, indices, indptr), shape=block.shape, copy=False)


def with_values(band: sparse.csr_matrix, values: np.ndarray) -> sparse.csr_matrix:
    """``band`` with new ``values`` at its non-zeros (same positions, shape and index
    arrays): a step that maps zero to zero, applied to the non-zeros."""
    return sparse.csr_matrix((values, band.indices, band.indptr), shape=band.shape)


@compiled
def _column_sums(indptr, indices, data, rows, n_cols):  # pragma: no cover - compiled
    out = np.zeros(n_cols)
    for r in range(rows.size):
        if rows[r]:
            for k in range(indptr[r], indptr[r + 1]):
                out[indices[k]] += np.float64(data[k])
    return out


def column_sums(band: sparse.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """Per column, the float64 sum over the rows where ``rows`` (a bool mask) is true."""
    return _column_sums(band.indptr, band.indices, band.data, np.asarray(rows), band.shape[1])


@compiled
def _count_above(indptr, indices, data, thresholds, columns):  # pragma: no cover - compiled
    n_rows = indptr.size - 1
    below_zero = 0  # columns whose zeros exceed their (negative) threshold
    for c in range(columns.size):
        if columns[c] and thresholds[c] < 0:
            below_zero += 1
    out = np.full(n_rows, below_zero, dtype=np.int64)
    for r in range(n_rows):
        for k in range(indptr[r], indptr[r + 1]):
            c = indices[k]
            if columns[c]:
                out[r] += np.int64(data[k] > thresholds[c]) - np.int64(thresholds[c] < 0)
    return out


def count_above(band: sparse.csr_matrix, thresholds: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Per row, the columns (where ``columns`` is true) whose value exceeds the column's
    threshold (zeros included: they exceed a negative one)."""
    return _count_above(
        band.indptr, band.indices, band.data, np.asarray(thresholds), np.asarray(columns)
    )


@compiled
def _group_moments(indptr, indices, data, rows, codes, n_groups):  # pragma: no cover
    total = np.zeros((n_groups, rows.size))
    squares = np.zeros((n_groups, rows.size))
    nnz = np.zeros((n_groups, rows.size), dtype=np.int64)
    for j in range(rows.size):
        r = rows[j]
        for k in range(indptr[r], indptr[r + 1]):
            b = codes[indices[k]]
            if b >= 0:
                v = data[k]
                total[b, j] += np.float64(v)
                squares[b, j] += np.float64(v * v)  # squared in the data's dtype
                nnz[b, j] += 1
    return total, squares, nnz


def group_moments(
    band: sparse.csr_matrix, rows: np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group (``codes`` of the columns, negative: left out) and row of ``rows`` (bool
    mask): the sum and the sum of squares (squared in the data's dtype, summed in float64)
    and the non-zeros."""
    picked = np.flatnonzero(rows)
    codes = np.asarray(codes, dtype=np.int64)
    return _group_moments(band.indptr, band.indices, band.data, picked, codes, n_groups)


@compiled
def _clipped_sums(indptr, indices, data, rows, codes, clip):  # pragma: no cover - compiled
    total = np.zeros(clip.shape)
    squares = np.zeros(clip.shape)
    nnz = np.zeros(clip.shape, dtype=np.int64)
    for j in range(rows.size):
        r = rows[j]
        for k in range(indptr[r], indptr[r + 1]):
            b = codes[indices[k]]
            if b >= 0:
                v = min(np.float64(data[k]), clip[b, j])
                total[b, j] += v
                squares[b, j] += v * v
                nnz[b, j] += 1
    return total, squares, nnz


def clipped_sums(
    band: sparse.csr_matrix, rows: np.ndarray, codes: np.ndarray, clip: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per group (``codes`` of the columns, negative: left out) and row of ``rows`` (bool
    mask): sum and sum of squares (float64) of the values clipped at ``clip`` (groups x
    picked rows); the zeros add ``min(0, clip)``."""
    picked = np.flatnonzero(rows)
    codes = np.asarray(codes, dtype=np.int64)
    clip = np.ascontiguousarray(clip, dtype=np.float64)
    total, squares, nnz = _clipped_sums(band.indptr, band.indices, band.data, picked, codes, clip)
    zeros = np.bincount(codes[codes >= 0], minlength=clip.shape[0])[:, None] - nnz
    low = np.minimum(clip, 0.0)
    return total + zeros * low, squares + zeros * low * low


@compiled
def _positive_counts(indptr, indices, data, columns):  # pragma: no cover - compiled
    n_rows = indptr.size - 1
    cells = np.zeros(n_rows, dtype=np.int64)
    total = np.zeros(n_rows)
    for r in range(n_rows):
        for k in range(indptr[r], indptr[r + 1]):
            if columns[indices[k]]:
                v = data[k]
                cells[r] += v > 0
                total[r] += np.float64(v)
    return cells, total


def positive_counts(band: sparse.csr_matrix, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, over the columns where ``columns`` is true: how many values are positive,
    and their float64 sum."""
    return _positive_counts(band.indptr, band.indices, band.data, np.asarray(columns))


@compiled
def _dense_rows(indptr, indices, data, rows, positions, out):  # pragma: no cover - compiled
    for j in range(rows.size):
        r = rows[j]
        for k in range(indptr[r], indptr[r + 1]):
            p = positions[indices[k]]
            if p >= 0:
                out[j, p] = data[k]


def dense_rows(band: sparse.csr_matrix, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The rows of ``rows`` and columns of ``columns`` (bool masks) as a dense float64
    array (Fortran order: what BLAS takes without a copy)."""
    picked = np.flatnonzero(rows)
    columns = np.asarray(columns)
    positions = np.where(columns, np.cumsum(columns) - 1, -1).astype(np.int64)
    out = np.zeros((picked.size, int(columns.sum())), order="F")
    _dense_rows(band.indptr, band.indices, band.data, picked, positions, out)
    return out


# BLAS dsyrk of SciPy's Cython BLAS: called from compiled code, without the GIL (SciPy's
# and NumPy's Python-level BLAS calls hold it, or run one at a time across threads)
_DSYRK = cython_function("scipy.linalg.cython_blas", "dsyrk", 10)


@compiled(cache=False)
def _syrk_add(gram, x, n, k, ints, floats, flags):  # pragma: no cover - compiled
    ints[0] = n
    ints[1] = k
    _DSYRK(
        flags[0:].ctypes.data,  # uplo "U"
        flags[1:].ctypes.data,  # trans "N"
        ints[0:].ctypes.data,
        ints[1:].ctypes.data,
        floats[0:].ctypes.data,  # alpha 1
        x.ctypes.data,
        ints[0:].ctypes.data,  # lda = n
        floats[1:].ctypes.data,  # beta 1
        gram.ctypes.data,
        ints[0:].ctypes.data,  # ldc = n
    )


@compiled
def _dot(a, b):  # pragma: no cover - compiled
    return np.dot(a, b)


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` of two contiguous float64 matrices through BLAS without the GIL (NumPy's
    matrix product runs one at a time across threads)."""
    a, b = (np.ascontiguousarray(m, dtype=np.float64) for m in (a, b))
    return _dot(a, b)


def gram_add(gram: np.ndarray, x: np.ndarray) -> None:
    """``gram += x @ x.T`` on the upper triangle, in place: ``gram`` (n x n) and ``x``
    (n x k) Fortran-ordered float64; BLAS ``dsyrk`` without the GIL."""
    n, k = x.shape
    if not (gram.shape == (n, n) and gram.flags.f_contiguous and x.flags.f_contiguous):
        raise ValueError("gram_add needs an n x n and an n x k Fortran-ordered array")
    if gram.dtype != np.float64 or x.dtype != np.float64:
        raise ValueError("gram_add needs float64 arrays")
    if n and k:
        ints = np.zeros(2, dtype=np.int32)
        floats = np.ones(2, dtype=np.float64)
        flags = np.frombuffer(b"UN", dtype=np.uint8).copy()
        _syrk_add(gram, x, n, k, ints, floats, flags)


_BLAS: dict[str, Any] = {"controller": None, "limiter": None, "users": 0}
_BLAS_LOCK = threading.Lock()


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread while any task inside this block runs (the last one out
    restores the limit found).  The scheduler runs a task per core already: BLAS threads
    on top of those wait on each other (the Gram pass of 160,796 cells: 28.7 s with two,
    22.1 s with one).

    Examples
    --------
    >>> with one_blas_thread():
    ...     product = dot(np.eye(2), np.ones((2, 2)))
    """
    with _BLAS_LOCK:
        if _BLAS["users"] == 0:
            if _BLAS["controller"] is None:
                _BLAS["controller"] = ThreadpoolController()
            _BLAS["limiter"] = _BLAS["controller"].limit(limits=1, user_api="blas")
        _BLAS["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS["users"] -= 1
            if _BLAS["users"] == 0:
                _BLAS["limiter"].restore_original_limits()

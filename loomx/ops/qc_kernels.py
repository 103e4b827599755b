"""The compiled per-band loops of quality control (:mod:`loomx.ops.qc`): one sweep of a
full-height band of cells gives each cell's totals, non-zero and mitochondrial counts and
its top-N sums (counted in bins for whole counts, else selected: no sort per cell), and each
gene's sums, sums of squares and non-zero counts.

Examples
--------
>>> import numpy as np
>>> from loomx.ops.qc_kernels import band_stats
>>> band_stats(np.ones((4, 2)), np.zeros(4, bool), np.array([2]))["cells"][3].tolist()
[2.0, 2.0]
"""

from __future__ import annotations

import numpy as np

from loomx._hdf5.kernels import compiled

__all__ = ["band_stats"]


@compiled(fastmath={"reassoc", "contract"})
def _accumulate(block, mito):  # pragma: no cover - compiled
    """Per cell (total, non-zeros, mitochondrial total) and per gene (sum, sum of squares,
    non-zeros) of a band ``block`` (genes x cells), in one row-major sweep without
    branches (so that it vectorises)."""
    n_genes, n_cells = block.shape
    total = np.zeros(n_cells)
    nnz = np.zeros(n_cells, dtype=np.int64)
    mt = np.zeros(n_cells)
    gsum = np.zeros(n_genes)
    gsq = np.zeros(n_genes)
    gnnz = np.zeros(n_genes, dtype=np.int64)
    for g in range(n_genes):
        row = block[g]
        s = 0.0
        q = 0.0
        k = 0
        for c in range(n_cells):
            x = np.float64(row[c])
            nz = x != 0
            total[c] += x
            nnz[c] += nz
            s += x
            q += x * x
            k += nz
        if mito[g]:
            for c in range(n_cells):
                mt[c] += np.float64(row[c])
        gsum[g] = s
        gsq[g] = q
        gnnz[g] = k
    return total, nnz, mt, gsum, gsq, gnnz


@compiled
def _select(a, lo, hi, k):  # pragma: no cover - compiled
    """Rearrange ``a[lo:hi]`` in place so that ``a[k]`` holds the value of rank ``k``
    (ascending), values before it no greater and values after it no smaller (3-way
    quickselect, median-of-three pivots: fast with the many ties of counts)."""
    while hi - lo > 1:
        x, y, z = a[lo], a[(lo + hi) // 2], a[hi - 1]
        pivot = max(min(x, y), min(max(x, y), z))
        lt = lo
        i = lo
        gt = hi
        while i < gt:
            v = a[i]
            if v < pivot:
                a[i] = a[lt]
                a[lt] = v
                lt += 1
                i += 1
            elif v > pivot:
                gt -= 1
                a[i] = a[gt]
                a[gt] = v
            else:
                i += 1
        if k < lt:
            hi = lt
        elif k >= gt:
            lo = gt
        else:
            return


@compiled
def _select_top_sums(block, nnz, ns):  # pragma: no cover - compiled
    """Sum of the ``n`` largest values of each cell (column) for each ``n`` in ``ns``
    (ascending), zeros included: the non-zeros of each cell are compacted, padded with
    enough zeros, then selected rank by rank from the largest ``n`` down."""
    n_genes, n_cells = block.shape
    top = np.zeros((ns.size, n_cells))
    if ns.size == 0:
        return top
    top_n = ns[-1]
    offsets = np.zeros(n_cells + 1, dtype=np.int64)
    for c in range(n_cells):
        offsets[c + 1] = offsets[c] + nnz[c] + min(n_genes - nnz[c], top_n)
    values = np.zeros(offsets[-1])  # the padding zeros are already there
    fill = offsets[:-1].copy()
    for g in range(n_genes):
        row = block[g]
        for c in range(n_cells):
            v = row[c]
            if v != 0:
                values[fill[c]] = v
                fill[c] += 1
    for c in range(n_cells):
        lo = offsets[c]
        hi = offsets[c + 1]
        for i in range(ns.size - 1, -1, -1):
            start = max(lo, hi - ns[i])
            if start > lo:
                _select(values, lo, hi, start)
                lo = start
            acc = 0.0
            for j in range(lo, hi):
                acc += values[j]
            top[i, c] = acc
    return top


_BINS = 256
"""Whole counts below this are counted in bins by :func:`_count_top_sums`; larger values
are kept and sorted (few per cell in count data)."""

_TILE = 512
"""Cells counted at once by :func:`_count_top_sums` (its bins: ``_TILE * _BINS`` int32)."""


@compiled
def _count_top_sums(block, ns):  # pragma: no cover - compiled
    """:func:`_top_sums` of counts without selection: one sweep counts each cell's whole
    values below ``_BINS`` in bins and keeps the larger ones (each gene's non-zeros are
    listed first, branch-free: a branch per value mispredicts at every non-zero of sparse
    counts); then the largest values are taken bin by bin from the top.  ``ok`` is False
    (and ``top`` unfinished) as soon as a value is negative or a non-whole number below
    ``_BINS``."""
    n_genes, n_cells = block.shape
    top = np.zeros((ns.size, n_cells))
    hist = np.zeros((_TILE, _BINS), np.int32)
    kept = np.empty(64)
    kept_cell = np.empty(64, np.int64)
    nonzero = np.empty(_TILE, np.int64)
    for t0 in range(0, n_cells, _TILE):
        t1 = min(t0 + _TILE, n_cells)
        hist[:] = 0
        n_kept = 0
        for g in range(n_genes):
            row = block[g]
            m = 0
            for c in range(t0, t1):  # the row's non-zeros, without a branch per value
                nonzero[m] = c
                m += row[c] != 0
            for j in range(m):
                c = nonzero[j]
                v = row[c]
                f = np.float64(v)
                if f >= _BINS:
                    if n_kept == kept.size:
                        kept = np.concatenate((kept, np.empty(kept.size)))
                        kept_cell = np.concatenate((kept_cell, np.empty(kept_cell.size, np.int64)))
                    kept[n_kept] = f
                    kept_cell[n_kept] = c
                    n_kept += 1
                else:
                    b = np.int64(f)
                    if b != f or f < 0:
                        return top, False
                    hist[c - t0, b] += 1
        order = np.argsort(kept_cell[:n_kept], kind="mergesort")
        start = 0
        for c in range(t0, t1):
            stop = start
            while stop < n_kept and kept_cell[order[stop]] == c:
                stop += 1
            large = np.sort(kept[order[start:stop]])
            start = stop
            i = 0
            taken = 0
            acc = 0.0
            for j in range(large.size - 1, -1, -1):
                while i < ns.size and taken == ns[i]:
                    top[i, c] = acc
                    i += 1
                if i == ns.size:
                    break
                acc += large[j]
                taken += 1
            for b in range(_BINS - 1, 0, -1):
                k = np.int64(hist[c - t0, b])
                while k > 0 and i < ns.size:
                    need = ns[i] - taken
                    if need <= k:
                        acc += need * b
                        taken += need
                        k -= need
                        top[i, c] = acc
                        i += 1
                    else:
                        acc += k * b
                        taken += k
                        k = 0
                if i == ns.size:
                    break
            while i < ns.size:
                top[i, c] = acc
                i += 1
    return top, True


@compiled
def _top_sums(block, nnz, ns):  # pragma: no cover - compiled
    """Sum of the ``n`` largest values of each cell (column) for each ``n`` in ``ns``
    (ascending), zeros included: counted in bins for counts (:func:`_count_top_sums`),
    else selected (:func:`_select_top_sums`); no sort per cell either way."""
    if ns.size == 0:
        return np.zeros((0, block.shape[1]))
    top, ok = _count_top_sums(block, ns)
    if ok:
        return top
    return _select_top_sums(block, nnz, ns)


_KERNEL_DTYPES = frozenset("bBhHiIlLqQfd")


def band_stats(block: np.ndarray, mito: np.ndarray, ns: np.ndarray) -> dict[str, np.ndarray]:
    """What QC needs from one full-height band of cells (genes x cells), in one sweep:
    per cell the totals, non-zero counts, mitochondrial sums and the top-``ns`` sums
    (``"cells"``, rows in that order); per gene the sums, sums of squares and non-zero
    counts.

    Examples
    --------
    >>> import numpy as np
    >>> stats = band_stats(np.eye(3), np.array([True, False, False]), np.array([1]))
    >>> stats["cells"].shape, stats["nnz"].tolist()
    ((4, 3), [1, 1, 1])
    """
    block = np.asarray(block)
    if block.dtype.char not in _KERNEL_DTYPES:
        block = block.astype(np.float64)
    block = np.ascontiguousarray(block)
    total, nnz, mt, gsum, gsq, gnnz = _accumulate(block, mito)
    top = _top_sums(block, nnz, ns)
    return {
        "cells": np.vstack((total, nnz, mt, top)),
        "sum": gsum,
        "sumsq": gsq,
        "nnz": gnnz,
    }

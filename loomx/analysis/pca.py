"""Principal components as :func:`scanpy.pp.pca` gives them, out of core: the Gram matrix of
the selected genes accumulated band by band (one pass), its eigendecomposition in memory
(genes x genes), and the projection of the cells as a lazy column attribute (a second pass
when computed).

Results use scanpy's names: ``X_pca`` (column attribute, cells x ``n_comps``), ``PCs`` (row
attribute, genes x ``n_comps``, zero rows outside the mask), and the global attributes
``pca_variance`` and ``pca_variance_ratio``.  Signs follow scikit-learn's ``svd_flip``
(the largest loading of each component is positive), as scanpy's ``arpack`` solution.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import linalg

from loomx._format import spec as _spec
from loomx.analysis import band_kernels as _kernels
from loomx.analysis import bands as _bands
from loomx.errors import LoomNameError

__all__ = ["GRAM_CELLS", "pca"]


GRAM_CELLS = 2048
"""Cells per Gram task: its genes x genes result is written once per task, not per band
(a band of 128 cells of 2,000 genes is 2 MB; its Gram matrix is 32 MB)."""


def _selected(band: Any, genes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The selected ``genes`` of the valid cells of a CSR band, dense float64."""
    return _kernels.dense_rows(band, genes, valid)


def _gram(parts: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Count, per-gene sums and the Gram matrix (upper triangle, float64) of the cells of
    ``parts`` (genes x cells each)."""
    size = parts[0].shape[0]
    gram = np.zeros((size, size), order="F")
    # one BLAS call per task: its genes x genes result is written once per 2,048 cells
    with _kernels.one_blas_thread():
        _kernels.gram_add(gram, np.asfortranarray(np.concatenate(parts, axis=1)))
    return {
        "n": np.array(sum(x.shape[1] for x in parts)),
        "sum": np.sum([x.sum(axis=1) for x in parts], axis=0),
        "gram": gram,
    }


def _project(
    band: Any, genes: np.ndarray, mean: np.ndarray, loadings: np.ndarray, dtype: np.dtype
) -> np.ndarray:
    x = _kernels.dense_rows(band, genes, np.ones(band.shape[1], bool))
    with _kernels.one_blas_thread():
        return _kernels.dot(loadings.T, x - mean[:, None]).astype(dtype)


def _components(
    sums: dict[str, np.ndarray], n_comps: int, zero_center: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loadings (genes x n_comps), variances, variance ratios and the centre, as
    scikit-learn's PCA (``zero_center``) or TruncatedSVD gives them."""
    n = int(sums["n"])
    mean = sums["sum"] / n
    gram = np.triu(sums["gram"]) + np.triu(sums["gram"], 1).T
    moment = gram / n - np.outer(mean, mean)  # covariance with ddof 0
    matrix = moment * (n / (n - 1)) if zero_center else gram
    size = matrix.shape[0]  # only the top n_comps pairs: far faster than all of them
    values, vectors = linalg.eigh(matrix, subset_by_index=[size - n_comps, size - 1])
    order = np.argsort(values)[::-1]
    vectors = vectors[:, order]
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])])
    vectors = vectors * np.where(signs == 0, 1, signs)
    if zero_center:
        variance = np.clip(values[order], 0, None)
        ratio = variance / np.trace(matrix)
        return vectors, variance, ratio, mean
    variance = np.einsum("gk,gh,hk->k", vectors, moment, vectors)  # var of X @ V, ddof 0
    ratio = variance / np.trace(moment)
    return vectors, variance, ratio, np.zeros_like(mean)


def pca(
    ds: xr.Dataset,
    n_comps: int | None = None,
    *,
    zero_center: bool = True,
    mask_var: str | None = "highly_variable",
    layer: str | None = None,
    compute: Any = dask.compute,
) -> xr.Dataset:
    """Principal components of the valid cells over the selected genes, as
    :func:`scanpy.pp.pca` (``svd_solver="arpack"``) computes them.

    The fit runs when called: one pass over ``layer`` accumulating the Gram matrix of the
    genes in ``mask_var`` (a row attribute; all valid genes when it is ``None`` or
    missing), then an eigendecomposition of that genes x genes matrix.  ``X_pca`` is lazy:
    one more pass when computed, for every cell (also those not valid).

    Parameters
    ----------
    n_comps
        Components; default as scanpy: 50, or one less than the smaller side when that
        is at most 50.
    zero_center
        Centre the genes (PCA); ``False``: scikit-learn's TruncatedSVD instead.
    mask_var
        Row attribute of the genes to use.
    layer
        The layer read; default the one the previous step produced.
    compute
        Computes the Gram matrix, like :func:`dask.compute` (the default).

    Examples
    --------
    >>> ds = loomx.pp.pca(loomx.pp.highly_variable_genes(ds, n_top_genes=2000))  # doctest: +SKIP
    >>> ds["X_pca"].shape  # doctest: +SKIP
    (160796, 50)
    """
    source = _bands.source_layer(ds, layer)
    data = _bands.bands(ds, source)
    genes, valid = _bands.gene_mask(ds), _bands.cell_mask(ds)
    if mask_var is not None:
        name = _bands.attr_name(ds, _spec.ROW_ATTRS, mask_var)
        if name is not None:
            genes = genes & np.asarray(ds[name].values).astype(bool)
        elif mask_var != "highly_variable":
            raise LoomNameError(f"no row attribute {mask_var!r} (mask_var)")
    if n_comps is None:
        smaller = min(int(genes.sum()), int(valid.sum()))
        n_comps = smaller - 1 if smaller <= 50 else 50
    if not 0 < n_comps <= genes.sum():
        raise ValueError(f"n_comps={n_comps}; expected 1 to {int(genes.sum())} (the genes used)")
    parts = _bands.band_map(data, _selected, genes, cells={"valid": valid}, fresh=False)
    group = max(1, GRAM_CELLS // max(1, data.chunks[1][0]))
    gram = dask.delayed(_gram, pure=True)
    (sums,) = compute(
        _bands.tree_sum([gram(parts[i : i + group]) for i in range(0, len(parts), group)])
    )
    loadings, variance, ratio, mean = _components(sums, n_comps, zero_center)
    dtype = data.dtype if data.dtype.kind == "f" else np.dtype(np.float64)
    parts = _bands.band_map(data, _project, genes, mean, loadings, dtype, fresh=False)
    projected = da.concatenate(
        [
            da.from_delayed(part, (n_comps, width), dtype=dtype)
            for part, width in zip(parts, data.chunks[1], strict=True)
        ],
        axis=1,
    ).T
    pcs = np.zeros((genes.size, n_comps), dtype=dtype)
    pcs[genes] = loadings
    return _bands.assign_attrs(
        ds,
        rows={"PCs": pcs},
        cols={"X_pca": projected},
        globals_={"pca_variance": variance, "pca_variance_ratio": ratio},
    )

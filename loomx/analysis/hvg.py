"""Highly variable genes as :func:`scanpy.pp.highly_variable_genes` selects them, out of
core: one pass of per-batch, per-gene counts, sums and sums of squares over bands of cells
(``seurat``, ``cell_ranger``), and for ``seurat_v3`` a second pass of sums of the clipped
values; the selection itself runs on those gene vectors, as scanpy's does.

Results are scanpy's row attributes (``highly_variable``, ``means``, ``dispersions``,
``dispersions_norm``; ``variances``, ``variances_norm``, ``highly_variable_rank`` for
``seurat_v3``; ``highly_variable_nbatches``, ``highly_variable_intersection`` with
``batch_key``) and the conventions' ``Selected`` (0/1).  Genes that are not valid are
left out, as after :func:`scanpy.pp.filter_genes`: not selected, NaN statistics.
"""

from __future__ import annotations

import warnings
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx.analysis import band_kernels as _kernels
from loomx.analysis import bands as _bands
from loomx.errors import LoomNameError

__all__ = ["FLAVORS", "highly_variable_genes"]

FLAVORS = ("seurat", "cell_ranger", "seurat_v3")

_DISPERSION_COLUMNS = {
    "highly_variable": bool,
    "means": np.float64,
    "dispersions": np.float64,
    "dispersions_norm": np.float32,
}
_V3_COLUMNS = {
    "highly_variable": bool,
    "highly_variable_rank": np.float32,
    "means": np.float64,
    "variances": np.float64,
    "variances_norm": np.float64,
}
_BATCH_COLUMNS = {"highly_variable_nbatches": np.int64, "highly_variable_intersection": bool}


# ------------------------------------------------------------------------------- band sums


def group_moments(
    band: Any, dtype: np.dtype, genes: np.ndarray, n_batches: int, expm1: float | None, codes: Any
) -> dict[str, np.ndarray]:
    """Per batch and gene of a CSR band's valid cells (``codes`` >= 0): count, sum, sum of
    squares (in ``dtype``, as scanpy squares) and non-zeros; ``expm1``: of
    ``expm1(x * expm1)``, scanpy's ``seurat`` flavor."""
    values = np.asarray(band.data, dtype=dtype)
    if expm1 is not None:
        values = np.expm1(values if expm1 == 1 else (values * expm1).astype(dtype))
    band = _kernels.with_values(band, values)
    codes = np.asarray(codes)
    total, squares, nnz = _kernels.group_moments(band, genes, codes, n_batches)
    n = np.bincount(codes[codes >= 0], minlength=n_batches).astype(np.int64)
    return {"n": n, "sum": total, "sumsq": squares, "nnz": nnz}


def _clipped_sums(
    band: Any, genes: np.ndarray, clip: np.ndarray, codes: Any
) -> dict[str, np.ndarray]:
    """Per batch and gene: sum and sum of squares of the values clipped at ``clip`` (a
    (batches, genes) array), in float64 as scanpy's ``seurat_v3``."""
    total, squares = _kernels.clipped_sums(band, genes, np.asarray(codes), clip)
    return {"sum": total, "sumsq": squares}


def _mean_var(n: int, total: np.ndarray, sumsq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scanpy's ``_get_mean_var`` from sums: mean and unbiased variance."""
    mean = total / n
    var = sumsq / n - mean**2
    if n != 1:
        var = var * (n / (n - 1))
    return mean, var


# ------------------------------------------------------------- seurat and cell_ranger (scanpy)


def _mad(a: Any) -> float:
    from statsmodels.robust import mad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return mad(a)


def _dispersion_frame(
    mean: np.ndarray, var: np.ndarray, flavor: str, n_bins: int, cutoff: Any, index: pd.Index
) -> pd.DataFrame:
    """scanpy's ``_highly_variable_genes_single_batch`` after its mean and variance."""
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    dispersion = var / mean
    if flavor == "seurat":
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
        mean = np.log1p(mean)
    df = pd.DataFrame({"means": mean, "dispersions": dispersion}, index=index)
    if flavor == "seurat":
        bins: Any = n_bins
    else:
        bins = np.r_[-np.inf, np.percentile(df["means"], np.arange(10, 105, 5)), np.inf]
    df["mean_bin"] = pd.cut(df["means"], bins=bins)
    grouped = df.groupby("mean_bin", observed=True)["dispersions"]
    if flavor == "seurat":
        stats = grouped.agg(avg="mean", dev="std")
        single = stats["dev"].isnull()
        stats.loc[single, "dev"] = stats.loc[single, "avg"]
        stats.loc[single, "avg"] = 0
    else:
        stats = grouped.agg(avg="median", dev=_mad)
    stats = stats.loc[df["mean_bin"]].set_index(df.index)
    df["dispersions_norm"] = (df["dispersions"] - stats["avg"]) / stats["dev"]
    norm = df["dispersions_norm"].to_numpy()
    if isinstance(cutoff, int):
        n_top = min(cutoff, len(df))
        finite = norm[~np.isnan(norm)]
        n_top = min(n_top, finite.size)
        threshold = np.sort(finite)[::-1][n_top - 1] if n_top else np.inf
        df["highly_variable"] = np.nan_to_num(norm, nan=-np.inf) >= threshold
    else:
        min_mean, max_mean, min_disp, max_disp = cutoff
        norm = np.nan_to_num(norm)
        df["highly_variable"] = (
            (mean > min_mean) & (mean < max_mean) & (norm > min_disp) & (norm < max_disp)
        )
    return df.drop(columns="mean_bin")


def _dispersion_genes(
    moments: dict[str, np.ndarray], flavor: str, n_bins: int, cutoff: Any, index: pd.Index
) -> dict[str, np.ndarray]:
    n_batches = moments["n"].size
    if n_batches == 1:
        mean, var = _mean_var(int(moments["n"][0]), moments["sum"][0], moments["sumsq"][0])
        df = _dispersion_frame(mean, var, flavor, n_bins, cutoff, index)
        return {k: df[k].to_numpy() for k in _DISPERSION_COLUMNS}
    frames = []
    for b in range(n_batches):
        expressed = moments["nnz"][b] > 0
        mean, var = _mean_var(
            int(moments["n"][b]), moments["sum"][b][expressed], moments["sumsq"][b][expressed]
        )
        df = _dispersion_frame(mean, var, flavor, n_bins, cutoff, index[expressed])
        missing = pd.DataFrame(0.0, index=index[~expressed], columns=df.columns)
        missing["highly_variable"] = False
        frames.append(pd.concat([df, missing]).loc[index])
    df = pd.concat(frames, axis=0)
    df["highly_variable"] = df["highly_variable"].astype(int)
    df = df.groupby(df.index, observed=True).agg(
        {
            "means": "mean",
            "dispersions": "mean",
            "dispersions_norm": "mean",
            "highly_variable": "sum",
        }
    )
    df["highly_variable_nbatches"] = df["highly_variable"]
    df["highly_variable_intersection"] = df["highly_variable_nbatches"] == n_batches
    if isinstance(cutoff, int):
        df = df.sort_values(
            ["highly_variable_nbatches", "dispersions_norm"], ascending=False, na_position="last"
        )
        df["highly_variable"] = np.arange(df.shape[0]) < cutoff
    else:
        min_mean, max_mean, min_disp, max_disp = cutoff
        df["dispersions_norm"] = df["dispersions_norm"].fillna(0)
        df["highly_variable"] = (
            (df["means"] > min_mean)
            & (df["means"] < max_mean)
            & (df["dispersions_norm"] > min_disp)
            & (df["dispersions_norm"] < max_disp)
        )
    df = df.loc[index]
    return {k: df[k].to_numpy() for k in {**_DISPERSION_COLUMNS, **_BATCH_COLUMNS}}


# ------------------------------------------------------------------------ seurat_v3 (scanpy)


def _v3_clip(moments: dict[str, np.ndarray], span: float) -> dict[str, np.ndarray]:
    """Per batch: the loess fit of log variance on log mean, and the clipping values."""
    from skmisc.loess import loess

    n_batches, n_genes = moments["sum"].shape
    reg_std = np.zeros((n_batches, n_genes))
    clip = np.zeros((n_batches, n_genes))
    means = np.zeros((n_batches, n_genes))
    for b in range(n_batches):
        n = int(moments["n"][b])
        mean, var = _mean_var(n, moments["sum"][b], moments["sumsq"][b])
        not_const = var > 0
        estimate = np.zeros(n_genes)
        model = loess(np.log10(mean[not_const]), np.log10(var[not_const]), span=span, degree=2)
        model.fit()
        estimate[not_const] = model.outputs.fitted_values
        reg_std[b] = np.sqrt(10**estimate)
        clip[b] = reg_std[b] * np.sqrt(n) + mean
        means[b] = mean
    return {"reg_std": reg_std, "clip": clip, "means": means, "n": moments["n"]}


def _v3_genes(
    moments: dict[str, np.ndarray],
    fit: dict[str, np.ndarray],
    clipped: dict[str, np.ndarray],
    n_top: int,
    index: pd.Index,
) -> dict[str, np.ndarray]:
    n_all = int(moments["n"].sum())
    mean_all, var_all = _mean_var(n_all, moments["sum"].sum(0), moments["sumsq"].sum(0))
    norm_vars = []
    for b in range(moments["n"].size):
        n, mean, reg_std = int(fit["n"][b]), fit["means"][b], fit["reg_std"][b]
        norm = (1 / ((n - 1) * np.square(reg_std))) * (
            (n * np.square(mean)) + clipped["sumsq"][b] - 2 * clipped["sum"][b] * mean
        )
        norm_vars.append(norm.reshape(1, -1))
    norm_vars = np.concatenate(norm_vars, axis=0)
    ranked = np.argsort(np.argsort(-norm_vars, axis=1), axis=1).astype(np.float32)
    nbatches = np.sum((ranked < n_top).astype(int), axis=0)
    ranked[ranked >= n_top] = np.nan
    median_ranked = np.ma.median(np.ma.masked_invalid(ranked), axis=0).filled(np.nan)
    df = pd.DataFrame(index=index)
    df["means"], df["variances"] = mean_all, var_all
    df["highly_variable_nbatches"] = nbatches
    df["highly_variable_rank"] = median_ranked
    df["variances_norm"] = np.mean(norm_vars, axis=0)
    cols = ["highly_variable_rank", "highly_variable_nbatches"]
    order = df[cols].sort_values(cols, ascending=[True, False], na_position="last").index
    df["highly_variable"] = False
    df.loc[order[:n_top], "highly_variable"] = True
    return {k: df[k].to_numpy() for k in {**_V3_COLUMNS, "highly_variable_nbatches": 0}}


# ---------------------------------------------------------------------------------- the step


def _expand(values: np.ndarray, genes: np.ndarray, dtype: Any) -> np.ndarray:
    """Values of the valid genes placed in a vector of every gene (NaN, False or 0 else)."""
    dtype = np.dtype(dtype)
    fill = np.nan if dtype.kind == "f" else 0
    out = np.full(genes.size, fill, dtype=dtype)
    out[genes] = np.asarray(values).astype(dtype)
    return out


def _gene_index(ds: xr.Dataset, genes: np.ndarray) -> pd.Index:
    """Unique labels of the valid genes, in file order (scanpy's ``var_names``: they only
    break ties, as scanpy's sorting by name does)."""
    name = _bands.attr_name(ds, _spec.ROW_ATTRS, "Gene")
    if name is not None:
        labels = pd.Index(np.asarray(ds[name].values).astype(str)[genes])
        if labels.is_unique:
            return labels
    return pd.Index(np.flatnonzero(genes).astype(str))


def _batch_codes(
    ds: xr.Dataset, batch_key: str | None, valid: np.ndarray
) -> tuple[np.ndarray, int]:
    """Per cell: its batch's number (sorted batch values), -1 for cells not valid."""
    if batch_key is None:
        return np.where(valid, 0, -1), 1
    name = _bands.attr_name(ds, _spec.COL_ATTRS, batch_key)
    if name is None:
        raise LoomNameError(f"no column attribute {batch_key!r} (batch_key)")
    values = np.asarray(ds[name].values)
    _, codes = np.unique(values[valid], return_inverse=True)
    out = np.full(values.size, -1, np.int64)
    out[valid] = codes
    return out, int(codes.max()) + 1 if codes.size else 0


def highly_variable_genes(
    ds: xr.Dataset,
    *,
    layer: str | None = None,
    n_top_genes: int | None = None,
    min_disp: float = 0.5,
    max_disp: float = np.inf,
    min_mean: float = 0.0125,
    max_mean: float = 3,
    span: float = 0.3,
    n_bins: int = 20,
    flavor: str = "seurat",
    batch_key: str | None = None,
) -> xr.Dataset:
    """Mark highly variable genes, as :func:`scanpy.pp.highly_variable_genes`.

    Parameters are scanpy's.  ``seurat`` and ``cell_ranger`` expect log-normalized data
    (default: the layer the previous step produced); ``seurat_v3`` expects counts and
    reads ``matrix`` unless ``layer`` says otherwise (scanpy users pass the counts layer).
    ``seurat`` undoes the log with the base recorded by :func:`loomx.pp.log1p`.

    Returns
    -------
    xarray.Dataset
        ``ds`` with scanpy's result columns and ``Selected`` as lazy row attributes: one
        read of the layer (two for ``seurat_v3``) when they are computed together.

    Examples
    --------
    >>> ds = loomx.pp.highly_variable_genes(ds, n_top_genes=2000)  # doctest: +SKIP
    >>> int(ds["Selected"].sum())  # doctest: +SKIP
    2000
    """
    if flavor not in FLAVORS:
        raise ValueError(f"flavor {flavor!r}; expected one of {FLAVORS}")
    v3 = flavor == "seurat_v3"
    source = _bands.source_layer(ds, _spec.MATRIX if v3 and layer is None else layer)
    data = _bands.bands(ds, source)
    dtype = data.dtype if data.dtype.kind == "f" else np.dtype(np.float64)
    genes, valid = _bands.gene_mask(ds), _bands.cell_mask(ds)
    codes, n_batches = _batch_codes(ds, batch_key, valid)
    expm1 = None
    if flavor == "seurat":
        base = ds[source].attrs.get("base", "e")
        expm1 = 1.0 if base in ("e", None) else float(np.log(float(base)))
    index = _gene_index(ds, genes)
    moments = _bands.band_sums(
        data, group_moments, dtype, genes, n_batches, expm1, cells={"codes": codes}
    )
    if v3:
        n_top = 2000 if n_top_genes is None else int(n_top_genes)
        fit = dask.delayed(_v3_clip, pure=True)(moments, span)
        clipped = _bands.band_sums(data, _clipped_sums, genes, fit["clip"], cells={"codes": codes})
        result = dask.delayed(_v3_genes, pure=True)(moments, fit, clipped, n_top, index)
        columns = dict(_V3_COLUMNS)
        if batch_key is not None:
            columns["highly_variable_nbatches"] = np.int64
    else:
        cutoff: Any = (
            int(n_top_genes)
            if n_top_genes is not None
            else (min_mean, max_mean, min_disp, max_disp)
        )
        result = dask.delayed(_dispersion_genes, pure=True)(moments, flavor, n_bins, cutoff, index)
        columns = dict(_DISPERSION_COLUMNS)
        if batch_key is not None:
            columns.update(_BATCH_COLUMNS)
    n = ds.sizes[conv.dataset_dims(ds)[0]]
    rows = {
        key: da.from_delayed(
            dask.delayed(_expand, pure=True)(result[key], genes, dtype_), (n,), dtype=dtype_
        )
        for key, dtype_ in columns.items()
    }
    rows["Selected"] = rows["highly_variable"].astype(np.uint8)
    out = _bands.assign_attrs(ds, rows=rows)
    out.attrs["hvg_flavor"] = flavor
    return out

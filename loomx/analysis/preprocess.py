"""scanpy's preprocessing as lazy layers and Loom attributes: ``normalize_total``, ``log1p``,
``scale`` (each a new lazy layer, one numpy function per band of cells), ``filter_genes``
(the row attribute ``Valid``) and ``mark_outliers`` (MAD outliers, the column attribute
``Valid``).

Names, defaults and arithmetic are scanpy's (1.11): a layer normalized here equals
``scanpy.pp.normalize_total`` on the valid cells and genes of the same counts, and so on.
Cells and genes that are not valid stay in the layers (nothing is copied) and are left out
of every statistic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx.analysis import band_kernels as _kernels
from loomx.analysis import bands as _bands
from loomx.errors import LoomNameError
from loomx.ops.qc import calculate_qc_metrics

__all__ = [
    "OUTLIER_METRICS",
    "calculate_qc_metrics",
    "filter_genes",
    "log1p",
    "mark_outliers",
    "median_total",
    "normalize_total",
    "scale",
]


def _float_dtype(dtype: np.dtype, integer_as: Any = np.float32) -> np.dtype:
    return np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.dtype(integer_as)


# ---------------------------------------------------------------------------- normalize_total


def _as_dtype(band: Any, dtype: np.dtype) -> Any:
    """A CSR band with its values in ``dtype`` (the band itself when they are)."""
    return band if band.dtype == dtype else band.astype(dtype)


def _totals(band: Any, genes: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Per-cell sums over ``genes`` of a CSR band, accumulated in float64, given in
    ``dtype`` as scanpy gives them."""
    return _kernels.column_sums(band, genes).astype(dtype)


def _high_genes(
    band: Any, genes: np.ndarray, dtype: np.dtype, fraction: float, valid: np.ndarray
) -> dict[str, np.ndarray]:
    """Per gene, the valid cells of a band in which it exceeds ``fraction`` of the total."""
    band = _as_dtype(band, dtype)
    thresholds = _totals(band, genes, dtype) * fraction
    return {"high": _kernels.count_above(band, thresholds, valid)}


def _kept(genes: np.ndarray, high: Any) -> np.ndarray:
    return genes if high is None else genes & (high["high"] == 0)


def _band_totals(
    band: Any, genes: np.ndarray, dtype: np.dtype, high: Any, valid: np.ndarray
) -> np.ndarray:
    return _totals(_as_dtype(band, dtype), _kept(genes, high), dtype)[valid]


def _median_nonzero(totals: np.ndarray) -> float:
    positive = totals[totals > 0]
    return float(np.median(positive)) if positive.size else 1.0


def _size_factors(totals: np.ndarray, target: float) -> np.ndarray:
    counts = totals / target
    return np.where(counts == 0, 1, counts)


def _normalize_band(
    block: Any, genes: np.ndarray, dtype: np.dtype, high: Any, target: float
) -> np.ndarray:
    x = np.asarray(block, dtype=dtype)
    totals = x[_kept(genes, high)].sum(axis=0, dtype=np.float64).astype(dtype)
    return (x / _size_factors(totals, target)[None, :]).astype(dtype, copy=False)


def _normalize_nonzeros(
    band: Any, genes: np.ndarray, dtype: np.dtype, high: Any, target: float
) -> Any:
    band = _as_dtype(band, dtype)
    factors = _size_factors(_totals(band, _kept(genes, high), dtype), target)
    values = (band.data / factors[band.indices]).astype(dtype, copy=False)
    return _kernels.with_values(band, values)


_bands.register_sparse_step(_normalize_band, _normalize_nonzeros)


def _median_target(
    data: Any, genes: np.ndarray, dtype: np.dtype, high: Any, valid: np.ndarray
) -> Any:
    """Delayed: the median total of the valid cells with counts (scanpy's default target)."""
    totals = _bands.band_concat(data, _band_totals, genes, dtype, high, cells={"valid": valid})
    return dask.delayed(_median_nonzero, pure=True)(totals)


def median_total(ds: xr.Dataset, *, layer: str | None = None, compute: Any = dask.compute) -> float:
    """The ``target_sum`` :func:`normalize_total` takes when given none: the median total
    over the valid genes of the valid cells with counts (one read of ``layer``).

    Computing it once and passing it as ``target_sum`` gives the same layer without that
    read in every later computation.

    Examples
    --------
    >>> target = loomx.pp.median_total(ds)  # doctest: +SKIP
    >>> ds = loomx.pp.normalize_total(ds, target_sum=target)  # doctest: +SKIP
    """
    source = _bands.source_layer(ds, layer)
    data = _bands.bands(ds, source)
    dtype = _float_dtype(data.dtype)
    (target,) = compute(
        _median_target(data, _bands.gene_mask(ds), dtype, None, _bands.cell_mask(ds))
    )
    return float(target)


def normalize_total(
    ds: xr.Dataset,
    *,
    target_sum: float | None = None,
    exclude_highly_expressed: bool = False,
    max_fraction: float = 0.05,
    layer: str | None = None,
    name: str = "normalized",
) -> xr.Dataset:
    """Normalize counts per cell, as :func:`scanpy.pp.normalize_total`: a lazy layer.

    Each cell is divided by its total over the valid genes (over the genes that are not
    highly expressed, with ``exclude_highly_expressed``) and multiplied by ``target_sum``,
    by default the median total of the valid cells with counts.  Integer counts become
    float32, as in scanpy.

    Parameters
    ----------
    ds
        A Loom Dataset (:func:`loomx.open_loom`).
    target_sum, exclude_highly_expressed, max_fraction
        As in scanpy.
    layer
        The layer read; default the one the previous step produced, else ``matrix``.
    name
        The new layer.

    Returns
    -------
    xarray.Dataset
        ``ds`` with layer ``name`` (lazy: the median and the excluded genes are computed
        with it, each from one read of ``layer``).

    Examples
    --------
    >>> ds = loomx.open_loom("pbmc.loom")  # doctest: +SKIP
    >>> ds = loomx.pp.normalize_total(ds, target_sum=1e4)  # doctest: +SKIP
    >>> ds = loomx.pp.log1p(ds)  # doctest: +SKIP
    """
    source = _bands.source_layer(ds, layer)
    data = _bands.bands(ds, source)
    dtype = _float_dtype(data.dtype)
    genes, valid = _bands.gene_mask(ds), _bands.cell_mask(ds)
    high = None
    if exclude_highly_expressed:
        high = _bands.band_sums(
            data, _high_genes, genes, dtype, max_fraction, cells={"valid": valid}
        )
    if target_sum is None:
        target: Any = _median_target(data, genes, dtype, high, valid)
    else:
        target = float(target_sum)
    out = _bands.derive(data, _normalize_band, genes, dtype, high, target, dtype=dtype)
    attrs = {
        "step": "normalize_total",
        "source": source,
        "target_sum": "median" if target_sum is None else float(target_sum),
        "exclude_highly_expressed": int(exclude_highly_expressed),
        "max_fraction": float(max_fraction),
    }
    return _bands.add_layer(ds, name, out, attrs)


# ------------------------------------------------------------------------------------ log1p


def _log1p_values(x: np.ndarray, base: float | None) -> np.ndarray:
    x = x if x.dtype.kind == "f" else x.astype(np.float64)
    out = np.log1p(x)
    if base is not None:
        np.divide(out, np.log(base), out=out)
    return out


def _log1p_band(block: Any, base: float | None) -> np.ndarray:
    return _log1p_values(np.asarray(block), base)


def _log1p_nonzeros(band: Any, base: float | None) -> Any:
    values = _log1p_values(band.data, base)
    return _kernels.with_values(band, values)


_bands.register_sparse_step(_log1p_band, _log1p_nonzeros)


def log1p(
    ds: xr.Dataset, *, base: float | None = None, layer: str | None = None, name: str = "log1p"
) -> xr.Dataset:
    """``log(1 + x)``, as :func:`scanpy.pp.log1p`: a lazy layer (float layers keep their
    dtype, integers become float64); with ``base``, divided by ``log(base)``.

    Examples
    --------
    >>> ds = loomx.pp.log1p(loomx.pp.normalize_total(ds))  # doctest: +SKIP
    """
    source = _bands.source_layer(ds, layer)
    data = _bands.bands(ds, source)
    dtype = _float_dtype(data.dtype, np.float64)
    out = _bands.derive(data, _log1p_band, base, dtype=dtype)
    attrs = {"step": "log1p", "source": source, "base": "e" if base is None else float(base)}
    return _bands.add_layer(ds, name, out, attrs)


# ------------------------------------------------------------------------------------ scale


def gene_moments(band: Any, dtype: np.dtype, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Per gene, over the valid cells of a CSR band: count, sum and sum of squares as
    scanpy's ``_get_mean_var`` forms them (squares in the layer's dtype, sums in float64)."""
    codes = np.where(valid, 0, -1)
    total, squares, _ = _kernels.group_moments(
        _as_dtype(band, dtype), np.ones(band.shape[0], bool), codes, 1
    )
    return {"n": np.array(int(np.sum(valid))), "sum": total[0], "sumsq": squares[0]}


def mean_var(moments: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased variance from :func:`gene_moments`, as scanpy's ``_get_mean_var``."""
    n = int(moments["n"])
    mean = moments["sum"] / n
    var = moments["sumsq"] / n - mean**2
    if n != 1:
        var = var * (n / (n - 1))
    return mean, var


def _scale_stats(moments: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    mean, var = mean_var(moments)
    std = np.sqrt(var)
    std[std == 0] = 1
    return mean, std


def _scale_band(
    block: Any, dtype: np.dtype, stats: Any, zero_center: bool, max_value: float | None
) -> np.ndarray:
    mean, std = stats
    x = np.asarray(block, dtype=dtype)
    if zero_center:
        x = (x - mean[:, None]).astype(dtype, copy=False)
    x = (x / std[:, None]).astype(dtype, copy=False)
    if max_value is not None:
        x = np.minimum(x, max_value) if not zero_center else np.clip(x, -max_value, max_value)
    return x


def scale(
    ds: xr.Dataset,
    *,
    zero_center: bool = True,
    max_value: float | None = None,
    layer: str | None = None,
    name: str = "scaled",
) -> xr.Dataset:
    """Scale each gene to unit variance (and zero mean), as :func:`scanpy.pp.scale`: a
    lazy layer; means and standard deviations over the valid cells, one read of ``layer``.

    Examples
    --------
    >>> ds = loomx.pp.scale(ds, max_value=10)  # doctest: +SKIP
    """
    source = _bands.source_layer(ds, layer)
    data = _bands.bands(ds, source)
    dtype = _float_dtype(data.dtype, np.float64)
    moments = _bands.band_sums(data, gene_moments, dtype, cells={"valid": _bands.cell_mask(ds)})
    stats = dask.delayed(_scale_stats, pure=True)(moments)
    out = _bands.derive(data, _scale_band, dtype, stats, zero_center, max_value, dtype=dtype)
    attrs = {
        "step": "scale",
        "source": source,
        "zero_center": int(zero_center),
        "max_value": "none" if max_value is None else float(max_value),
    }
    return _bands.add_layer(ds, name, out, attrs)


# ------------------------------------------------------------------------------ filter_genes


def _gene_counts(band: Any, valid: np.ndarray) -> dict[str, np.ndarray]:
    cells, counts = _kernels.positive_counts(band, valid)
    return {"cells": cells, "counts": counts}


def filter_genes(
    ds: xr.Dataset,
    *,
    min_counts: float | None = None,
    min_cells: int | None = None,
    max_counts: float | None = None,
    max_cells: int | None = None,
    layer: str | None = None,
) -> xr.Dataset:
    """Mark genes, as :func:`scanpy.pp.filter_genes` keeps them, in the row attribute
    ``Valid`` (0/1; genes already not valid stay so), without removing any.

    Exactly one of the four thresholds, counted over the valid cells of ``layer``; the
    counts become the row attribute ``n_cells`` or ``n_counts``, as in scanpy.

    Examples
    --------
    >>> ds = loomx.pp.filter_genes(ds, min_cells=3)  # doctest: +SKIP
    """
    given = {
        k: v
        for k, v in dict(
            min_counts=min_counts, min_cells=min_cells, max_counts=max_counts, max_cells=max_cells
        ).items()
        if v is not None
    }
    if len(given) != 1:
        raise ValueError("give exactly one of min_counts, min_cells, max_counts, max_cells")
    ((key, threshold),) = given.items()
    source = _bands.source_layer(ds, layer)
    data = _bands.bands(ds, source)
    sums = _bands.band_sums(data, _gene_counts, cells={"valid": _bands.cell_mask(ds)})
    what = "cells" if key.endswith("cells") else "counts"
    n = ds.sizes[conv.dataset_dims(ds)[0]]
    counts = da.from_delayed(sums[what], (n,), dtype=np.int64 if what == "cells" else np.float64)
    keep = counts >= threshold if key.startswith("min") else counts <= threshold
    valid = (keep & _bands.gene_mask(ds)).astype(np.uint8)
    return _bands.assign_attrs(ds, rows={_bands.VALID: valid, f"n_{what}": counts})


# ----------------------------------------------------------------------------- mark_outliers

OUTLIER_METRICS = {
    "log1p_total_counts": 5.0,
    "log1p_n_genes_by_counts": 5.0,
    "pct_counts_in_top_20_genes": 5.0,
    "pct_counts_mt": 3.0,
}
"""QC metric -> MADs: the thresholds of the single-cell best-practices' ``is_outlier``."""


def mad_outliers(values: np.ndarray, nmads: float) -> tuple[np.ndarray, float, float]:
    """``values`` further than ``nmads`` median absolute deviations from their median
    (``scipy.stats.median_abs_deviation`` with scale 1), and the two thresholds."""
    values = np.asarray(values, dtype=np.float64)
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    low, high = median - nmads * mad, median + nmads * mad
    return (values < low) | (values > high), float(low), float(high)


def mark_outliers(
    ds: xr.Dataset,
    metrics: Mapping[str, float] | None = None,
    *,
    layer: str = _spec.MATRIX,
) -> xr.Dataset:
    """Mark cells that are MAD outliers in any QC metric as not valid: the column
    attribute ``Valid`` (0/1) and ``outlier_<metric>`` per metric.

    The metrics are the column attributes of :func:`loomx.calculate_qc_metrics` (computed
    from ``layer`` when missing, ``percent_top=(20,)``); a metric absent even then (no
    mitochondrial genes) is skipped.  The thresholds go to the global attributes
    ``outlier_<metric>_low`` / ``_high``.

    Examples
    --------
    >>> thresholds = {"log1p_total_counts": 5, "pct_counts_mt": 3}
    >>> ds = loomx.pp.mark_outliers(ds, thresholds)  # doctest: +SKIP
    """
    metrics = dict(OUTLIER_METRICS if metrics is None else metrics)
    found = {m: _bands.attr_name(ds, _spec.COL_ATTRS, m) for m in metrics}
    computed = None
    if any(v is None for v in found.values()):
        computed, _ = calculate_qc_metrics(ds, layer, percent_top=(20,))
    valid = _bands.cell_mask(ds).copy()
    cols: dict[str, Any] = {}
    thresholds: dict[str, float] = {}
    for metric, nmads in metrics.items():
        if found[metric] is not None:
            values = ds[found[metric]].values
        elif computed is not None and metric in computed:
            values = computed[metric].values
        else:
            continue
        out, low, high = mad_outliers(values, float(nmads))
        valid &= ~out
        cols[f"outlier_{metric}"] = out.astype(np.uint8)
        thresholds[f"outlier_{metric}_low"] = low
        thresholds[f"outlier_{metric}_high"] = high
    if not cols:
        raise LoomNameError(f"none of the QC metrics {sorted(metrics)} could be found or computed")
    cols[_bands.VALID] = valid.astype(np.uint8)
    return _bands.assign_attrs(ds, cols=cols, globals_=thresholds)

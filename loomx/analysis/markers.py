"""Marker genes as :func:`scanpy.tl.rank_genes_groups` ranks them with Welch's t-test
(``t-test``, ``t-test_overestim_var``), out of core: one pass of per-group cell counts, gene
sums and sums of squares over bands of cells; each group against the rest from the totals.

Results are row attributes with one column per group (genes in file order, groups in the
order of the global attribute ``rank_genes_groups_groups``): ``rank_genes_groups_scores``,
``_pvals``, ``_pvals_adj`` (Benjamini-Hochberg or Bonferroni) and ``_logfoldchanges``;
genes that are not valid have NaN.  :func:`top_genes` gives scanpy's per-group ranking.
"""

from __future__ import annotations

import json
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx.analysis import bands as _bands
from loomx.analysis.hvg import group_moments
from loomx.errors import LoomNameError

__all__ = ["METHODS", "RESULTS", "rank_genes_groups", "top_genes"]

METHODS = ("t-test", "t-test_overestim_var")
RESULTS = ("scores", "pvals", "pvals_adj", "logfoldchanges")
"""scanpy's result fields; each is the row attribute ``rank_genes_groups_<field>``."""


def _mean_var(n: np.ndarray, total: np.ndarray, sumsq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = total / n
    var = sumsq / n - mean**2
    return mean, np.where(n != 1, var * (n / np.maximum(n - 1, 1)), var)


def _tests(
    moments: dict[str, np.ndarray], method: str, corr_method: str, base: float | None
) -> dict[str, np.ndarray]:
    """Per gene and group (genes x groups): scanpy's scores, p-values, adjusted p-values
    and log fold changes, from per-group sums."""
    from scipy import stats

    n = moments["n"].astype(np.float64)[:, None]
    n_all = n.sum()
    mean, var = _mean_var(n, moments["sum"], moments["sumsq"])
    mean_rest, var_rest = _mean_var(
        n_all - n,
        moments["sum"].sum(0) - moments["sum"],
        moments["sumsq"].sum(0) - moments["sumsq"],
    )
    out: dict[str, list[np.ndarray]] = {key: [] for key in RESULTS}
    n_genes = mean.shape[1]
    for g in range(mean.shape[0]):
        ns_group = int(moments["n"][g])
        ns_rest = ns_group if method == "t-test_overestim_var" else int(n_all) - ns_group
        with np.errstate(invalid="ignore"):
            scores, pvals = stats.ttest_ind_from_stats(
                mean1=mean[g],
                std1=np.sqrt(var[g]),
                nobs1=ns_group,
                mean2=mean_rest[g],
                std2=np.sqrt(var_rest[g]),
                nobs2=ns_rest,
                equal_var=False,
            )
        scores[np.isnan(scores)] = 0
        pvals[np.isnan(pvals)] = 1
        if corr_method == "benjamini-hochberg":
            from statsmodels.stats.multitest import multipletests

            _, adjusted, _, _ = multipletests(pvals, alpha=0.05, method="fdr_bh")
        else:
            adjusted = np.minimum(pvals * n_genes, 1.0)
        scale = 1.0 if base is None else np.log(base)
        fold = (np.expm1(mean[g] * scale) + 1e-9) / (np.expm1(mean_rest[g] * scale) + 1e-9)
        for key, value in zip(RESULTS, (scores, pvals, adjusted, np.log2(fold)), strict=True):
            out[key].append(value)
    return {key: np.stack(values, axis=1) for key, values in out.items()}


def _place(values: np.ndarray, genes: np.ndarray) -> np.ndarray:
    out = np.full((genes.size, values.shape[1]), np.nan)
    out[genes] = values
    return out


def rank_genes_groups(
    ds: xr.Dataset,
    groupby: str = "ClusterID",
    *,
    method: str = "t-test",
    corr_method: str = "benjamini-hochberg",
    layer: str | None = None,
) -> xr.Dataset:
    """Rank genes for each group of the valid cells against the rest, as
    :func:`scanpy.tl.rank_genes_groups` with a t-test: lazy row attributes computed in one
    pass over ``layer`` (default: the layer the previous step produced, log-normalized).

    Examples
    --------
    >>> ds = loomx.tl.rank_genes_groups(ds, "ClusterID")  # doctest: +SKIP
    >>> loomx.tl.top_genes(ds, 5)  # doctest: +SKIP
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}; expected one of {METHODS}")
    if corr_method not in ("benjamini-hochberg", "bonferroni"):
        raise ValueError(f"corr_method {corr_method!r}; expected benjamini-hochberg or bonferroni")
    source = _bands.source_layer(ds, layer)
    data = _bands.bands(ds, source)
    dtype = data.dtype if data.dtype.kind == "f" else np.dtype(np.float64)
    genes, valid = _bands.gene_mask(ds), _bands.cell_mask(ds)
    name = _bands.attr_name(ds, _spec.COL_ATTRS, groupby)
    if name is None:
        raise LoomNameError(f"no column attribute {groupby!r} (groupby)")
    values = np.asarray(ds[name].values)
    groups, codes = np.unique(values[valid], return_inverse=True)
    counts = np.bincount(codes, minlength=groups.size)
    if groups.size < 2 or (counts < 2).any():
        raise ValueError(f"groups of {groupby!r}: need two or more, each of two or more cells")
    cell_codes = np.full(values.size, -1, np.int64)
    cell_codes[valid] = codes
    base = ds[source].attrs.get("base", "e")
    base = None if base in ("e", None) else float(base)
    moments = _bands.band_sums(
        data, group_moments, dtype, genes, groups.size, None, cells={"codes": cell_codes}
    )
    result = dask.delayed(_tests, pure=True)(moments, method, corr_method, base)
    n = ds.sizes[conv.dataset_dims(ds)[0]]
    rows = {
        f"rank_genes_groups_{key}": da.from_delayed(
            dask.delayed(_place, pure=True)(result[key], genes), (n, groups.size), dtype=np.float64
        )
        for key in RESULTS
    }
    params = {"groupby": groupby, "method": method, "corr_method": corr_method, "layer": source}
    return _bands.assign_attrs(
        ds,
        rows=rows,
        globals_={
            "rank_genes_groups_groups": np.array([str(g) for g in groups], dtype=object),
            "rank_genes_groups_params": json.dumps(params),
        },
    )


def top_genes(ds: xr.Dataset, n: int = 10, gene_attr: str = "Gene") -> dict[str, Any]:
    """Per group, the ``n`` best-scoring genes (scanpy's ``names``), from the results of
    :func:`rank_genes_groups`.

    Examples
    --------
    >>> loomx.tl.top_genes(loomx.tl.rank_genes_groups(ds), 3)  # doctest: +SKIP
    {'0': ['CD3E', 'IL7R', 'LTB'], ...}
    """
    scores = np.asarray(ds["rank_genes_groups_scores"].values)
    name = _bands.attr_name(ds, _spec.ROW_ATTRS, gene_attr)
    labels = (
        np.asarray(ds[name].values).astype(str) if name else np.arange(scores.shape[0]).astype(str)
    )
    out = {}
    for j, group in enumerate(np.asarray(ds.attrs["rank_genes_groups_groups"]).astype(str)):
        column = np.nan_to_num(scores[:, j], nan=-np.inf)
        order = np.argsort(-column, kind="stable")[:n]
        out[group] = labels[order].tolist()
    return out

"""loomx.pp's preprocessing against scanpy 1.11 on the same counts: normalize_total, log1p
and scale within 1e-6 relative, filter_genes and mark_outliers marking what scanpy and the
best-practices' ``is_outlier`` keep."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
import scanpy as sc
from scipy.stats import median_abs_deviation

import loomx


def adata_of(path: str) -> anndata.AnnData:
    """The counts as scanpy holds them (cells x genes, dense)."""
    ds = loomx.open_loom(path)
    return anndata.AnnData(np.ascontiguousarray(ds["matrix"].values.T))


@pytest.mark.parametrize("target_sum", [None, 1e4])
@pytest.mark.parametrize("exclude", [False, True])
def test_normalize_log1p_as_scanpy(counts_loom, target_sum, exclude) -> None:
    ad = adata_of(counts_loom)
    sc.pp.normalize_total(ad, target_sum=target_sum, exclude_highly_expressed=exclude)
    ds = loomx.pp.normalize_total(
        loomx.open_loom(counts_loom), target_sum=target_sum, exclude_highly_expressed=exclude
    )
    assert ds.attrs["loomx_current_layer"] == "normalized"
    got = ds["normalized"].values.T
    assert got.dtype == ad.X.dtype
    np.testing.assert_allclose(got, ad.X, rtol=1e-6)
    sc.pp.log1p(ad, base=2)
    ds = loomx.pp.log1p(ds, base=2)  # reads "normalized", the previous step's layer
    np.testing.assert_allclose(ds["log1p"].values.T, ad.X, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("max_value", [None, 1.5])
@pytest.mark.parametrize("zero_center", [True, False])
def test_scale_as_scanpy(counts_loom, max_value, zero_center) -> None:
    ad = adata_of(counts_loom)
    sc.pp.log1p(ad)
    sc.pp.scale(ad, max_value=max_value, zero_center=zero_center)
    ds = loomx.pp.log1p(loomx.open_loom(counts_loom))
    ds = loomx.pp.scale(ds, max_value=max_value, zero_center=zero_center)
    np.testing.assert_allclose(ds["scaled"].values.T, ad.X, rtol=1e-6, atol=1e-6)


def test_valid_cells_and_genes_are_scanpys_subset(counts_loom) -> None:
    ds = loomx.open_loom(counts_loom)
    ds = loomx.pp.mark_outliers(ds)
    ds = loomx.pp.filter_genes(ds, min_cells=40)
    cells = ds["col_attrs:Valid"].values.astype(bool)
    genes = ds["row_attrs:Valid"].values.astype(bool)
    ad = adata_of(counts_loom)
    ad.var_names = ds["Gene"].values.astype(str)
    ad.var["mt"] = ad.var_names.str.startswith("MT-")
    sc.pp.calculate_qc_metrics(ad, qc_vars=["mt"], percent_top=[20], inplace=True, log1p=True)

    def is_outlier(metric: str, nmads: float) -> np.ndarray:
        m = ad.obs[metric]
        mad = median_abs_deviation(m)
        return ((m < np.median(m) - nmads * mad) | (np.median(m) + nmads * mad < m)).to_numpy()

    out = (
        is_outlier("log1p_total_counts", 5)
        | is_outlier("log1p_n_genes_by_counts", 5)
        | is_outlier("pct_counts_in_top_20_genes", 5)
        | is_outlier("pct_counts_mt", 3)
    )
    assert out.any() and not out.all()
    np.testing.assert_array_equal(cells, ~out)
    ad = ad[~out].copy()
    sc.pp.filter_genes(ad, min_cells=40)
    np.testing.assert_array_equal(
        np.flatnonzero(genes), np.flatnonzero(np.isin(ds["Gene"].values.astype(str), ad.var_names))
    )
    assert 0 < genes.sum() < genes.size
    # later steps see only valid cells and genes: the median of the valid cells' totals
    sc.pp.normalize_total(ad)
    got = loomx.pp.normalize_total(ds)["normalized"].values[np.ix_(genes, cells)].T
    np.testing.assert_allclose(got, ad.X, rtol=1e-6)


def test_filter_genes_needs_one_threshold(counts_loom) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        loomx.pp.filter_genes(loomx.open_loom(counts_loom), min_cells=1, min_counts=2)


def test_layers_in_blocks_shorter_than_the_genes(counts_loom) -> None:
    """Blocks that are not full-height are rechunked into bands; the statistics a derived
    layer waits for (the median, the gene moments of scale) read bands of their own."""
    ad = adata_of(counts_loom)
    sc.pp.normalize_total(ad)
    sc.pp.log1p(ad)
    sc.pp.scale(ad)
    ds = loomx.open_loom(counts_loom, chunks={"row": 100, "col": 128})
    ds = loomx.pp.scale(loomx.pp.log1p(loomx.pp.normalize_total(ds)))
    assert ds["scaled"].data.chunks[0] == (ds.sizes["row"],)
    np.testing.assert_allclose(ds["scaled"].values.T, ad.X, rtol=1e-6, atol=1e-6)


def test_median_total_is_the_target_scanpy_picks(counts_loom) -> None:
    import h5py

    with h5py.File(counts_loom, "r") as f:
        totals = f["matrix"][:].astype(np.float64).sum(axis=0)
    target = loomx.pp.median_total(loomx.open_loom(counts_loom))
    assert target == np.median(totals[totals > 0])
    ad = adata_of(counts_loom)
    sc.pp.normalize_total(ad)  # its default target: the median total
    ds = loomx.pp.normalize_total(loomx.open_loom(counts_loom), target_sum=target)
    np.testing.assert_allclose(ds["normalized"].values.T, ad.X, rtol=1e-6)

"""loomx.pp.pca against scanpy 1.11's arpack solution on the same data: explained variance
ratios within 1e-5 and |cosine| >= 0.9999 for every component whose variance is separated
from its neighbours' by more than 1%, for loadings and cell coordinates; valid cells and the
mask of genes as scanpy's subset."""

from __future__ import annotations

import anndata
import dask
import numpy as np
import pytest
import scanpy as sc

import loomx


def separated(variance: np.ndarray) -> np.ndarray:
    """Components whose variance differs from each neighbour's by more than 1%."""
    gaps = np.abs(np.diff(variance)) / variance[:-1]
    ok = np.ones(variance.size, bool)
    ok[:-1] &= gaps > 0.01
    ok[1:] &= gaps > 0.01
    return np.flatnonzero(ok[:20])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a * b).sum(0)) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))


@pytest.mark.parametrize("zero_center", [True, False])
def test_pca_as_scanpy_arpack(counts_loom, zero_center) -> None:
    ds = loomx.open_loom(counts_loom)
    cells = np.ones(ds.sizes["col"], bool)
    cells[::9] = False
    ds = ds.assign_coords(Valid=("col", cells.astype(np.uint8)))
    ds = loomx.pp.log1p(loomx.pp.normalize_total(ds, target_sum=1e4))
    ds = loomx.pp.highly_variable_genes(ds, n_top_genes=150)
    hv = ds["highly_variable"].values
    out = loomx.pp.pca(ds, n_comps=30, zero_center=zero_center)

    ad = anndata.AnnData(np.ascontiguousarray(loomx.open_loom(counts_loom)["matrix"].values.T))
    ad = ad[cells].copy()
    sc.pp.normalize_total(ad, target_sum=1e4)
    sc.pp.log1p(ad)
    ad.var["highly_variable"] = hv
    sc.pp.pca(
        ad, n_comps=30, zero_center=zero_center, svd_solver="arpack", mask_var="highly_variable"
    )
    ratio = np.asarray(out.attrs["pca_variance_ratio"])
    want = ad.uns["pca"]["variance_ratio"]
    np.testing.assert_allclose(ratio, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.attrs["pca_variance"], ad.uns["pca"]["variance"], rtol=1e-5)
    keep = separated(ad.uns["pca"]["variance"])
    assert keep.size >= 5
    pcs = out["PCs"].values
    assert (pcs[~hv] == 0).all()
    assert cosines(pcs[:, keep], ad.varm["PCs"][:, keep]).min() >= 0.9999
    x_pca = out["X_pca"].values
    assert x_pca.shape == (ds.sizes["col"], 30)
    assert cosines(x_pca[cells][:, keep], ad.obsm["X_pca"][:, keep]).min() >= 0.9999


@pytest.fixture(scope="module")
def cells_20k(tmp_path_factory) -> str:
    """20,000 cells x 300 genes: many bands, and Gram tasks of several bands each."""
    from loomx.testing import make_counts_loom

    return make_counts_loom(tmp_path_factory.mktemp("c20k") / "c20k.loom", 300, 20_000, seed=3)


def test_normalize_hvg_pca_of_20000_cells_as_scanpy(cells_20k) -> None:
    with dask.config.set({"array.chunk-size": "256KiB"}):  # ~100 bands, ~10 per Gram task
        ds = loomx.open_loom(cells_20k)
        ds = loomx.pp.log1p(loomx.pp.normalize_total(ds))
        ds = loomx.pp.highly_variable_genes(ds, n_top_genes=100)
        hv = ds["highly_variable"].values
        out = loomx.pp.pca(ds, n_comps=20)
        x_pca = out["X_pca"].values

    ad = anndata.AnnData(np.ascontiguousarray(loomx.open_loom(cells_20k)["matrix"].values.T))
    sc.pp.normalize_total(ad)
    sc.pp.log1p(ad)
    sc.pp.highly_variable_genes(ad, n_top_genes=100)
    assert (ad.var["highly_variable"].to_numpy() == hv).all()
    for column in ("means", "dispersions", "dispersions_norm"):
        np.testing.assert_allclose(ds[column].values, ad.var[column].to_numpy(), rtol=1e-6)
    sc.pp.pca(ad, n_comps=20, svd_solver="arpack", mask_var="highly_variable")
    ratio = np.asarray(out.attrs["pca_variance_ratio"])
    np.testing.assert_allclose(ratio, ad.uns["pca"]["variance_ratio"], rtol=1e-5, atol=1e-7)
    keep = separated(ad.uns["pca"]["variance"])
    assert keep.size >= 3
    assert cosines(out["PCs"].values[:, keep], ad.varm["PCs"][:, keep]).min() >= 0.9999
    assert cosines(x_pca[:, keep], ad.obsm["X_pca"][:, keep]).min() >= 0.9999

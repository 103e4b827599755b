"""The steps of loomx.pp / loomx.tl that apply to scanpy's ``pbmc68k_reduced`` (700 cells x
765 genes, shipped with scanpy), against scanpy 1.11 on the same arrays.

The data set holds no raw counts: ``.raw.X`` is log-normalized (natural log) and ``.X`` is
that data scaled.  So the comparisons are those whose input exists: ``normalize_total`` and
``log1p`` on ``expm1(raw.X)`` (non-integer values, which both accept), the ``seurat`` and
``cell_ranger`` gene selections on ``raw.X`` (with and without the ``phase`` batches), PCA of
the scaled ``X`` (all genes, and the data set's own ``highly_variable`` mask) and t-test
marker genes of its ``louvain`` clusters on ``raw.X``.  ``seurat_v3`` and QC metrics need
counts and are compared on generated counts in the other test files.
"""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from test_pca import cosines, separated

import loomx


@pytest.fixture(scope="module")
def pbmc(tmp_path_factory) -> tuple[str, anndata.AnnData]:
    """The data set as a Loom file: ``matrix`` = ``raw.X`` (log-normalized), layers
    ``scaled`` = ``X`` and ``expm1`` = ``expm1(raw.X)``; ``phase`` and integer ``louvain``."""
    ad = sc.datasets.pbmc68k_reduced()
    log = ad.raw.X.toarray().astype(np.float32)
    path = str(tmp_path_factory.mktemp("pbmc68k") / "pbmc68k_reduced.loom")
    ds = loomx.from_arrays(
        np.ascontiguousarray(log.T),
        {"Gene": ad.var_names.to_numpy(dtype=object)},
        {
            "CellID": ad.obs_names.to_numpy(dtype=object),
            "phase": ad.obs["phase"].to_numpy(dtype=object),
            "louvain": ad.obs["louvain"].astype(int).to_numpy(),
        },
        layers={
            "scaled": np.ascontiguousarray(ad.X.T),
            "expm1": np.ascontiguousarray(np.expm1(log).T),
        },
    )
    loomx.to_loom(ds, path)
    return path, ad


def frame(
    x: np.ndarray, ad: anndata.AnnData, dtype: type = np.float32, **obs: np.ndarray
) -> anndata.AnnData:
    return anndata.AnnData(
        np.array(x, dtype=dtype),
        obs=pd.DataFrame(obs, index=ad.obs_names),
        var=pd.DataFrame(index=ad.var_names),
    )


@pytest.mark.parametrize("exclude", [False, True])
def test_normalize_total_and_log1p(pbmc, exclude) -> None:
    path, ad = pbmc
    ds = loomx.open_loom(path)
    out = loomx.pp.log1p(
        loomx.pp.normalize_total(ds, layer="expm1", exclude_highly_expressed=exclude)
    )
    # float64 for scanpy: these values are not integers, and scanpy's float32 per-cell sums
    # (exclude_highly_expressed) are off by up to 2.4e-6 relative; loomx sums in float64
    want = frame(np.expm1(ad.raw.X.toarray().astype(np.float32)), ad, np.float64)
    sc.pp.normalize_total(want, exclude_highly_expressed=exclude)
    sc.pp.log1p(want)
    got = out[out.attrs["loomx_current_layer"]].values.T
    np.testing.assert_allclose(got, want.X, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("batch_key", [None, "phase"])
@pytest.mark.parametrize(
    ("flavor", "kwargs"),
    [("seurat", {}), ("seurat", {"n_top_genes": 200}), ("cell_ranger", {"n_top_genes": 200})],
)
def test_highly_variable_genes_on_the_log_data(pbmc, flavor, kwargs, batch_key) -> None:
    path, ad = pbmc
    ds = loomx.open_loom(path)
    out = loomx.pp.highly_variable_genes(
        ds, layer="matrix", flavor=flavor, batch_key=batch_key, **kwargs
    )
    want = frame(ad.raw.X.toarray(), ad, phase=ad.obs["phase"].to_numpy())
    sc.pp.highly_variable_genes(want, flavor=flavor, batch_key=batch_key, **kwargs)
    expected = want.var
    assert 20 < expected["highly_variable"].sum() < ad.n_vars
    np.testing.assert_array_equal(out["highly_variable"].values, expected["highly_variable"])
    for column in [c for c in expected.columns if c != "highly_variable"]:
        got, wanted = out[column].values, expected[column].to_numpy()
        if wanted.dtype.kind == "f":
            scale = np.nanmax(np.abs(wanted))
            np.testing.assert_allclose(got, wanted, rtol=1e-6, atol=1e-6 * scale, err_msg=column)
        else:
            np.testing.assert_array_equal(got, wanted, err_msg=column)


@pytest.mark.parametrize("mask", [None, "highly_variable"])
def test_pca_of_the_scaled_data(pbmc, mask) -> None:
    path, ad = pbmc
    ds = loomx.open_loom(path)
    hv = ad.var["highly_variable"].to_numpy()
    ds = ds.assign_coords(highly_variable=("row", hv))
    out = loomx.pp.pca(ds, n_comps=30, layer="scaled", mask_var=mask)
    want = frame(ad.X, ad)
    want.var["highly_variable"] = hv
    sc.pp.pca(want, n_comps=30, svd_solver="arpack", mask_var=mask)
    variance = want.uns["pca"]["variance"]
    ratio = np.asarray(out.attrs["pca_variance_ratio"])
    np.testing.assert_allclose(ratio, want.uns["pca"]["variance_ratio"], rtol=1e-5, atol=1e-7)
    keep = separated(variance)
    assert keep.size >= 5
    assert cosines(out["PCs"].values[:, keep], want.varm["PCs"][:, keep]).min() >= 0.9999
    x_pca = out["X_pca"].values
    assert cosines(x_pca[:, keep], want.obsm["X_pca"][:, keep]).min() >= 0.9999


@pytest.mark.parametrize("method", ["t-test", "t-test_overestim_var"])
def test_marker_genes_of_the_louvain_clusters(pbmc, method) -> None:
    path, ad = pbmc
    ds = loomx.open_loom(path)
    out = loomx.tl.rank_genes_groups(ds, "louvain", method=method, layer="matrix")
    louvain = ad.obs["louvain"].astype(int)
    want = frame(ad.raw.X.toarray(), ad, louvain=pd.Categorical(louvain))
    sc.tl.rank_genes_groups(want, "louvain", method=method, use_raw=False)
    groups = list(out.attrs["rank_genes_groups_groups"])
    assert sorted(groups) == sorted(str(c) for c in want.obs["louvain"].cat.categories)
    genes = ad.var_names
    for j, group in enumerate(groups):
        expected = sc.get.rank_genes_groups_df(want, group).set_index("names").loc[genes]
        for field in ("scores", "pvals", "pvals_adj", "logfoldchanges"):
            got = out[f"rank_genes_groups_{field}"].values[:, j]
            wanted = expected[field].to_numpy()
            if wanted.dtype == np.float32:
                got = got.astype(np.float32)
            np.testing.assert_allclose(got, wanted, rtol=1e-6, atol=1e-300, err_msg=field)

"""loomx.tl.rank_genes_groups against scanpy 1.11's t-tests on the same log-normalized
data and groups: scores, p-values, adjusted p-values and log fold changes within 1e-6 for
every group and gene; valid cells only."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import loomx


@pytest.mark.parametrize("method", ["t-test", "t-test_overestim_var"])
@pytest.mark.parametrize("corr_method", ["benjamini-hochberg", "bonferroni"])
def test_rank_genes_groups_as_scanpy(counts_loom, method, corr_method) -> None:
    ds = loomx.open_loom(counts_loom)
    cells = np.ones(ds.sizes["col"], bool)
    cells[::13] = False
    ds = ds.assign_coords(Valid=("col", cells.astype(np.uint8)))
    ds = loomx.pp.log1p(loomx.pp.normalize_total(ds, target_sum=1e4), base=2)
    out = loomx.tl.rank_genes_groups(ds, "ClusterID", method=method, corr_method=corr_method)
    genes = ds["Gene"].values.astype(str)
    ad = anndata.AnnData(
        np.ascontiguousarray(loomx.open_loom(counts_loom)["matrix"].values.T),
        obs=pd.DataFrame({"ClusterID": pd.Categorical(ds["ClusterID"].values)}),
        var=pd.DataFrame(index=genes),
    )
    ad = ad[cells].copy()
    sc.pp.normalize_total(ad, target_sum=1e4)
    sc.pp.log1p(ad, base=2)
    sc.tl.rank_genes_groups(ad, "ClusterID", method=method, corr_method=corr_method)
    groups = list(out.attrs["rank_genes_groups_groups"])
    assert groups == [str(c) for c in ad.obs["ClusterID"].cat.categories]
    for j, group in enumerate(groups):
        want = sc.get.rank_genes_groups_df(ad, group).set_index("names").loc[genes]
        for field in ("scores", "pvals", "pvals_adj", "logfoldchanges"):
            got = out[f"rank_genes_groups_{field}"].values[:, j]
            expected = want[field].to_numpy()
            if expected.dtype == np.float32:  # scanpy stores scores and fold changes so
                got = got.astype(np.float32)
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-300, err_msg=field)
    top = loomx.tl.top_genes(out, 3)
    assert top[groups[0]][0] == ad.uns["rank_genes_groups"]["names"][groups[0]][0]

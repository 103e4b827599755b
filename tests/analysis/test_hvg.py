"""loomx.pp.highly_variable_genes against scanpy 1.11 on the same data: the same genes and
scanpy's columns within 1e-6, for seurat, cell_ranger and seurat_v3, with and without
batch_key, with cells and genes marked not valid left out as scanpy's subset leaves them."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import loomx

BATCHES = np.array(["b", "a", "c"])


def prepared(path: str, flavor: str, valid: bool) -> tuple:
    """The loomx Dataset (normalized and log1p'ed unless seurat_v3) and the AnnData scanpy
    gets for it: valid cells and genes only, a ``batch`` column."""
    ds = loomx.open_loom(path)
    m = ds.sizes["col"]
    ds = ds.assign_coords(batch=("col", BATCHES[np.arange(m) % 3]))
    cells = np.ones(m, bool)
    genes = np.ones(ds.sizes["row"], bool)
    if valid:
        cells[::7] = False
        genes[5:25] = False
        marked = ds.assign_coords(
            {
                "col_attrs:Valid": ("col", cells.astype(np.uint8)),
                "row_attrs:Valid": ("row", genes.astype(np.uint8)),
            }
        )
        ds = loomx.pp.filter_genes(marked, min_cells=1)
        genes &= ds["row_attrs:Valid"].values.astype(bool)
    ad = anndata.AnnData(
        np.ascontiguousarray(ds["matrix"].values.T),
        obs=pd.DataFrame({"batch": ds["batch"].values}),
        var=pd.DataFrame(index=ds["Gene"].values.astype(str)),
    )
    ad = ad[cells][:, genes].copy()
    if flavor != "seurat_v3":
        ds = loomx.pp.log1p(loomx.pp.normalize_total(ds, target_sum=1e4), base=2 if valid else None)
        sc.pp.normalize_total(ad, target_sum=1e4)
        sc.pp.log1p(ad, base=2 if valid else None)
    return ds, ad, genes


CASES = [
    ("seurat", {}),
    ("seurat", {"n_top_genes": 60}),
    ("cell_ranger", {"n_top_genes": 60}),
    ("cell_ranger", {"min_mean": 0.01, "min_disp": 0.3}),
    ("seurat_v3", {"n_top_genes": 60}),
]


@pytest.mark.parametrize("batch_key", [None, "batch"])
@pytest.mark.parametrize(("flavor", "kwargs"), CASES)
@pytest.mark.parametrize("valid", [False, True])
def test_highly_variable_genes_as_scanpy(counts_loom, flavor, kwargs, batch_key, valid) -> None:
    ds, ad, genes = prepared(counts_loom, flavor, valid)
    out = loomx.pp.highly_variable_genes(ds, flavor=flavor, batch_key=batch_key, **kwargs)
    sc.pp.highly_variable_genes(ad, flavor=flavor, batch_key=batch_key, **kwargs)
    expected = ad.var
    assert expected["highly_variable"].sum() > 5
    got_hv = out["highly_variable"].values
    np.testing.assert_array_equal(got_hv[genes], expected["highly_variable"].to_numpy())
    assert not got_hv[~genes].any()
    np.testing.assert_array_equal(out["Selected"].values, got_hv.astype(np.uint8))
    columns = [c for c in expected.columns if c != "highly_variable"]
    assert columns
    for column in columns:
        got = out[column].values[genes]
        want = expected[column].to_numpy()
        assert got.dtype == want.dtype, column
        if want.dtype.kind == "f":
            # 1e-6 of the column's scale: dispersions_norm crosses zero as a difference
            scale = np.nanmax(np.abs(want))
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * scale, err_msg=column)
        else:
            np.testing.assert_array_equal(got, want, err_msg=column)

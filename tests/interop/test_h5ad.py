"""loomx.interop.h5ad: ``.h5ad`` input read in bands of cells, compared with what anndata
reads from the same file."""

from __future__ import annotations

import anndata
import dask
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse

import loomx
from loomx.errors import LoomFileError, LoomFormatError
from loomx.interop import h5ad as _h5ad
from loomx.interop.conversion import convert
from loomx.interop.h5ad import read_h5ad_lazy


def write_h5ad(path, fmt: str, seed: int = 0, n_cells: int = 300, n_genes: int = 70):
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((n_cells, n_genes)) < 0.2, rng.poisson(3, (n_cells, n_genes)), 0)
    dense = dense.astype(np.float32)
    x = {
        "dense": dense,
        "csr": scipy.sparse.csr_matrix(dense),
        "csc": scipy.sparse.csc_matrix(dense),
    }
    adata = anndata.AnnData(
        X=x[fmt],
        obs=pd.DataFrame(
            {"batch": pd.Categorical(rng.choice(["a", "b"], n_cells))},
            index=[f"c{i}" for i in range(n_cells)],
        ),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
        obsm={"X_pca": rng.random((n_cells, 3))},
        layers={"counts": x[fmt] * 2},
        uns={"title": "t"},
    )
    adata.write_h5ad(path)
    return dense


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_bands_equal_what_anndata_reads(tmp_path, fmt, monkeypatch):
    path = tmp_path / "x.h5ad"
    dense = write_h5ad(path, fmt)
    monkeypatch.setattr(_h5ad, "CSC_ENTRIES", 97)  # many steps through the CSC entries
    with dask.config.set({"array.chunk-size": "16KiB"}):
        adata = read_h5ad_lazy(path)
    theirs = anndata.read_h5ad(path)
    assert len(adata.X.chunks[0]) > 1  # bands of cells, never the whole matrix at once
    np.testing.assert_array_equal(adata.X.compute(), dense)
    np.testing.assert_array_equal(adata.layers["counts"].compute(), dense * 2)
    pd.testing.assert_frame_equal(adata.obs, theirs.obs)
    np.testing.assert_array_equal(adata.obsm["X_pca"], theirs.obsm["X_pca"])
    assert adata.uns["title"] == "t"


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_convert_h5ad_streams_to_loom(tmp_path, fmt):
    path = tmp_path / "x.h5ad"
    dense = write_h5ad(path, fmt, seed=1)
    with dask.config.set({"array.chunk-size": "16KiB"}):
        convert(path, tmp_path / "x.loom")
    ds = loomx.open_loom(tmp_path / "x.loom")
    theirs = anndata.read_h5ad(path)
    np.testing.assert_array_equal(ds["matrix"].values, dense.T)
    np.testing.assert_array_equal(ds["counts"].values, dense.T * 2)
    assert list(ds["CellID"].values) == list(theirs.obs_names)
    assert list(ds["batch"].values) == list(theirs.obs["batch"].astype(str))
    np.testing.assert_array_equal(ds["X_pca"].values, theirs.obsm["X_pca"])


def test_stored_matrix_refuses_what_is_not_a_matrix(tmp_path):
    path = tmp_path / "x.h5ad"
    write_h5ad(path, "dense")
    with h5py.File(path, "r+") as f:
        f["layers/text"] = np.array([[b"a"]] * 300 * 70).reshape(300, 70)
    with h5py.File(path, "r") as f, pytest.raises(LoomFormatError, match="/layers/text"):
        _h5ad.stored_matrix(str(path), f, "layers/text")
    with h5py.File(path, "r") as f, pytest.raises(LoomFormatError, match="/obs"):
        _h5ad.stored_matrix(str(path), f, "obs")
    (tmp_path / "bad.h5ad").write_bytes(b"not hdf5")
    with pytest.raises(LoomFileError):
        read_h5ad_lazy(tmp_path / "bad.h5ad")

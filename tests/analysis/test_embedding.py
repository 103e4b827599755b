"""loomx.pp.neighbors, loomx.tl.leiden and loomx.tl.umap are scanpy's own run on the same
X_pca and random_state: identical graphs, labels and coordinates, written back as Loom's
conventions (KNN, MKNN, ClusterID by size, X, Y) and read again."""

from __future__ import annotations

import shutil

import anndata
import numpy as np
import pytest
import scanpy as sc

import loomx
from loomx.analysis.embedding import cluster_ids


@pytest.fixture(scope="module")
def embedded(counts_loom, tmp_path_factory):
    path = tmp_path_factory.mktemp("emb") / "counts.loom"
    shutil.copy(counts_loom, path)
    ds = loomx.open_loom(path)
    cells = np.ones(ds.sizes["col"], bool)
    cells[::11] = False
    ds = ds.assign_coords(Valid=("col", cells.astype(np.uint8)))
    ds = loomx.pp.log1p(loomx.pp.normalize_total(ds, target_sum=1e4))
    ds = loomx.pp.pca(loomx.pp.highly_variable_genes(ds, n_top_genes=100), n_comps=20)
    # each step next to scanpy's: numba's thread settings (which umap changes) round
    # the fuzzy graph's weights differently, so both runs see the same state
    ad = anndata.AnnData(obs={"i": np.arange(cells.sum())})
    ad.obsm["X_pca"] = ds["X_pca"].values[cells]
    ds = loomx.pp.neighbors(ds, n_neighbors=10, random_state=3)
    sc.pp.neighbors(ad, n_neighbors=10, use_rep="X_pca", random_state=3)
    ds = loomx.tl.leiden(ds, resolution=0.8, random_state=3)
    sc.tl.leiden(ad, resolution=0.8, random_state=3, flavor="leidenalg", n_iterations=-1)
    ds = loomx.tl.umap(ds, random_state=3)
    sc.tl.umap(ad, random_state=3)
    loomx.to_loom(ds.drop_vars(["normalized", "log1p"]), path, mode="a")
    return loomx.open_loom(path), ad, cells


def test_graphs_as_scanpy(embedded) -> None:
    ds, ad, cells = embedded
    where = np.flatnonzero(cells)
    distances = ds.loom.col_graphs.to_scipy("distances").tocsr()
    assert distances[~cells].nnz == 0
    assert (distances[where][:, where] != ad.obsp["distances"]).nnz == 0
    # the fuzzy union's weights: umap's parallel numba code rounds a few weights near
    # zero (1e-7) differently from one process state to another
    got = ds.loom.col_graphs.to_scipy("connectivities").tocsr()
    assert got[~cells].nnz == 0
    assert abs(got[where][:, where] - ad.obsp["connectivities"]).max() < 1e-6
    knn = ds.loom.col_graphs.to_scipy("KNN").tocsr()[where][:, where]
    assert ((knn > 0) != (ad.obsp["distances"] > 0)).nnz == 0
    mknn = ds.loom.col_graphs.to_scipy("MKNN").tocsr()[where][:, where]
    assert ((mknn > 0) != ((knn > 0).multiply(knn.T > 0))).nnz == 0
    assert 0 < mknn.nnz < knn.nnz


def test_clusters_and_umap_as_scanpy(embedded) -> None:
    ds, ad, cells = embedded
    labels = ad.obs["leiden"].astype(str).to_numpy()
    np.testing.assert_array_equal(ds["leiden"].values[cells].astype(str), labels)
    ids = ds["ClusterID"].values
    assert (ids[~cells] == -1).all()
    sizes = np.bincount(ids[cells])
    assert sizes.size == len(set(labels)) > 1
    assert (np.diff(sizes) <= 0).all()  # the largest cluster first
    np.testing.assert_array_equal(ds["X_umap"].values[cells], ad.obsm["X_umap"])
    np.testing.assert_array_equal(ds["X"].values[cells], ad.obsm["X_umap"][:, 0])
    np.testing.assert_array_equal(ds["Y"].values[cells], ad.obsm["X_umap"][:, 1])
    assert np.isnan(ds["X"].values[~cells]).all()


def test_cluster_ids_by_size() -> None:
    np.testing.assert_array_equal(
        cluster_ids(np.array([5, 2, 2, 7, 7, 7, 5])), [2, 1, 1, 0, 0, 0, 2]
    )


def test_neighbors_of_many_cells_take_scanpys_approximate_path() -> None:
    """From 8192 cells (euclidean) scanpy uses pynndescent, whose 0.7 graph (a ``csr_array``)
    scanpy 1.11 cannot read: loomx hands scanpy the same search with a ``csr_matrix``.  Checked
    against the exact neighbors (sklearn, brute force): nearly all of them found."""
    from sklearn.neighbors import NearestNeighbors

    n = 8300
    x = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    ds = loomx.from_arrays(
        np.zeros((2, n), np.float32),
        {"Gene": np.array(["a", "b"], dtype=object)},
        {"CellID": np.array([f"c{i}" for i in range(n)], dtype=object), "X_pca": x},
    )
    out = loomx.pp.neighbors(ds, n_neighbors=10, random_state=0)
    distances = out.loom.col_graphs.to_scipy("distances").tocsr()
    knn = out.loom.col_graphs.to_scipy("KNN").tocsr()
    assert (np.diff(knn.indptr) == 10).all()  # pynndescent's graph also holds each cell
    assert knn.diagonal().sum() == 0
    assert ((knn > 0) != (distances > 0)).nnz == 0
    exact = NearestNeighbors(n_neighbors=11).fit(x).kneighbors(x, return_distance=False)
    found = sum(len(set(knn[i].indices) & set(exact[i, 1:])) for i in range(n))
    assert found / (n * 10) > 0.95

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import sparse
from hypothesis import given
from hypothesis import strategies as st

import loomx
from loomx._format.graphs import induced_edges, to_scipy_graph
from loomx.errors import LoomFormatError, LoomInvalidNameError


def dense_reference(a, b, w, ids, n):
    """Induced subgraph via a dense adjacency (sums duplicates): the slow, obvious way."""
    full = np.zeros((n, n))
    np.add.at(full, (a, b), w)
    return full[np.ix_(ids, ids)]


@given(
    n=st.integers(1, 12),
    data=st.data(),
)
def test_induced_edges_match_dense_reference(n, data):
    n_edges = data.draw(st.integers(0, 30))
    a = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=n_edges, max_size=n_edges)))
    b = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=n_edges, max_size=n_edges)))
    a, b = a.astype(np.int64), b.astype(np.int64)
    w = np.arange(1, n_edges + 1, dtype=np.float64)
    ids = np.array(
        data.draw(st.lists(st.integers(0, n - 1), min_size=0, max_size=2 * n)), dtype=np.int64
    )
    a2, b2, w2 = induced_edges(a, b, w, ids)
    got = np.zeros((len(ids), len(ids)))
    np.add.at(got, (a2, b2), w2)
    np.testing.assert_allclose(got, dense_reference(a, b, w, ids, n))
    # edge order is kept: weights (= original edge numbers) never decrease
    assert np.all(np.diff(w2) >= 0) or len(set(ids.tolist())) != len(ids)


def test_duplicate_edges_are_kept(loompy_file):
    ds = loomx.open_loom(loompy_file["path"])
    knn = ds.loom.col_graphs["KNN"]
    assert isinstance(knn.data, sparse.COO)
    np.testing.assert_allclose(knn.data.todense(), loompy_file["knn"].toarray())
    assert knn.data.todense()[0, 1] == 3.0  # parallel edges (0, 1) add up
    assert to_scipy_graph(knn, "csr")[0, 1] == 3.0
    edges = ds.loom.col_graphs.edges("KNN")  # the multigraph itself: duplicates and order kept
    np.testing.assert_array_equal(edges["a"].values, loompy_file["knn"].row)
    np.testing.assert_array_equal(edges["b"].values, loompy_file["knn"].col)
    np.testing.assert_array_equal(edges["w"].values, loompy_file["knn"].data)
    rgraph = ds.loom.row_graphs["coexpr"]
    np.testing.assert_allclose(rgraph.data.todense(), loompy_file["rgraph"].toarray())


def test_selection_carries_induced_subgraph(loompy_file):
    ds = loomx.open_loom(loompy_file["path"])
    full = loompy_file["knn"].toarray()
    picks = np.array([7, 2, 0, 1, 1, 5, 6])
    sub = ds.isel(col=picks)
    np.testing.assert_allclose(
        sub.loom.col_graphs["KNN"].data.todense(), full[np.ix_(picks, picks)]
    )
    mask = np.zeros(ds.sizes["col"], bool)
    mask[[0, 1, 5, 6, 100]] = True
    masked = ds.isel(col=mask)
    np.testing.assert_allclose(
        masked.loom.col_graphs["KNN"].data.todense(), full[np.ix_(mask, mask)]
    )
    order = np.argsort(ds["ClusterID"].values, kind="stable")
    sorted_ds = ds.sortby("ClusterID")
    np.testing.assert_array_equal(sorted_ds["ClusterID"].values, ds["ClusterID"].values[order])
    np.testing.assert_allclose(
        sorted_ds.loom.col_graphs["KNN"].data.todense(), full[np.ix_(order, order)]
    )
    # rows untouched
    assert sub.loom.row_graphs["coexpr"].shape == (150, 150)


@pytest.mark.parametrize("kind", ["coo", "scipy", "dense"])
def test_assign_graph(example_loom, kind):
    ds = loomx.open_loom(example_loom)
    m = ds.sizes["col"]
    adj = sp.random(m, m, density=0.01, random_state=0, format="coo")
    matrix = {
        "coo": sparse.COO.from_scipy_sparse(adj),
        "scipy": adj.tocsr(),
        "dense": adj.toarray(),
    }[kind]
    out = ds.loom.col_graphs.assign("SNN", matrix)
    assert "SNN" in out.loom.col_graphs and "SNN" not in ds.loom.col_graphs
    np.testing.assert_allclose(out.loom.col_graphs["SNN"].data.todense(), adj.toarray())
    with pytest.raises(LoomFormatError, match="shape"):
        ds.loom.col_graphs.assign("bad", np.ones((3, 3)))
    with pytest.raises(LoomInvalidNameError, match="without '/'"):
        ds.loom.col_graphs.assign("a/b", adj)

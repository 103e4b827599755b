"""Neighbors, Leiden clusters and UMAP through scanpy itself, on the small ``X_pca`` of the
valid cells in memory (the optional ``analysis`` extra: scanpy, igraph, leidenalg,
umap-learn, pynndescent), with the results put back in Loom's conventions.

- :func:`neighbors`: column graphs ``distances`` and ``connectivities`` (scanpy's names, so
  :func:`loomx.to_anndata` fills ``obsp``), ``KNN`` (each cell to its neighbors) and
  ``MKNN`` (the mutual pairs), weights 1; the parameters in the global attribute
  ``neighbors_params``.
- :func:`leiden`: column attributes ``leiden`` (scanpy's labels) and ``ClusterID``
  (0..n-1, the largest cluster first; -1 for cells not valid).
- :func:`umap`: column attribute ``X_umap`` and the conventions' ``X`` and ``Y``.

Cells that are not valid take no part; their rows of every graph are empty.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr

from loomx._format import spec as _spec
from loomx._format.graphs import assign_graph
from loomx.analysis import bands as _bands
from loomx.errors import LoomNameError
from loomx.ops import accessor as _accessor  # noqa: F401  (registers ds.loom)

__all__ = ["leiden", "neighbors", "umap"]

NEIGHBORS_PARAMS = "neighbors_params"
"""Global attribute: scanpy's ``uns["neighbors"]["params"]`` as JSON."""


def _scanpy() -> Any:
    try:
        import scanpy
    except ImportError as error:  # pragma: no cover - the extra is installed in CI
        raise ImportError(
            "loomx.pp.neighbors and loomx.tl need: pip install loomx[analysis]"
        ) from error
    return scanpy


def _col_attr(ds: xr.Dataset, name: str) -> np.ndarray:
    var = _bands.attr_name(ds, _spec.COL_ATTRS, name)
    if var is None:
        raise LoomNameError(f"no column attribute {name!r}; run the step that makes it first")
    return np.asarray(ds[var].values)


def _expand_graph(graph: Any, cells: np.ndarray) -> sp.csr_matrix:
    """A graph among the valid cells as one among all cells (rows of others empty)."""
    coo = sp.coo_matrix(graph)
    where = np.flatnonzero(cells)
    n = cells.size
    return sp.csr_matrix((coo.data, (where[coo.row], where[coo.col])), shape=(n, n))


def _valid_graph(ds: xr.Dataset, name: str, cells: np.ndarray) -> sp.csr_matrix:
    if name not in ds.loom.col_graphs:
        raise LoomNameError(f"no column graph {name!r}; run loomx.pp.neighbors first")
    where = np.flatnonzero(cells)
    return sp.csr_matrix(ds.loom.col_graphs.to_scipy(name))[where][:, where]


def _anndata(ds: xr.Dataset, cells: np.ndarray, graphs: bool) -> Any:
    """An AnnData of the valid cells holding what scanpy's tools read: ``X_pca`` and,
    with ``graphs``, the neighbors graphs and their parameters."""
    import anndata

    x_pca = _col_attr(ds, "X_pca")[cells]
    ad = anndata.AnnData(obs=pd.DataFrame(index=np.flatnonzero(cells).astype(str)))
    ad.obsm["X_pca"] = x_pca
    if graphs:
        params = json.loads(ds.attrs.get(NEIGHBORS_PARAMS, "{}"))
        ad.obsp["distances"] = _valid_graph(ds, "distances", cells)
        # scanpy's dtype (float32 weights, stored as float64 in the file without loss):
        # umap's sampling depends on it
        ad.obsp["connectivities"] = _valid_graph(ds, "connectivities", cells).astype(np.float32)
        ad.uns["neighbors"] = {
            "connectivities_key": "connectivities",
            "distances_key": "distances",
            "params": params,
        }
    return ad


class _NNDescentCSR:
    """scanpy's own choice for many cells (pynndescent with umap's ``n_trees`` and
    ``n_iters``), its graph given as a ``csr_matrix``: pynndescent 0.7 returns a
    ``csr_array``, which scanpy 1.11's ``neighbors`` cannot read (no ``getnnz``)."""

    def __init__(self, **params: Any) -> None:
        self.params = params

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return dict(self.params)

    def set_params(self, **params: Any) -> _NNDescentCSR:
        self.params.update(params)
        return self

    def fit(self, x: Any, y: Any = None) -> _NNDescentCSR:
        from pynndescent import PyNNDescentTransformer

        self.inner = PyNNDescentTransformer(**self.params).fit(x)
        return self

    def transform(self, x: Any) -> sp.csr_matrix:
        return sp.csr_matrix(self.inner.transform(x))

    def fit_transform(self, x: Any, y: Any = None) -> sp.csr_matrix:
        from pynndescent import PyNNDescentTransformer

        self.inner = PyNNDescentTransformer(**self.params)
        return sp.csr_matrix(self.inner.fit_transform(x))


def _transformer(n_obs: int, n_neighbors: int, metric: str, random_state: int) -> Any:
    """None where scanpy computes exact neighbors (below 4096 cells, or 8192 with the
    euclidean metric), else :class:`_NNDescentCSR` with the parameters scanpy would give
    pynndescent."""
    if n_obs < 4096 or (metric == "euclidean" and n_obs < 8192):
        return None
    from scanpy import settings

    return _NNDescentCSR(
        n_neighbors=n_neighbors,
        metric=metric,
        metric_kwds={},
        random_state=random_state,
        n_jobs=settings.n_jobs,
        n_trees=min(64, 5 + round(n_obs**0.5 / 20.0)),
        n_iters=max(5, round(np.log2(n_obs))),
    )


def neighbors(
    ds: xr.Dataset,
    n_neighbors: int = 15,
    n_pcs: int | None = None,
    *,
    use_rep: str = "X_pca",
    metric: str = "euclidean",
    random_state: int = 0,
) -> xr.Dataset:
    """The neighborhood graph of the valid cells, :func:`scanpy.pp.neighbors` on ``X_pca``.

    Examples
    --------
    >>> ds = loomx.pp.neighbors(loomx.pp.pca(ds), n_neighbors=15)  # doctest: +SKIP
    >>> ds.loom.col_graphs.to_scipy("connectivities")  # doctest: +SKIP
    """
    if use_rep != "X_pca":
        raise ValueError("use_rep: only 'X_pca' (the output of loomx.pp.pca)")
    sc = _scanpy()
    cells = _bands.cell_mask(ds)
    ad = _anndata(ds, cells, graphs=False)
    sc.pp.neighbors(
        ad,
        n_neighbors=n_neighbors,
        n_pcs=n_pcs,
        use_rep=use_rep,
        metric=metric,
        random_state=random_state,
        transformer=_transformer(ad.n_obs, n_neighbors, metric, random_state),
    )
    distances = _expand_graph(ad.obsp["distances"], cells)
    knn = (distances > 0).astype(np.float64)
    mknn = knn.multiply(knn.T).tocsr()
    out = ds
    for name, graph in (
        ("distances", distances),
        ("connectivities", _expand_graph(ad.obsp["connectivities"], cells)),
        ("KNN", knn),
        ("MKNN", mknn),
    ):
        out = assign_graph(out, name, graph, ds.loom.col_graphs.dim)
    params = {k: v for k, v in ad.uns["neighbors"]["params"].items() if k != "random_state"}
    params["random_state"] = int(random_state)
    out.attrs[NEIGHBORS_PARAMS] = json.dumps(params, default=str)
    return out


def cluster_ids(labels: np.ndarray) -> np.ndarray:
    """Cluster labels renumbered 0..n-1 by size, the largest first (ties: label order)."""
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.lexsort((np.arange(values.size), -counts))
    rank = np.empty(values.size, np.int64)
    rank[order] = np.arange(values.size)
    return rank[inverse.ravel()]


def leiden(
    ds: xr.Dataset,
    resolution: float = 1.0,
    *,
    random_state: int = 0,
    n_iterations: int = -1,
    flavor: str = "leidenalg",
) -> xr.Dataset:
    """Leiden clusters of the valid cells, :func:`scanpy.tl.leiden` on the
    ``connectivities`` graph: ``leiden`` (scanpy's labels) and ``ClusterID``.

    Examples
    --------
    >>> ds = loomx.tl.leiden(ds, resolution=1.0)  # doctest: +SKIP
    """
    sc = _scanpy()
    cells = _bands.cell_mask(ds)
    ad = _anndata(ds, cells, graphs=True)
    with warnings.catch_warnings():  # scanpy's notice that its default backend will change
        warnings.simplefilter("ignore", FutureWarning)
        sc.tl.leiden(
            ad,
            resolution=resolution,
            random_state=random_state,
            n_iterations=n_iterations,
            flavor=flavor,
        )
    labels = ad.obs["leiden"].astype(str).to_numpy()
    names = np.full(cells.size, "", dtype=object)
    names[cells] = labels
    ids = np.full(cells.size, -1, np.int64)
    ids[cells] = cluster_ids(labels.astype(np.int64))
    return _bands.assign_attrs(ds, cols={"leiden": names, "ClusterID": ids})


def umap(
    ds: xr.Dataset,
    *,
    min_dist: float = 0.5,
    spread: float = 1.0,
    n_components: int = 2,
    random_state: int = 0,
) -> xr.Dataset:
    """UMAP of the valid cells, :func:`scanpy.tl.umap` on the neighbors graph: ``X_umap``
    and the conventions' ``X``, ``Y`` (NaN for cells not valid).

    Examples
    --------
    >>> ds = loomx.tl.umap(ds)  # doctest: +SKIP
    """
    sc = _scanpy()
    cells = _bands.cell_mask(ds)
    ad = _anndata(ds, cells, graphs=True)
    sc.tl.umap(
        ad, min_dist=min_dist, spread=spread, n_components=n_components, random_state=random_state
    )
    coords = np.full((cells.size, n_components), np.nan)
    coords[cells] = ad.obsm["X_umap"]
    return _bands.assign_attrs(ds, cols={"X_umap": coords, "X": coords[:, 0], "Y": coords[:, 1]})

"""Graphs (``/row_graphs/*`` and ``/col_graphs/*``) as sparse side-variables.

On disk a graph is an edge list: vertices ``a`` -> ``b`` with weights ``w``.  In a Dataset it
is four lazy coordinates (see :mod:`loomx._format.names`): the edge list in the file's
numbering on its own ``edge`` dim, and, on the row or column dim, the *original vertex
number* of every current row or column.  Any xarray selection (``isel``, ``sel``,
``sortby``, boolean masks, repeated indices) subsets the vertex numbers along with the
attributes, so the graph seen through ``ds.loom.col_graphs[name]`` is always the induced
subgraph of the current rows or columns, renumbered.  Nothing is read until a graph is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse
import sparse
import xarray as xr

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx.errors import LoomFormatError, LoomNameError

__all__ = [
    "assign_graph",
    "check_edges",
    "graph_dataarray",
    "graph_edge_list",
    "graph_edges",
    "graph_names",
    "graph_space",
    "induced_edges",
    "to_scipy_graph",
]


def induced_edges(
    a: np.ndarray, b: np.ndarray, w: np.ndarray, vertex_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges among ``vertex_ids``, renumbered to positions in ``vertex_ids``.

    Edge order is kept.  A vertex number that occurs several times in ``vertex_ids`` (a
    repeated selection) maps an edge to every pair of its positions.

    Examples
    --------
    >>> a, b, w = np.array([0, 1, 2]), np.array([1, 2, 0]), np.array([1.0, 2.0, 3.0])
    >>> induced_edges(a, b, w, np.array([2, 1]))
    (array([1]), array([0]), array([2.]))
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    w = np.asarray(w)
    ids = np.asarray(vertex_ids, dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"vertex ids must be 1-D, found shape {ids.shape}")
    if len(ids) and ids[0] == 0 and np.array_equal(ids, np.arange(len(ids))):
        keep = (a < len(ids)) & (b < len(ids))
        return (a, b, w) if keep.all() else (a[keep], b[keep], w[keep])
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    lo_a = np.searchsorted(sorted_ids, a, "left")
    cnt_a = np.searchsorted(sorted_ids, a, "right") - lo_a
    lo_b = np.searchsorted(sorted_ids, b, "left")
    cnt_b = np.searchsorted(sorted_ids, b, "right") - lo_b
    pairs = cnt_a * cnt_b
    if pairs.max(initial=0) <= 1:
        keep = pairs == 1
        return order[lo_a[keep]], order[lo_b[keep]], w[keep]
    edge = np.repeat(np.arange(len(a)), pairs)
    first = np.cumsum(pairs) - pairs
    k = np.arange(len(edge)) - first[edge]
    ia = k // cnt_b[edge]
    ib = k % cnt_b[edge]
    return order[lo_a[edge] + ia], order[lo_b[edge] + ib], w[edge]


def check_edges(
    a: np.ndarray, b: np.ndarray, n: int, path: str | None = None, h5path: str = "/"
) -> None:
    """Raise :class:`LoomFormatError` unless every vertex is in ``0 <= v < n``."""
    for part, values in (("a", a), ("b", b)):
        if len(values) and (values.min() < 0 or values.max() >= n):
            bad = values[(values < 0) | (values >= n)][:5]
            raise LoomFormatError(
                f"vertex indices {bad.tolist()} out of range; expected 0 <= vertex < {n}",
                path=path,
                h5path=f"{h5path.rstrip('/')}/{part}",
            )


def graph_edges(ds: xr.Dataset, space: str, name: str) -> tuple[np.ndarray, ...]:
    """Load one graph's edges, checked and renumbered to the Dataset's current rows/cols.

    Returns ``(a, b, w)`` with vertices as positions along the row or column dim.
    """
    names = conv.graph_var_names(space, name)
    if name not in graph_names(ds, space):
        raise LoomNameError(f"no graph {name!r} in {space}; found {list(graph_names(ds, space))}")
    vertex_var = ds.variables[names["vertex"]]
    source = vertex_var.encoding.get("source", "<memory>")
    h5path = str(vertex_var.encoding.get("loom_path", f"/{space}/{name}"))
    n_original = vertex_var.encoding.get("loom_n_vertices")
    ids = np.asarray(vertex_var.values, dtype=np.int64)
    a, b, w = (np.asarray(ds.variables[names[p]].values) for p in conv.GRAPH_PARTS)
    if ids.ndim != 1 or any(v.ndim != 1 for v in (a, b, w)):
        raise LoomFormatError(
            f"graph side-variables are not 1-D edge lists (found shapes "
            f"{ids.shape}, {a.shape}, {b.shape}, {w.shape}); xarray operations such as "
            "concat do not combine graphs: use loomx.combine or ds.loom.col_graphs.assign",
            path=source,
            h5path=h5path,
        )
    if n_original is None:
        n_original = int(ids.max(initial=-1)) + 1
    check_edges(a, b, int(n_original), source, h5path)
    return induced_edges(a, b, w, ids)


def graph_names(ds: xr.Dataset, space: str) -> list[str]:
    """Names of the graphs of ``space`` (``"row_graphs"`` or ``"col_graphs"``) in ``ds``."""
    out = []
    for var in ds.variables:
        parsed = conv.parse_graph_var(str(var))
        if parsed and parsed[0] == space and parsed[2] == "vertex":
            names = conv.graph_var_names(space, parsed[1])
            if all(names[p] in ds.variables for p in conv.GRAPH_PARTS):
                out.append(parsed[1])
    return out


def graph_space(ds: xr.Dataset, dim: str) -> str:
    """The graph space (``"row_graphs"`` or ``"col_graphs"``) of ``dim``, the row or column
    dim of ``ds``: the one check of the dim a graph is asked for or assigned on.

    Raises
    ------
    LoomNameError
        ``dim`` is neither the row nor the column dim; the message names both.

    Examples
    --------
    >>> graph_space(ds, "cell")  # ds opened with dims=("gene", "cell")  # doctest: +SKIP
    'col_graphs'
    """
    row_dim, col_dim = conv.dataset_dims(ds)
    if dim == row_dim:
        return _spec.ROW_GRAPHS
    if dim == col_dim:
        return _spec.COL_GRAPHS
    raise LoomNameError(
        f"no graphs on dim {dim!r}: graphs live on the row dim {row_dim!r} "
        f"or the column dim {col_dim!r}"
    )


def axis_dim(ds: xr.Dataset, space: str, name: str) -> str:
    """The dim graph ``name`` of ``space`` lives on (that of its vertex coordinate)."""
    return str(ds.variables[conv.graph_var_names(space, name)["vertex"]].dims[0])


def graph_dataarray(ds: xr.Dataset, space: str, name: str) -> xr.DataArray:
    """A graph as an ``(n, n)`` :class:`xarray.DataArray` backed by :class:`sparse.COO`.

    The dims are the axis dim and ``{dim}_to`` (xarray cannot index a repeated dim).
    Parallel (multigraph) edges add up in the matrix, as in scipy's ``coo_matrix.tocsr()``:
    a COO that held them twice would be wrong under ``todense()`` (last write wins).  The
    edge list itself, with duplicates and order, is :func:`graph_edge_list`.
    """
    dim = axis_dim(ds, space, name)
    a, b, w = graph_edges(ds, space, name)
    n = ds.sizes[dim]
    coo = sparse.COO(np.stack([a, b]), w, shape=(n, n), has_duplicates=True, sorted=False)
    return xr.DataArray(coo, dims=(dim, f"{dim}_to"), name=name)


def graph_edge_list(ds: xr.Dataset, space: str, name: str) -> xr.Dataset:
    """A graph's edge list (``a``, ``b``, ``w`` on dim ``edge``), renumbered to the current
    rows or columns, with duplicate edges and the file's edge order kept."""
    a, b, w = graph_edges(ds, space, name)
    return xr.Dataset({"a": ("edge", a), "b": ("edge", b), "w": ("edge", w)})


def to_scipy_graph(graph: xr.DataArray, format: str = "coo") -> scipy.sparse.spmatrix:
    """Convert a graph DataArray to a scipy sparse matrix (``"coo"``, ``"csr"``, ``"csc"``)."""
    coo: sparse.COO = graph.data
    matrix = scipy.sparse.coo_matrix((coo.data, (coo.coords[0], coo.coords[1])), shape=coo.shape)
    return matrix.asformat(format)


def edges_from_matrix(matrix: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge list ``(a, b, w)`` from a sparse.COO, scipy sparse matrix or dense adjacency."""
    if isinstance(matrix, xr.DataArray):
        matrix = matrix.data
    if isinstance(matrix, sparse.SparseArray):
        coo = matrix.asformat("coo")
        a, b, w = coo.coords[0], coo.coords[1], coo.data
    elif scipy.sparse.issparse(matrix):
        coo = scipy.sparse.coo_matrix(matrix)
        a, b, w = coo.row, coo.col, coo.data
    else:
        dense = np.asarray(matrix)
        if dense.ndim != 2:
            raise LoomFormatError(f"graph adjacency must be 2-D, found shape {dense.shape}")
        a, b = np.nonzero(dense)
        w = dense[a, b]
    shape = tuple(matrix.shape)
    if shape != (n, n):
        raise LoomFormatError(f"graph has shape {shape}; expected ({n}, {n})")
    return a.astype(np.int64), b.astype(np.int64), np.asarray(w, dtype=np.float64)


def assign_graph(ds: xr.Dataset, name: str, matrix: Any, dim: str) -> xr.Dataset:
    """Return ``ds`` with graph ``name`` on ``dim`` added or replaced.

    Parameters
    ----------
    ds
        A Loom Dataset.
    name
        Graph name (no ``/``).
    matrix
        ``(n, n)`` adjacency: :class:`sparse.COO`, scipy sparse matrix or dense array.
    dim
        The row or column dim of ``ds``.
    """
    space = graph_space(ds, dim)
    conv.check_link_name(name)
    n = ds.sizes[dim]
    a, b, w = edges_from_matrix(matrix, n)
    names = conv.graph_var_names(space, name)
    out = ds.drop_vars([v for v in names.values() if v in ds.variables])
    coords = {
        names["vertex"]: xr.Variable(dim, np.arange(n, dtype=np.int64)),
        names["a"]: xr.Variable(names["edge"], a),
        names["b"]: xr.Variable(names["edge"], b),
        names["w"]: xr.Variable(names["edge"], w),
    }
    out = out.assign_coords(coords)
    out.encoding = dict(ds.encoding)
    return out

"""The ``ds.loom`` accessor: Loom-specific views of a Dataset, delegating to other modules.

Graphs are reached one way: through the mapping of their axis, ``ds.loom.row_graphs`` or
``ds.loom.col_graphs`` (:class:`GraphMapping`; ``ds.loom.graphs(dim)`` picks one by dim
name).  Each method that takes ``dim`` defaults to the column dim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse
import xarray as xr

from loomx._format import graphs
from loomx._format import names as conv
from loomx._write import writer as _writer
from loomx.errors import LoomNameError, LoomTypeError
from loomx.ops import loader as _loader
from loomx.ops import operations as ops
from loomx.ops import qc

__all__ = ["GraphMapping", "LoomAccessor"]


class GraphMapping(Mapping[str, xr.DataArray]):
    """The graphs of one axis by name: ``ds.loom.row_graphs`` or ``ds.loom.col_graphs``.

    The one way to reach graphs.  Listing names (``list(graphs)``, ``name in graphs``)
    reads nothing; each of the following loads graph ``name`` when called, as the induced
    subgraph of the Dataset's current rows or columns, renumbered:

    - ``graphs[name]``: an ``(n, n)`` :class:`xarray.DataArray` backed by
      :class:`sparse.COO`, dims ``(dim, f"{dim}_to")``; parallel (multigraph) edges add up.
    - ``graphs.edges(name)``: the edge list itself, duplicate edges and edge order kept.
    - ``graphs.to_scipy(name)``: a scipy sparse matrix, as ``graphs[name]``.
    - ``graphs.assign(name, matrix)``: a new Dataset with the graph added or replaced.

    Parameters
    ----------
    ds
        A Loom Dataset.
    dim
        Its row or column dim.

    Raises
    ------
    LoomNameError
        ``dim`` is neither the row nor the column dim of ``ds``.

    Examples
    --------
    >>> list(ds.loom.col_graphs)  # doctest: +SKIP
    ['KNN', 'MKNN']
    >>> knn = ds.loom.col_graphs["KNN"]  # (cells, cells) sparse DataArray  # doctest: +SKIP
    """

    def __init__(self, ds: xr.Dataset, dim: str):
        self._space = graphs.graph_space(ds, dim)
        self._ds = ds
        self._dim = dim

    @property
    def dim(self) -> str:
        """The dim these graphs connect: the row or the column dim.

        Examples
        --------
        >>> ds.loom.col_graphs.dim  # doctest: +SKIP
        'col'
        """
        return self._dim

    def __getitem__(self, name: str) -> xr.DataArray:
        self._check(name)
        return graphs.graph_dataarray(self._ds, self._space, name)

    def __iter__(self) -> Iterator[str]:
        return iter(graphs.graph_names(self._ds, self._space))

    def __len__(self) -> int:
        return len(graphs.graph_names(self._ds, self._space))

    def __contains__(self, name: object) -> bool:  # without loading the graph
        return name in graphs.graph_names(self._ds, self._space)

    def __repr__(self) -> str:
        return f"<{self._space} on {self._dim!r}: {graphs.graph_names(self._ds, self._space)}>"

    def _check(self, name: str) -> None:
        found = graphs.graph_names(self._ds, self._space)
        if name not in found:
            raise LoomNameError(f"no graph {name!r} in {self._space}; found {found}")

    def edges(self, name: str) -> xr.Dataset:
        """The edge list of graph ``name``: ``a``, ``b`` and ``w`` on dim ``edge``.

        Vertices are positions along :attr:`dim` in the current Dataset; duplicate
        (multigraph) edges and the file's edge order are kept, unlike ``graphs[name]``,
        which adds parallel edges up.

        Parameters
        ----------
        name
            The graph's name.

        Returns
        -------
        xarray.Dataset
            ``a`` and ``b`` (int64 vertex positions) and ``w`` (weights).

        Raises
        ------
        LoomNameError
            No graph ``name`` on this axis.

        Examples
        --------
        >>> knn = ds.loom.col_graphs.edges("KNN")  # doctest: +SKIP
        >>> knn["a"].values[:3], knn["b"].values[:3]  # doctest: +SKIP
        (array([0, 0, 1]), array([1, 1, 0]))
        """
        self._check(name)
        return graphs.graph_edge_list(self._ds, self._space, name)

    def to_scipy(self, name: str, format: str = "csr") -> scipy.sparse.spmatrix:
        """Graph ``name`` as a scipy sparse matrix, parallel edges added up as in
        ``graphs[name]``.

        Parameters
        ----------
        name
            The graph's name.
        format
            ``"csr"``, ``"csc"`` or ``"coo"``.

        Examples
        --------
        >>> knn = ds.loom.col_graphs.to_scipy("KNN")  # scipy.sparse CSR  # doctest: +SKIP
        """
        return graphs.to_scipy_graph(self[name], format)

    def assign(self, name: str, matrix: Any) -> xr.Dataset:
        """A new Dataset with graph ``name`` on :attr:`dim` added or replaced.

        The Dataset this mapping came from is left as it was; write the result with
        ``loomx.to_loom(out, path, mode="a")``.

        Parameters
        ----------
        name
            The graph's name (no ``/``).
        matrix
            ``(n, n)`` adjacency, ``n`` the length of :attr:`dim`: a :class:`sparse.COO`,
            a scipy sparse matrix or a dense array (its non-zeros become edges).

        Raises
        ------
        LoomFormatError
            ``matrix`` is not ``(n, n)``.
        LoomInvalidNameError
            ``name`` cannot be stored.

        Examples
        --------
        >>> out = ds.loom.col_graphs.assign("SNN", snn)  # doctest: +SKIP
        >>> out.loom.to_loom("pbmc.loom", mode="a")  # doctest: +SKIP
        """
        return graphs.assign_graph(self._ds, name, matrix, self._dim)


@xr.register_dataset_accessor("loom")
class LoomAccessor:
    """Loom operations on a Dataset opened with :func:`loomx.open_loom`.

    Examples
    --------
    >>> ds = loomx.open_loom("pbmc.loom")  # doctest: +SKIP
    >>> knn = ds.loom.col_graphs["KNN"]  # doctest: +SKIP
    """

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    @property
    def dims(self) -> tuple[str, str]:
        """The (row, column) dim names.

        Examples
        --------
        >>> loomx.open_loom("pbmc.loom", dims=("gene", "cell")).loom.dims  # doctest: +SKIP
        ('gene', 'cell')
        """
        return conv.dataset_dims(self._ds)

    @property
    def row_graphs(self) -> GraphMapping:
        """Row graphs by name (:class:`GraphMapping`): each an ``(N, N)`` sparse DataArray,
        with its edge list, scipy conversion and assignment on the mapping.

        Examples
        --------
        >>> coexpr = ds.loom.row_graphs["coexpr"]  # (genes, genes)  # doctest: +SKIP
        """
        return GraphMapping(self._ds, self.dims[0])

    @property
    def col_graphs(self) -> GraphMapping:
        """Column graphs by name (:class:`GraphMapping`): each an ``(M, M)`` sparse
        DataArray, with its edge list, scipy conversion and assignment on the mapping.

        Examples
        --------
        >>> knn = ds.loom.col_graphs["KNN"]  # (cells, cells)  # doctest: +SKIP
        >>> edges = ds.loom.col_graphs.edges("KNN")  # doctest: +SKIP
        >>> out = ds.loom.col_graphs.assign("SNN", snn)  # doctest: +SKIP
        """
        return GraphMapping(self._ds, self.dims[1])

    def graphs(self, dim: str) -> GraphMapping:
        """The graph mapping of ``dim``: :attr:`row_graphs` or :attr:`col_graphs`, chosen
        by dim name, for code written for either axis.

        Raises
        ------
        LoomNameError
            ``dim`` is neither the row nor the column dim.

        Examples
        --------
        >>> for dim in ds.loom.dims:  # doctest: +SKIP
        ...     print(dim, list(ds.loom.graphs(dim)))
        """
        return GraphMapping(self._ds, dim)

    def path_of(self, name: str) -> str:
        """The HDF5 path variable ``name`` is stored at (or would be written to).

        The inverse of the naming rule in :mod:`loomx._format.names`: layers, attributes and
        graph side-variables (whose path is the graph group).

        Examples
        --------
        >>> ds.loom.path_of("Gene")  # doctest: +SKIP
        '/row_attrs/Gene'
        >>> ds.loom.path_of("col_graphs:KNN:a")  # doctest: +SKIP
        '/col_graphs/KNN/a'
        """
        if name not in self._ds.variables:
            raise LoomNameError(f"no variable {name!r} in the Dataset")
        graph = conv.parse_graph_var(name)
        if graph is not None:
            space, graph_name, part = graph
            if part == "edge":
                raise LoomNameError(f"{name!r} is a dim, not a stored variable")
            default = f"/{space}/{graph_name}" + ("" if part == "vertex" else f"/{part}")
            return str(self._ds.variables[name].encoding.get("loom_path", default))
        paths = conv.variable_paths(self._ds, self.dims)
        if name not in paths:
            raise LoomNameError(f"{name!r} is not stored in a Loom file (a coordinate of a dim)")
        return paths[name]

    def pick(self, *names: str, dim: str | None = None) -> xr.DataArray:
        """The attributes among ``names`` that exist on ``dim`` (default the dim of the
        first one found), as loompy's ``ds.ra["Gene", "GeneName"]``.

        One found: that attribute.  Several: stacked into an ``(n, k)`` array (dim
        ``attribute`` holding their names); they must be all numbers (promoted to one
        dtype) or all of one other dtype kind.  Names that do not exist are skipped.

        Raises
        ------
        LoomNameError
            None of ``names`` exists.
        LoomTypeError
            The attributes found mix dtype kinds that do not stack (strings and numbers).

        Examples
        --------
        >>> genes = ds.loom.pick("Gene", "GeneName")  # whichever the file has  # doctest: +SKIP
        >>> xy = ds.loom.pick("TSNE1", "TSNE2")  # (cells, 2)  # doctest: +SKIP
        """
        found = [n for n in names if n in self._ds.coords and self._ds[n].ndim >= 1]
        if dim is not None:
            found = [n for n in found if self._ds[n].dims[0] == dim]
        elif found:
            found = [n for n in found if self._ds[n].dims[0] == self._ds[found[0]].dims[0]]
        if not found:
            raise LoomNameError(f"none of the attributes {list(names)} exists")
        if len(found) == 1:
            return self._ds[found[0]]
        kinds = {self._ds[n].dtype.kind for n in found}
        if len(kinds) > 1 and not kinds <= set("biuf"):
            dtypes = ", ".join(f"{n!r} {self._ds[n].dtype}" for n in found)
            raise LoomTypeError(
                f"attributes of different dtype kinds do not stack: found {dtypes}; "
                "expected all numbers or all of one dtype kind (pick them one by one)"
            )
        parts = [self._ds[n].variable for n in found]
        first_dim = parts[0].dims[0]
        stacked = xr.Variable.concat(
            [p.set_dims({first_dim: p.shape[0]}) for p in parts], dim="attribute"
        ).transpose(first_dim, "attribute")
        return xr.DataArray(stacked, coords={"attribute": found})

    def attrs_frame(self, dim: str | None = None) -> Any:
        """The 1-D attributes on ``dim`` (default the column dim) as a pandas DataFrame.

        Back into a Dataset: ``ds.assign_coords({k: (dim, v) for k, v in df.items()})``,
        or ``loomx.from_arrays(..., col_attrs=df)``.

        Examples
        --------
        >>> cells = ds.loom.attrs_frame("col")  # doctest: +SKIP
        >>> cells.groupby("ClusterID").size()  # doctest: +SKIP
        """
        import pandas as pd

        dim = dim or self.dims[1]
        names = [
            str(n)
            for n, v in self._ds.coords.items()
            if v.dims == (dim,) and conv.parse_graph_var(str(n)) is None
        ]
        return pd.DataFrame({n: self._ds[n].values for n in names})

    @property
    def layers(self) -> list[str]:
        """Names of the data variables that are layers (dims ``(row, col)``).

        Examples
        --------
        >>> ds.loom.layers  # doctest: +SKIP
        ['matrix', 'spliced', 'unspliced']
        """
        return ops.layer_names(self._ds)

    def isel(self, indexers: dict[str, Any] | None = None, **kwargs: Any) -> xr.Dataset:
        """A lazy view, like loompy's ``ds.view[rows, cols]``: every layer, attribute and
        graph is sliced (graphs become the induced subgraph, renumbered on use).

        Examples
        --------
        >>> view = ds.loom.isel(col=ds["ClusterID"] == 2)  # doctest: +SKIP
        >>> view.loom.col_graphs["KNN"].shape  # the induced subgraph  # doctest: +SKIP
        """
        out = self._ds.isel(indexers, **kwargs)
        out.encoding = dict(self._ds.encoding)
        return out

    def scan(
        self,
        dim: str | None = None,
        batch_size: int | None = None,
        items: Sequence[int] | np.ndarray | None = None,
        layers: Sequence[str] | None = None,
        prefetch: bool = True,
    ) -> Iterator[tuple[int, np.ndarray, xr.Dataset]]:
        """Batches ``(start, indices, view)`` along ``dim`` (default columns); see
        :func:`loomx.ops.operations.scan`.

        Examples
        --------
        >>> for start, idx, view in ds.loom.scan(dim="col"):  # doctest: +SKIP
        ...     totals[idx] = view["matrix"].sum("row").values
        """
        return ops.scan(self._ds, dim or self.dims[1], batch_size, items, layers, prefetch)

    def batches(self, batch_size: int = 256, **kwargs: Any) -> _loader.BatchLoader:
        """Minibatches of cells for training (dicts of numpy arrays, cells x genes); see
        :func:`loomx.ops.loader.batches` for ``layer``, ``attrs``, ``shuffle``, ``seed``,
        ``epoch``, ``mode`` (``"block"`` or ``"uniform"``) and the rest.

        Examples
        --------
        >>> for batch in ds.loom.batches(256, attrs=["ClusterID"], seed=0):  # doctest: +SKIP
        ...     x, y = batch["X"], batch["ClusterID"]
        """
        return _loader.batches(self._ds, batch_size, **kwargs)

    def map_vectors(
        self,
        funcs: Sequence[Callable[[np.ndarray], Any]],
        dim: str | None = None,
        layer: str = "matrix",
    ) -> list[xr.DataArray]:
        """Apply each function to every vector along ``dim`` (default columns), lazily,
        like loompy's ``map``; see :func:`loomx.ops.operations.map_vectors`.

        Examples
        --------
        >>> mean, sd = ds.loom.map_vectors([np.mean, np.std], dim="col")  # doctest: +SKIP
        """
        return ops.map_vectors(self._ds, funcs, dim or self.dims[1], layer)

    def permute(self, order: Sequence[int] | np.ndarray, dim: str | None = None) -> xr.Dataset:
        """Lazily reorder ``dim`` (default columns); see :func:`loomx.ops.operations.permute`.

        Examples
        --------
        >>> by_cluster = ds.loom.permute(np.argsort(ds["ClusterID"].values))  # doctest: +SKIP
        """
        return ops.permute(self._ds, order, dim or self.dims[1])

    def aggregate(
        self,
        by: str,
        func: str = "mean",
        dim: str | None = None,
        layers: Sequence[str] | None = None,
    ) -> xr.Dataset:
        """One column per group of ``by``; see :func:`loomx.ops.operations.aggregate`.

        Examples
        --------
        >>> means = ds.loom.aggregate("ClusterID", "mean")  # doctest: +SKIP
        """
        return ops.aggregate(self._ds, by, func, dim or self.dims[1], layers)

    def enrichment(self, by: str, dim: str | None = None, layer: str = "matrix") -> xr.DataArray:
        """cytograph's enrichment score per group of ``by``; see
        :func:`loomx.ops.operations.enrichment`.

        Examples
        --------
        >>> scores = ds.loom.enrichment("ClusterID")  # doctest: +SKIP
        """
        return ops.enrichment(self._ds, by, dim or self.dims[1], layer)

    def to_scipy(self, layer: str = "matrix", format: str = "csr") -> scipy.sparse.spmatrix:
        """Load a layer as a scipy sparse matrix; see :func:`loomx.ops.operations.to_scipy`.

        Examples
        --------
        >>> counts = ds.loom.to_scipy("matrix", format="csc")  # doctest: +SKIP
        """
        return ops.to_scipy(self._ds, layer, format)

    def to_loom(self, path: str, **kwargs: Any) -> Any:
        """Write this Dataset as a Loom file; see :func:`loomx.to_loom`.

        Examples
        --------
        >>> out = ds.loom.col_graphs.assign("SNN", snn)  # doctest: +SKIP
        >>> out.loom.to_loom("pbmc.loom", mode="a")  # doctest: +SKIP
        """
        return _writer.to_loom(self._ds, path, **kwargs)

    def assign_qc(self, *, layer: str = "matrix", **kwargs: Any) -> xr.Dataset:
        """A new Dataset with scanpy's QC metrics of ``layer`` as column and row attributes,
        computed in one read.

        The same as ``loomx.assign_qc(ds, *loomx.calculate_qc_metrics(ds, layer, **kwargs))``
        (:func:`loomx.assign_qc` takes metrics already computed; this method computes them).

        Parameters
        ----------
        layer
            The layer holding counts.
        **kwargs
            ``mito_prefixes``, ``percent_top``, ``gene_symbols``, ``compute``: as for
            :func:`loomx.calculate_qc_metrics`.

        Examples
        --------
        >>> out = ds.loom.assign_qc(mito_prefixes=["MT-"])  # doctest: +SKIP
        >>> loomx.to_loom(out, "pbmc.loom", mode="a")  # doctest: +SKIP
        """
        return qc.assign_qc(self._ds, *qc.calculate_qc_metrics(self._ds, layer, **kwargs))

"""The ``ds.loom`` accessor: Loom-specific views of a Dataset, delegating to other modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import scipy.sparse
import xarray as xr

from loomx._format import graphs
from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._write import writer as _writer
from loomx.errors import LoomNameError
from loomx.ops import operations as ops
from loomx.ops import qc


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
        """The (row, column) dim names."""
        return conv.dataset_dims(self._ds)

    @property
    def row_graphs(self) -> graphs.GraphMapping:
        """Row graphs by name, each an ``(N, N)`` sparse DataArray loaded on lookup."""
        return graphs.GraphMapping(self._ds, _spec.ROW_GRAPHS)

    @property
    def col_graphs(self) -> graphs.GraphMapping:
        """Column graphs by name, each an ``(M, M)`` sparse DataArray loaded on lookup."""
        return graphs.GraphMapping(self._ds, _spec.COL_GRAPHS)

    def edges(self, name: str, dim: str | None = None) -> xr.Dataset:
        """Edge list of graph ``name`` on ``dim`` (default the column dim): ``a``, ``b``,
        ``w`` renumbered to the current rows or columns, duplicates and order kept."""
        space = _spec.ROW_GRAPHS if (dim or self.dims[1]) == self.dims[0] else _spec.COL_GRAPHS
        return graphs.graph_edge_list(self._ds, space, name)

    def assign_graph(self, name: str, matrix: Any, dim: str | None = None) -> xr.Dataset:
        """Return a new Dataset with graph ``name`` added or replaced on ``dim`` (default
        the column dim), from a sparse.COO, scipy sparse matrix or dense adjacency."""
        return graphs.assign_graph(self._ds, name, matrix, dim or self.dims[1])

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
        ``attribute`` holding their names); they must share a dtype kind.  Names that do
        not exist are skipped.

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
            raise LoomNameError(f"attributes {found} mix strings and numbers; pick them one by one")
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
        """Names of the data variables that are layers (dims ``(row, col)``)."""
        return ops.layer_names(self._ds)

    def isel(self, indexers: dict[str, Any] | None = None, **kwargs: Any) -> xr.Dataset:
        """A lazy view, like loompy's ``ds.view[rows, cols]``: every layer, attribute and
        graph is sliced (graphs become the induced subgraph, renumbered on use)."""
        out = self._ds.isel(indexers, **kwargs)
        out.encoding = dict(self._ds.encoding)
        return out

    def scan(
        self,
        dim: str | None = None,
        batch_size: int | None = None,
        items: Sequence[int] | np.ndarray | None = None,
        layers: Sequence[str] | None = None,
    ) -> Iterator[tuple[int, np.ndarray, xr.Dataset]]:
        """Batches ``(start, indices, view)`` along ``dim`` (default columns); see
        :func:`loomx.ops.operations.scan`."""
        return ops.scan(self._ds, dim or self.dims[1], batch_size, items, layers)

    def map(
        self,
        funcs: Sequence[Callable[[np.ndarray], Any]],
        dim: str | None = None,
        layer: str = "matrix",
    ) -> list[xr.DataArray]:
        """Apply each function to every vector along ``dim`` (default columns), lazily;
        see :func:`loomx.ops.operations.map_vectors`."""
        return ops.map_vectors(self._ds, funcs, dim or self.dims[1], layer)

    def permute(self, order: Sequence[int] | np.ndarray, dim: str | None = None) -> xr.Dataset:
        """Lazily reorder ``dim`` (default columns); see :func:`loomx.ops.operations.permute`."""
        return ops.permute(self._ds, order, dim or self.dims[1])

    def aggregate(
        self,
        by: str,
        func: str = "mean",
        dim: str | None = None,
        layers: Sequence[str] | None = None,
    ) -> xr.Dataset:
        """One column per group of ``by``; see :func:`loomx.ops.operations.aggregate`."""
        return ops.aggregate(self._ds, by, func, dim or self.dims[1], layers)

    def to_scipy(self, layer: str = "matrix", format: str = "csr") -> scipy.sparse.spmatrix:
        """Load a layer as a scipy sparse matrix; see :func:`loomx.ops.operations.to_scipy`."""
        return ops.to_scipy(self._ds, layer, format)

    def to_loom(self, path: str, **kwargs: Any) -> Any:
        """Write this Dataset as a Loom file; see :func:`loomx.to_loom`."""
        return _writer.to_loom(self._ds, path, **kwargs)

    def qc(self, layer: str = "matrix", **kwargs: Any) -> xr.Dataset:
        """This Dataset with scanpy's QC metrics of ``layer`` as column and row attributes,
        computed in one read; see :func:`loomx.calculate_qc_metrics` and
        :func:`loomx.assign_qc`.

        Examples
        --------
        >>> out = ds.loom.qc(mito_prefixes=["MT-"])  # doctest: +SKIP
        >>> loomx.to_loom(out, "pbmc.loom", mode="a")  # doctest: +SKIP
        """
        return qc.assign_qc(self._ds, *qc.calculate_qc_metrics(self._ds, layer, **kwargs))

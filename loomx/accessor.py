"""The ``ds.loom`` accessor: Loom-specific views of a Dataset, delegating to other modules."""

from __future__ import annotations

from typing import Any

import xarray as xr

from . import _conventions as conv
from . import _spec, graphs


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
        return tuple(self._ds.encoding.get("loom_dims", conv.DEFAULT_DIMS))  # type: ignore[return-value]

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

    @property
    def layers(self) -> list[str]:
        """Names of the data variables that are layers (dims ``(row, col)``)."""
        return [str(n) for n, v in self._ds.data_vars.items() if v.dims == self.dims]

"""Datasets from in-memory arrays: what ``loompy.create`` takes, ready for :func:`loomx.to_loom`.

Sparse matrices (scipy in any format, pydata ``sparse``) become dask arrays whose blocks are
cut from the sparse matrix and made dense one at a time, as the writer consumes them: the
whole matrix is never dense in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse
import sparse
import xarray as xr

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._format import values as _values
from loomx._format.graphs import assign_graph
from loomx._read import chunking as _chunking
from loomx.errors import LoomFormatError

__all__ = [
    "SparseBlocks",
    "from_arrays",
    "layer_array",
]

_EDGE_ROWS = 8 * _spec.LOOMPY_LAYER_CHUNKS
"""Rows per block of a row-major sparse matrix (columns per block of a column-major one)."""


class SparseBlocks:
    """A 2-D scipy sparse matrix that ``dask.array.from_array`` slices into dense blocks.

    Row-major input (CSR) is cut cheaply by rows, column-major input (CSC) by columns; each
    block costs one pass over the non-zeros of its rows (or columns).
    """

    def __init__(self, matrix: scipy.sparse.spmatrix | scipy.sparse.sparray, dtype: Any = None):
        if matrix.format not in ("csr", "csc"):
            matrix = matrix.tocsr()
        self.matrix = matrix
        self.shape = tuple(matrix.shape)
        self.dtype = np.dtype(dtype or matrix.dtype)
        self.ndim = 2

    @property
    def column_major(self) -> bool:
        return self.matrix.format == "csc"

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        block = self.matrix[key]
        return np.asarray(block.toarray(), dtype=self.dtype)

    def block_shape(self, itemsize: int) -> tuple[int, int]:
        """Dask block shape: thin along the cheap axis, about ``block_bytes`` each."""
        n, m = self.shape
        edge = _spec.LOOMPY_LAYER_CHUNKS
        long = _chunking.band_width(_EDGE_ROWS, itemsize, edge)
        rows, cols = (long, _EDGE_ROWS) if self.column_major else (_EDGE_ROWS, long)
        return min(rows, max(n, 1)), min(cols, max(m, 1))


def layer_array(values: Any, name: str = _spec.MATRIX) -> Any:
    """A layer's values as numpy or dask (never a densified sparse matrix).

    Accepts numpy arrays and anything ``numpy.asarray`` takes, dask arrays, xarray
    DataArrays, scipy sparse matrices or arrays of any format and pydata ``sparse`` arrays.
    """
    if isinstance(values, xr.DataArray):
        values = values.data
    if isinstance(values, sparse.SparseArray):
        values = values.to_scipy_sparse()
    if scipy.sparse.issparse(values):
        blocks = SparseBlocks(values)
        dtype = blocks.dtype
        chunks = blocks.block_shape(dtype.itemsize)
        return da.from_array(
            blocks,
            chunks=chunks,
            asarray=False,
            fancy=False,
            meta=np.empty((0, 0), dtype),
            name=f"loomx-sparse-{name}-{id(values):x}",
        )
    if isinstance(values, da.Array):
        return values
    return np.asarray(values)


def _columns(attrs: Any, what: str) -> dict[str, Any]:
    if attrs is None:
        return {}
    if hasattr(attrs, "to_dict") and hasattr(attrs, "columns"):  # a pandas DataFrame
        return {str(col): attrs[col].to_numpy() for col in attrs.columns}
    if not isinstance(attrs, Mapping):
        raise TypeError(f"{what} must be a dict or a pandas DataFrame, found {type(attrs)}")
    return {str(k): v for k, v in attrs.items()}


def _attr_variables(
    values: Any, dim: str, var_name: str, n: int, h5path: str
) -> dict[str, xr.Variable]:
    """One attribute, and for a structured array (or a DataFrame, by its columns) the
    coordinate of its field names: it is written back as a compound attribute."""
    if hasattr(values, "columns") and hasattr(values, "to_records"):  # a pandas DataFrame
        values = values.to_records(index=False)
    if isinstance(values, np.ndarray) and values.dtype.names is not None:
        try:
            plain, fields = _values.compound_to_array(values)
        except TypeError as err:
            raise LoomFormatError(f"{h5path}: {err}", h5path=h5path) from err
        dtype = np.dtype([(f, values.dtype.fields[f][0]) for f in fields])  # without offsets
        var = _attr_variable(plain, dim, var_name, n, h5path)
        var.encoding["dtype"] = dtype
        extra = var.dims[1]
        return {var_name: var, extra: xr.Variable(extra, np.array(fields, dtype=object))}
    return {var_name: _attr_variable(values, dim, var_name, n, h5path)}


def _attr_variable(values: Any, dim: str, var_name: str, n: int, h5path: str) -> xr.Variable:
    if isinstance(values, xr.DataArray):
        values = values.data
    if scipy.sparse.issparse(values) or isinstance(values, sparse.SparseArray):
        values = values.toarray() if scipy.sparse.issparse(values) else values.todense()
    if not isinstance(values, da.Array):
        values = np.asarray(values)
        if values.dtype.kind == "U":
            values = values.astype(object)
    if values.ndim == 0 or values.shape[0] != n:
        raise LoomFormatError(
            f"{h5path}: found an attribute of shape {values.shape}; expected {n} values "
            f"along {dim!r}",
            h5path=h5path,
        )
    return xr.Variable((dim, *conv.extra_dim_names(var_name, values.ndim)), values)


def from_arrays(
    matrix: Any,
    row_attrs: Mapping[str, Any] | Any = None,
    col_attrs: Mapping[str, Any] | Any = None,
    *,
    layers: Mapping[str, Any] | None = None,
    row_graphs: Mapping[str, Any] | None = None,
    col_graphs: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    dims: Sequence[str] = conv.DEFAULT_DIMS,
) -> xr.Dataset:
    """A Loom Dataset from in-memory arrays, ready for :func:`loomx.to_loom`.

    The arguments are those of ``loompy.create``; variables are named as
    :func:`loomx.open_loom` would name them when reading the file back.

    Parameters
    ----------
    matrix
        The main matrix, ``(rows, cols)``: numpy, dask, scipy sparse (any format) or pydata
        ``sparse``.  Sparse input stays sparse: each dask block is made dense on its own
        while the file is written.
    row_attrs, col_attrs
        ``{name: values}`` or a pandas DataFrame (its columns; use ``df.reset_index()`` to
        keep the index).  Values have one entry (or one row, for an ``(n, k)`` attribute)
        per row or column.
    layers
        More layers, ``{name: matrix}``, of the same shape (``""`` is the main matrix).
    row_graphs, col_graphs
        ``{name: adjacency}``: scipy or pydata sparse, or a dense ``(n, n)`` array.
    attrs
        Global attributes.
    dims
        Names of the row and column dims.

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    LoomFormatError
        A layer, attribute or graph whose shape does not fit the matrix.

    Examples
    --------
    >>> import scipy.sparse
    >>> X = scipy.sparse.random(100, 50, density=0.1, format="csr", dtype="float32")
    >>> ds = from_arrays(X, {"Gene": [f"g{i}" for i in range(100)]}, {"CellID": range(50)})
    >>> ds["matrix"].shape
    (100, 50)
    >>> ds.loom.to_loom("new.loom")  # doctest: +SKIP
    """
    row_dim, col_dim = (str(d) for d in dims)
    all_layers = {"": matrix, **dict(layers or {})}
    rows = _columns(row_attrs, "row_attrs")
    cols = _columns(col_attrs, "col_attrs")
    names = conv.assign_names(all_layers, rows, cols, (row_dim, col_dim))
    data_vars: dict[str, xr.Variable] = {}
    shape = None
    for loom_name, values in all_layers.items():
        h5path = f"/{_spec.MATRIX}" if loom_name == "" else f"/{_spec.LAYERS}/{loom_name}"
        conv.check_link_name(loom_name or _spec.MATRIX, h5path=h5path)
        data = layer_array(values, loom_name or _spec.MATRIX)
        if data.ndim != 2:
            raise LoomFormatError(
                f"found a layer of shape {data.shape}; expected 2-D", h5path=h5path
            )
        if shape is None:
            shape = tuple(data.shape)
        elif tuple(data.shape) != shape:
            raise LoomFormatError(
                f"{h5path}: found a layer of shape {data.shape}; expected the matrix's {shape}",
                h5path=h5path,
            )
        data_vars[names[(_spec.LAYERS, loom_name)]] = xr.Variable((row_dim, col_dim), data)
    assert shape is not None
    coords: dict[str, xr.Variable] = {}
    for space, found, dim, n in (
        (_spec.ROW_ATTRS, rows, row_dim, shape[0]),
        (_spec.COL_ATTRS, cols, col_dim, shape[1]),
    ):
        for loom_name, values in found.items():
            h5path = f"/{space}/{loom_name}"
            conv.check_link_name(loom_name, h5path=h5path)
            var_name = names[(space, loom_name)]
            coords.update(_attr_variables(values, dim, var_name, n, h5path))
    ds = xr.Dataset(data_vars, coords=coords, attrs=dict(attrs or {}))
    ds.encoding["loom_dims"] = (row_dim, col_dim)
    for graphs, dim in ((row_graphs, row_dim), (col_graphs, col_dim)):
        for name, adjacency in (graphs or {}).items():
            ds = assign_graph(ds, str(name), adjacency, dim)
    return ds

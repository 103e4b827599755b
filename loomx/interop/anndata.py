"""AnnData bridge and file conversions (Loom, h5ad, 10x), for Python and ``loomx convert``.

AnnData puts cells on rows (``obs``) and genes on columns (``var``); Loom the other way
round.  :func:`to_anndata` keeps the data lazy (``X`` and ``layers`` are transposed dask
arrays) and keeps what ``anndata.read_loom`` drops: graphs become ``obsp``/``varp``, global
attributes ``uns``, and N-D attributes ``obsm``/``varm`` under their own names.
"""

from __future__ import annotations

import warnings
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse
import xarray as xr

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._format import values as _values
from loomx._write.plan import field_names
from loomx.errors import LoomFormatError, LoomFormatWarning
from loomx.interop.tenx import dense_bands

__all__ = [
    "from_anndata",
    "to_anndata",
]

OBS_NAMES = ("CellID", "obs_names")
VAR_NAMES = ("Gene", "var_names", "Accession")


def _attributes(ds: xr.Dataset, dim: str, space: str) -> dict[str, xr.DataArray]:
    """Attributes of ``space`` on ``dim`` by their Loom name."""
    paths = conv.variable_paths(ds, conv.dataset_dims(ds))
    return {
        h5path.rsplit("/", 1)[1]: ds[name]
        for name, h5path in paths.items()
        if conv.path_kind(h5path) == space and ds[name].dims[0] == dim
    }


def _frame(attrs: dict[str, xr.DataArray], n: int, index_names: tuple[str, ...]) -> Any:
    columns = {name: np.asarray(v.values) for name, v in attrs.items() if v.ndim == 1}
    index = None
    for name in index_names:
        if name in columns:
            index = pd.Index(columns.pop(name).astype(str), name=name)
            break
    if index is None:
        index = pd.Index([str(i) for i in range(n)])
    return pd.DataFrame(columns, index=index)


def to_anndata(ds: xr.Dataset, layer: str = "matrix") -> Any:
    """A lazy :class:`anndata.AnnData` view of a Loom Dataset (cells x genes).

    ``X`` is ``layer`` transposed, as a dask array (nothing is read); other layers go to
    ``layers``; 1-D column/row attributes to ``obs``/``var`` (indexed by ``CellID`` and
    ``Gene`` when present); N-D ones to ``obsm``/``varm`` (compound ones, SCope's
    ``RegulonsAUC`` or ``Embeddings_X``, as DataFrames whose columns are the field names,
    each of its field's dtype); column/row graphs to
    ``obsp``/``varp`` (scipy CSR, parallel edges summed); global attributes to ``uns``.

    Examples
    --------
    >>> adata = loomx.to_anndata(loomx.open_loom("pbmc.loom"))  # doctest: +SKIP
    >>> sc.pp.calculate_qc_metrics(adata)  # doctest: +SKIP
    """
    import anndata

    row, col = conv.dataset_dims(ds)
    layers = [str(n) for n, v in ds.data_vars.items() if set(v.dims) == {row, col}]
    if layer not in layers:
        raise LoomFormatError(f"no layer {layer!r}; layers are {layers}")

    def lazy(name: str) -> da.Array:
        var = ds[name].transpose(col, row)
        return var.data if isinstance(var.data, da.Array) else da.from_array(var.variable)

    col_attrs = _attributes(ds, col, _spec.COL_ATTRS)
    row_attrs = _attributes(ds, row, _spec.ROW_ATTRS)
    obs = _frame(col_attrs, ds.sizes[col], OBS_NAMES)
    var = _frame(row_attrs, ds.sizes[row], VAR_NAMES)
    adata = anndata.AnnData(
        X=lazy(layer),
        obs=obs,
        var=var,
        obsm={k: _multi(ds, v, obs.index) for k, v in col_attrs.items() if v.ndim > 1},
        varm={k: _multi(ds, v, var.index) for k, v in row_attrs.items() if v.ndim > 1},
        obsp={k: _csr(g) for k, g in ds.loom.col_graphs.items()},
        varp={k: _csr(g) for k, g in ds.loom.row_graphs.items()},
        layers={name: lazy(name) for name in layers if name != layer},
        uns={str(k): v for k, v in ds.attrs.items() if k != _spec.VERSION_KEY},
    )
    return adata


def _multi(ds: xr.Dataset, attr: xr.DataArray, index: pd.Index) -> Any:
    """An N-D attribute for ``obsm``/``varm``: a compound one (SCope's embeddings and
    regulons) as a DataFrame with its field names as columns, each of its field's dtype;
    others as an array."""
    values = np.asarray(attr.values)
    wanted = attr.encoding.get("dtype")
    fields = field_names(ds, attr.variable)
    if attr.ndim != 2 or fields is None or not _values.is_compound_request(wanted):
        return values
    dtype = _values.compound_dtype(wanted, fields, values.dtype)
    return pd.DataFrame(_values.array_to_compound(values, dtype), index=index.copy())


def _multi_values(values: Any) -> tuple[np.ndarray, list[str] | None, np.dtype | None]:
    """An ``obsm``/``varm`` entry as a 2-D array; a DataFrame of numbers also gives its
    column names and the compound dtype it is stored as."""
    if scipy.sparse.issparse(values):
        return values.toarray(), None, None
    if hasattr(values, "columns") and all(t.kind in "biuf" for t in values.dtypes):
        records = values.to_records(index=False)
        plain, fields = _values.compound_to_array(records)
        dtype = np.dtype([(f, records.dtype.fields[f][0]) for f in fields])
        return plain, fields, dtype
    return np.asarray(values.values if hasattr(values, "columns") else values), None, None


def _csr(graph: xr.DataArray) -> scipy.sparse.csr_matrix:
    return scipy.sparse.csr_matrix(graph.data.tocsr())


def _column_values(values: Any) -> np.ndarray:
    series = pd.Series(values)
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(series.cat.categories.dtype)
    if series.dtype.kind in "biuf":
        return series.to_numpy()
    return series.astype(str).to_numpy(dtype=object)


def _x_matrix(x: Any, dtype: Any = None) -> Any:
    """``x`` (cells x genes; dense, sparse or dask) transposed to genes x cells, lazily
    and, for sparse input, dense one band of cells at a time."""
    if isinstance(x, da.Array):
        return x.T
    if scipy.sparse.issparse(x):
        csr = scipy.sparse.csr_matrix(x)
        n_cells, n_genes = csr.shape
        return dense_bands(_CsrBand(csr), (n_genes, n_cells), dtype or csr.dtype)
    if hasattr(x, "to_memory"):  # anndata's backed sparse datasets
        return _x_matrix(x.to_memory())
    return np.asarray(x).T


class _CsrBand:
    """Cells ``start:stop`` of a cells x genes CSR matrix, as a dense genes x cells band."""

    def __init__(self, csr: scipy.sparse.csr_matrix) -> None:
        self.csr = csr

    def __call__(self, start: int, stop: int) -> np.ndarray:
        return self.csr[start:stop].toarray().T


def from_anndata(adata: Any, dims: tuple[str, str] = conv.DEFAULT_DIMS) -> xr.Dataset:
    """A Loom Dataset (genes x cells) from an :class:`anndata.AnnData`.

    ``X`` becomes ``matrix`` (a sparse ``X`` stays sparse: blocks are made dense one band
    of cells at a time, as :func:`loomx.to_loom` writes them), ``layers`` become layers,
    ``obs``/``var`` columns column/row attributes (categories as their values), the
    ``obs_names``/``var_names`` ``CellID``/``Gene`` (or the index's own name), ``obsm``/
    ``varm`` N-D attributes (DataFrames of numbers compound ones, their columns the field
    names), ``obsp``/``varp`` graphs and ``uns`` entries that Loom can
    store global attributes (others are left out with a :class:`LoomFormatWarning`).

    Examples
    --------
    >>> ds = loomx.from_anndata(sc.datasets.pbmc68k_reduced())  # doctest: +SKIP
    >>> loomx.to_loom(ds, "pbmc68k.loom")  # doctest: +SKIP
    """
    row, col = dims
    data_vars = {"matrix": ((row, col), _x_matrix(adata.X))}
    for name, values in adata.layers.items():
        data_vars[str(name)] = ((row, col), _x_matrix(values))
    spaces: dict[str, dict[str, np.ndarray]] = {_spec.COL_ATTRS: {}, _spec.ROW_ATTRS: {}}
    compound: dict[tuple[str, str], tuple[Any, np.dtype]] = {}
    sides = ((_spec.COL_ATTRS, adata.obs, adata.obsm), (_spec.ROW_ATTRS, adata.var, adata.varm))
    for space, frame, multi in sides:
        default = "CellID" if space == _spec.COL_ATTRS else "Gene"
        index_name = frame.index.name if frame.index.name not in (None, "index") else default
        attrs = spaces[space]
        if index_name not in frame.columns:
            attrs[str(index_name)] = np.asarray(frame.index.astype(str), dtype=object)
        for name in frame.columns:
            attrs[str(name)] = _column_values(frame[name])
        for name, values in multi.items():
            attrs[str(name)], fields, dtype = _multi_values(values)
            if dtype is not None:
                compound[(space, str(name))] = (fields, dtype)
    names = conv.assign_names(
        data_vars, spaces[_spec.ROW_ATTRS], spaces[_spec.COL_ATTRS], (row, col)
    )  # a name on both axes (scanpy's n_counts) is qualified, as open_loom names it
    coords: dict[str, Any] = {}
    for space, dim in ((_spec.COL_ATTRS, col), (_spec.ROW_ATTRS, row)):
        for raw, array in spaces[space].items():
            name = names[(space, raw)]
            extra = conv.extra_dim_names(name, array.ndim)
            coords[name] = xr.Variable((dim, *extra), array)
            if (space, raw) in compound:
                fields, dtype = compound[(space, raw)]
                coords[name].encoding["dtype"] = dtype
                coords[extra[0]] = xr.Variable(extra[0], np.array(fields, dtype=object))
    ds = xr.Dataset(data_vars, coords=coords)
    ds.encoding["loom_dims"] = (row, col)
    for mapping, dim in ((adata.obsp, col), (adata.varp, row)):
        for name, matrix in mapping.items():
            ds = ds.loom.graphs(dim).assign(str(name), scipy.sparse.coo_matrix(matrix))
    skipped = []
    for key, value in adata.uns.items():
        if isinstance(value, str | int | float | np.number | np.ndarray | list | tuple):
            array = np.asarray(value)
            if array.dtype.kind in "biufUS" or isinstance(value, str):
                ds.attrs[str(key)] = value if isinstance(value, str) else array
                continue
        skipped.append(str(key))
    if skipped:
        warnings.warn(
            f"uns entries {skipped} cannot be Loom global attributes (nested or objects); left out",
            LoomFormatWarning,
            stacklevel=2,
        )
    ds.encoding["loom_dims"] = (row, col)
    return ds

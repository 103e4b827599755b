"""loompy's operations (scan, map, view, permute, aggregate, sparse) as dask graph operations.

Each function takes a Loom Dataset (from :func:`loomx.open_loom`) and returns lazy
results or an iterator; ``ds.loom`` exposes them as methods of the same names
(loompy's ``map`` is :func:`map_vectors`, ``ds.loom.map_vectors``).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse
import xarray as xr

from loomx._format import names as conv
from loomx._read import chunking as _chunking
from loomx.errors import LoomNameError

__all__ = [
    "AGGREGATIONS",
    "aggregate",
    "enrichment",
    "layer_names",
    "map_vectors",
    "permute",
    "scan",
    "to_scipy",
]

AGGREGATIONS = (
    "sum",
    "prod",
    "mean",
    "max",
    "min",
    "std",
    "var",
    "median",
    "count_nonzero",
    "first",
    "last",
)


def _dask_layer(var: xr.DataArray) -> xr.DataArray:
    """``var`` as dask chunks aligned to its HDF5 chunks (lazily indexed layers included)."""
    if isinstance(var.data, da.Array):
        return var
    preferred = var.encoding.get("preferred_chunks")
    return var.chunk(preferred) if preferred else var.chunk()


def _other(ds: xr.Dataset, dim: str) -> str:
    row, col = conv.dataset_dims(ds)
    if dim not in (row, col):
        raise LoomNameError(f"dim {dim!r} is neither the row dim {row!r} nor the col dim {col!r}")
    return row if dim == col else col


def layer_names(ds: xr.Dataset) -> list[str]:
    """Names of the data variables that are layers (dims ``(row, col)``)."""
    return [str(n) for n, v in ds.data_vars.items() if set(v.dims) == set(conv.dataset_dims(ds))]


def _layer(ds: xr.Dataset, name: str) -> xr.DataArray:
    if name not in ds.data_vars:
        raise LoomNameError(f"no layer {name!r}; layers are {layer_names(ds)}")
    return ds[name]


def batch_bounds(ds: xr.Dataset, dim: str, batch_size: int | None) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` windows along ``dim``, aligned to the layers' chunks.

    The default batch is the first layer's dask chunk along ``dim`` (a whole multiple of
    its HDF5 chunks); an explicit ``batch_size`` is rounded up to a multiple of the HDF5
    chunk so that no HDF5 chunk is read twice.
    """
    n = ds.sizes[dim]
    layers = layer_names(ds)
    step = batch_size
    if layers:
        var = ds[layers[0]]
        axis = var.dims.index(dim)
        hdf5 = (var.encoding.get("chunksizes") or (None, None))[axis] or 1
        if step is None:
            step = var.chunks[axis][0] if var.chunks else max(hdf5, 512)
        step = -(-step // hdf5) * hdf5
    step = max(int(step or 512), 1)
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def _coords_in_memory(ds: xr.Dataset) -> xr.Dataset:
    """Load attributes and graph edge lists once, so views of batches do not reread them."""
    loaded = {
        name: var.variable.load()
        for name, var in ds.coords.items()
        if (parsed := conv.parse_graph_var(str(name))) is None or parsed[2] in conv.GRAPH_PARTS
    }
    out = ds.assign_coords(loaded)
    out.encoding = dict(ds.encoding)
    return out


def scan(
    ds: xr.Dataset,
    dim: str = "col",
    batch_size: int | None = None,
    items: Sequence[int] | np.ndarray | None = None,
    layers: Sequence[str] | None = None,
    prefetch: bool = True,
) -> Iterator[tuple[int, np.ndarray, xr.Dataset]]:
    """Iterate over batches along ``dim`` like loompy's ``scan``.

    Yields ``(start, indices, view)``: ``start`` is the batch's first position along
    ``dim``, ``indices`` the positions (in ``ds``) of the items in the view, and ``view``
    an in-memory Dataset of those items with every requested layer, all attributes and the
    induced subgraphs.  Batches are aligned to HDF5 chunks; while the caller works on one
    batch, the next one is read in the background.

    Parameters
    ----------
    ds
        A Loom Dataset.
    dim
        The dim to walk along (``"col"`` for cells).
    batch_size
        Items per batch (rounded up to the HDF5 chunk); default one dask chunk.
    items
        Integer positions or a boolean mask along ``dim``: only these are yielded
        (batches without selected items are skipped).
    layers
        Layers to load (default all).
    prefetch
        Read the next batch while the current one is being used.

    Examples
    --------
    >>> for start, idx, view in ds.loom.scan(dim="col"):  # doctest: +SKIP
    ...     totals[idx] = view["matrix"].sum("row").values
    """
    _other(ds, dim)
    names = list(layers) if layers is not None else layer_names(ds)
    for name in names:
        _layer(ds, name)
    n = ds.sizes[dim]
    selected = np.ones(n, dtype=bool)
    if items is not None:
        items = np.asarray(items)
        if items.dtype == bool:
            if items.shape != (n,):
                raise ValueError(f"boolean items must have length {n}, found {items.shape}")
            selected = items
        else:
            selected = np.zeros(n, dtype=bool)
            selected[items] = True
    source = _coords_in_memory(ds.drop_vars([v for v in ds.data_vars if v not in names]))
    windows = []
    for start, stop in batch_bounds(ds, dim, batch_size):
        picks = start + np.flatnonzero(selected[start:stop])
        if len(picks):
            windows.append((start, picks))

    def load(picks: np.ndarray) -> xr.Dataset:
        whole_run = int(picks[-1]) - int(picks[0]) + 1 == len(picks)
        view = source.isel({dim: slice(int(picks[0]), int(picks[-1]) + 1) if whole_run else picks})
        arrays = [view[name].data for name in names]
        values = dask.compute(*arrays) if arrays else ()
        return view.assign(
            {name: (view[name].dims, v) for name, v in zip(names, values, strict=True)}
        )

    if not prefetch:
        for start, picks in windows:
            yield start, picks, load(picks)
        return
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="loomx-scan") as pool:
        pending = pool.submit(load, windows[0][1]) if windows else None
        for k, (start, picks) in enumerate(windows):
            view = pending.result()  # type: ignore[union-attr]
            if k + 1 < len(windows):
                pending = pool.submit(load, windows[k + 1][1])
            yield start, picks, view


def map_vectors(
    ds: xr.Dataset,
    funcs: Sequence[Callable[[np.ndarray], Any]],
    dim: str = "col",
    layer: str = "matrix",
) -> list[xr.DataArray]:
    """Apply each function to every 1-D vector along ``dim``, lazily and in parallel.

    Like loompy's ``map``: ``map([np.mean, np.std], dim="col")`` calls each function once
    per row with that row's values (a vector along the column dim) and returns one lazy
    DataArray per function, indexed by the other dim.

    Examples
    --------
    >>> mean, sd = map_vectors(ds, [np.mean, np.std], dim="col")  # doctest: +SKIP
    >>> mean, sd = ds.loom.map_vectors([np.mean, np.std], dim="col")  # the same  # doctest: +SKIP
    """
    other = _other(ds, dim)
    var = _dask_layer(_layer(ds, layer))
    data = var.transpose(other, dim).data
    step = data.chunks[0][0] if data.chunks[0] else None
    rows = _chunking.band_width(data.shape[1], data.dtype.itemsize, step, split_step=True)
    data = data.rechunk({1: -1, 0: rows})
    out = []
    for func in funcs:

        def apply(block: np.ndarray, func: Callable = func) -> np.ndarray:
            return np.array([func(vector) for vector in block], dtype=np.float64)

        result = data.map_blocks(apply, drop_axis=1, dtype=np.float64, meta=np.empty(0))
        name = getattr(func, "__name__", "func")
        out.append(xr.DataArray(result, dims=(other,), coords=var[other].coords, name=name))
    return out


def permute(ds: xr.Dataset, order: Sequence[int] | np.ndarray, dim: str = "col") -> xr.Dataset:
    """Reorder ``dim`` lazily: layers, attributes and graphs follow.

    ``order`` must be a permutation of ``range(n)``.  Nothing is read; writing the result
    with :func:`loomx.to_loom` writes the permuted file out-of-core.
    """
    _other(ds, dim)
    order = np.asarray(order)
    n = ds.sizes[dim]
    if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError(f"order must be a permutation of range({n}) along {dim!r}")
    out = ds.isel({dim: order})
    out.encoding = dict(ds.encoding)
    return out


def aggregate(
    ds: xr.Dataset,
    by: str,
    func: str = "mean",
    dim: str = "col",
    layers: Sequence[str] | None = None,
) -> xr.Dataset:
    """One column (or row) per group of ``by``, out-of-core through xarray/flox ``groupby``.

    Parameters
    ----------
    ds
        A Loom Dataset.
    by
        Name of an attribute on ``dim`` holding the group labels (e.g. ``"ClusterID"``).
    func
        One of ``sum``, ``prod``, ``mean``, ``max``, ``min``, ``std``, ``var``,
        ``median``, ``count_nonzero``, ``first``, ``last`` (loompy's ``aggr_by`` names;
        ``std`` and ``var`` with ``ddof=0``, as numpy's).
    dim
        The dim whose items are grouped.
    layers
        Layers to aggregate (default all).

    Returns
    -------
    xarray.Dataset
        The aggregated layers with dim ``by`` in place of ``dim``, e.g. ``(row, ClusterID)``
        for columns grouped by cluster, as loompy returns them (lazy).

    Examples
    --------
    >>> means = ds.loom.aggregate("ClusterID", "mean").compute()  # doctest: +SKIP
    """
    _other(ds, dim)
    if func not in AGGREGATIONS:
        raise ValueError(f"func must be one of {AGGREGATIONS}, found {func!r}")
    if by not in ds.coords or ds[by].dims != (dim,):
        raise LoomNameError(f"no 1-D attribute {by!r} on dim {dim!r}")
    names = list(layers) if layers is not None else layer_names(ds)
    data = xr.Dataset({name: _layer(ds, name) for name in names}, coords={by: ds[by]})
    if func == "count_nonzero":
        data = (data != 0).astype(np.int64)
        func = "sum"
    if func == "median":  # an order statistic: each block holds whole groups (bands of rows)
        other = _other(ds, dim)
        length = ds.sizes[dim]
        itemsize = max((v.dtype.itemsize for v in data.data_vars.values()), default=8)
        band = _chunking.band_width(length, min(itemsize, 8))
        data = data.assign({k: v.chunk({dim: -1, other: band}) for k, v in data.data_vars.items()})
    out = getattr(data.groupby(by), func)()
    return out.transpose(_other(ds, dim), by, ...)


def enrichment(ds: xr.Dataset, by: str, dim: str = "col", layer: str = "matrix") -> xr.DataArray:
    """The enrichment score of every row in every group of ``by``, as cytograph's aggregate.

    cytograph's ``Aggregator.aggregate`` (``cytograph/aggregator.py``) writes the layer
    ``enrichment`` of the aggregated file from ``MarkerSelection.fit``
    (``FeatureSelectionByEnrichment._fit``), which computes, per gene and cluster::

        f_nnz = nnz / sizes
        means_other = ((means_overall * n_cells)[None].T - (means * sizes)) / (n_cells - sizes)
        f_nnz_other = ((f_nnz_overall * n_cells)[None].T - (f_nnz * sizes)) / (n_cells - sizes)
        enrichment = (f_nnz + 0.1) / (f_nnz_other + 0.1) * (means + 0.01) / (means_other + 0.01)

    that is, the fraction of non-zero values and the mean inside the group against the same
    over every other item of ``dim`` (``n_cells`` is the whole axis), each with its
    pseudocount (0.1 and 0.01).  Computed here in float64 from the per-group sums and
    non-zero counts (one pass); a group with nothing outside it (a single group) gets NaN.

    Parameters
    ----------
    ds
        A Loom Dataset.
    by
        Name of an attribute on ``dim`` holding the group labels (e.g. ``"ClusterID"``).
    dim
        The dim whose items are grouped.
    layer
        The layer scored (default the main matrix, as cytograph).

    Returns
    -------
    xarray.DataArray
        Lazy, dims ``(other dim, by)``, groups in the order :func:`aggregate` gives them.

    Examples
    --------
    >>> scores = enrichment(ds, "ClusterID").compute()  # doctest: +SKIP
    """
    sums = aggregate(ds, by, "sum", dim, [layer])[layer].astype(np.float64)
    nnz = aggregate(ds, by, "count_nonzero", dim, [layer])[layer].astype(np.float64)
    labels = ds[by].reset_coords(drop=True)
    sizes = labels.groupby(labels).count().astype(np.float64)
    n = sizes.sum()
    rest = (n - sizes).where(sizes < n)  # NaN, not a 0/0 warning, where nothing is outside
    f_in, mean_in = nnz / sizes, sums / sizes
    f_out, mean_out = (nnz.sum(by) - nnz) / rest, (sums.sum(by) - sums) / rest
    out = (f_in + 0.1) / (f_out + 0.1) * (mean_in + 0.01) / (mean_out + 0.01)
    return out.transpose(*sums.dims).rename("enrichment")


def to_scipy(ds: xr.Dataset, layer: str = "matrix", format: str = "csr") -> scipy.sparse.spmatrix:
    """Load a layer as a scipy sparse matrix (rows x cols), block by block in parallel.

    Each dask block is read and turned into COO triplets where it is computed (a worker
    process, on a cluster); only the non-zeros travel and are assembled here.

    Examples
    --------
    >>> X = ds.loom.to_scipy("matrix", "csr")  # doctest: +SKIP
    """
    var = _dask_layer(_layer(ds, layer))
    data: da.Array = var.transpose(*conv.dataset_dims(ds)).data
    if data.dtype == np.float16:  # scipy.sparse has no float16
        data = data.astype(np.float32)
    row_starts = np.cumsum((0, *data.chunks[0][:-1]))
    col_starts = np.cumsum((0, *data.chunks[1][:-1]))
    index_dtype = np.int32 if max(data.shape, default=0) < 2**31 else np.int64

    def triplets(block: np.ndarray, r0: int, c0: int) -> tuple[np.ndarray, ...]:
        rows, cols = np.nonzero(block)
        return (rows + r0).astype(index_dtype), (cols + c0).astype(index_dtype), block[rows, cols]

    blocks = data.to_delayed()
    parts = [
        dask.delayed(triplets)(blocks[i, j], int(row_starts[i]), int(col_starts[j]))
        for i in range(blocks.shape[0])
        for j in range(blocks.shape[1])
    ]
    computed = dask.compute(*parts)
    if computed:
        rows, cols, values = (np.concatenate(p) for p in zip(*computed, strict=True))
    else:
        rows = cols = np.empty(0, dtype=index_dtype)
        values = np.empty(0, dtype=data.dtype)
    matrix = scipy.sparse.coo_matrix((values, (rows, cols)), shape=data.shape)
    return matrix.asformat(format)

"""What every analysis step shares: the layer a step reads, the valid cells and genes, the
layer as full-height bands of cells, per-band reductions, and results put back under
loomx's naming rule.

A step reads a layer as full-height column bands (every gene of a few hundred cells) and
runs one numpy function per band: a derived layer (normalized, log1p, scaled) is a chain
of such functions that dask fuses with the read of the band, so a statistic of a derived
layer is one pass over the stored matrix.  Statistics take each band as its non-zeros
(:func:`loomx.analysis.band_kernels.to_csr`, right after the read): a step that maps zero
to zero registers a variant that works on the non-zeros alone
(:func:`register_sparse_step`), so that the chain costs what the non-zeros cost.

A global statistic that a derived layer needs (the median library size, the gene means of
``scale``) is computed from a clone of the reads (:func:`dask.graph_manipulation.clone`):
the band tasks of the layer itself then wait for it without holding bands in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.graph_manipulation import clone

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._read import chunking as _chunking
from loomx._read.layer import reread
from loomx._read.lazy_arrays import unchanged_source
from loomx.analysis import band_kernels as _kernels
from loomx.errors import LoomFormatError, LoomNameError
from loomx.ops.qc import assign_qc

__all__ = [
    "CURRENT_LAYER",
    "add_layer",
    "assign_attrs",
    "attr_name",
    "band_concat",
    "band_map",
    "band_sums",
    "bands",
    "cell_mask",
    "gene_mask",
    "register_sparse_step",
    "source_layer",
    "tree_sum",
]

CURRENT_LAYER = "loomx_current_layer"
"""Key of ``ds.attrs`` naming the layer the last step produced (the next step's default)."""

VALID = "Valid"
"""The conventions' 0/1 attribute of valid cells (columns) and genes (rows)."""


def attr_name(ds: xr.Dataset, space: str, raw: str) -> str | None:
    """The variable name of attribute ``/space/raw``, or ``None`` when ``ds`` has none."""
    paths = conv.variable_paths(ds, conv.dataset_dims(ds))
    return {h5path: name for name, h5path in paths.items()}.get(f"/{space}/{raw}")


def source_layer(ds: xr.Dataset, layer: str | None) -> str:
    """The layer a step reads: ``layer``, else the one the last step produced, else
    ``matrix``; refused unless it is a numeric layer of ``ds``."""
    name = layer or ds.attrs.get(CURRENT_LAYER) or _spec.MATRIX
    row_dim, col_dim = conv.dataset_dims(ds)
    if name not in ds.data_vars or set(ds[name].dims) != {row_dim, col_dim}:
        found = [str(n) for n, v in ds.data_vars.items() if set(v.dims) == {row_dim, col_dim}]
        raise LoomNameError(f"no layer {name!r}; layers are {found}")
    if ds[name].dtype.kind not in "biuf":
        raise LoomFormatError(f"layer {name!r} has dtype {ds[name].dtype}; expected numbers")
    return name


def _mask(ds: xr.Dataset, space: str, dim: str) -> np.ndarray:
    name = attr_name(ds, space, VALID)
    if name is None:
        return np.ones(ds.sizes[dim], dtype=bool)
    return np.asarray(ds[name].values).astype(bool)


def cell_mask(ds: xr.Dataset) -> np.ndarray:
    """Valid cells: the column attribute ``Valid`` (all cells without one)."""
    return _mask(ds, _spec.COL_ATTRS, conv.dataset_dims(ds)[1])


def gene_mask(ds: xr.Dataset) -> np.ndarray:
    """Valid genes: the row attribute ``Valid`` (all genes without one)."""
    return _mask(ds, _spec.ROW_ATTRS, conv.dataset_dims(ds)[0])


def bands(ds: xr.Dataset, name: str) -> da.Array:
    """Layer ``name`` as a (genes, cells) dask array of full-height column bands."""
    row_dim, col_dim = conv.dataset_dims(ds)
    var = ds[name].transpose(row_dim, col_dim)
    data = var.data
    n = var.shape[0]
    if isinstance(data, da.Array) and len(data.chunks[0]) == 1:
        return data
    hdf5 = (var.encoding.get("chunksizes") or (None, None))[1]
    current = data.chunks[1][0] if isinstance(data, da.Array) and data.chunks[1] else None
    width = _chunking.band_width(n, var.dtype.itemsize, hdf5 or current)
    if not isinstance(data, da.Array):
        return da.from_array(np.asarray(data), chunks=(max(n, 1), width))
    if ds[name].dims == var.dims and unchanged_source(ds[name].variable) is not None:
        return reread(data, (n, width))  # bands read from the file, not joined blocks
    out = data.rechunk({0: -1, 1: width})
    _RECIPES[out.name] = (data, ((_RECHUNK, ({0: -1, 1: width},), out.dtype),))
    return out


def cell_chunks(data: da.Array, values: np.ndarray) -> da.Array:
    """A per-cell vector as a (1, cells) dask array chunked like the bands of ``data``."""
    return da.from_array(np.asarray(values)[None, :], chunks=((1,), data.chunks[1]))


def _add(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: a[key] + b[key] for key in a}


_RECIPES: dict[str, tuple[da.Array, tuple[tuple[Any, tuple[Any, ...], np.dtype], ...]]] = {}
"""Dask name of a derived layer -> the stored layer it comes from and the band functions
applied to it (see :func:`derive`, :func:`fresh_reads`)."""


_RECHUNK = object()
"""A step of a recipe that rechunks (into full-height bands) instead of mapping bands."""

_SPARSE_STEPS: dict[Callable[..., Any], Callable[..., Any]] = {}
"""Band function of a derived layer -> its variant on the band's non-zeros."""


def register_sparse_step(dense: Callable[..., Any], variant: Callable[..., Any]) -> None:
    """Declare that ``dense(band, *args)`` maps zero to zero and that
    ``variant(csr_band, *args)`` computes the same values on a CSR band's non-zeros
    (returning a CSR band of the same shape)."""
    _SPARSE_STEPS[dense] = variant


def derive(data: da.Array, func: Callable[..., np.ndarray], *args: Any, dtype: Any) -> da.Array:
    """``func(band, *args)`` on every band of ``data``: a derived layer, lazy, whose
    recipe is kept so that :func:`fresh_reads` can rebuild it on reads of its own."""
    dtype = np.dtype(dtype)
    out = data.map_blocks(func, *args, dtype=dtype, meta=np.empty((0, 0), dtype))
    root, chain = _RECIPES.get(data.name, (data, ()))
    _RECIPES[out.name] = (root, (*chain, (func, args, dtype)))
    while len(_RECIPES) > 256:  # the oldest recipes go: a forgotten one only re-reads
        del _RECIPES[next(iter(_RECIPES))]
    return out


def _cloned(root: da.Array) -> da.Array:
    """``root`` under new task keys (reads of its own), or ``root`` itself when its graph
    holds a rechunk: dask cannot compute a clone of one (dask 2026.8: "Cannot fuse tasks
    with multiple outputs"); the reads are then shared, which costs memory, not results."""
    if any(str(name).startswith("rechunk-") for name in root.dask.layers):
        return root
    return clone(root, assume_layers=False)


def fresh_reads(data: da.Array) -> da.Array:
    """``data`` computed from reads of its own (new task keys for the stored layer's
    bands, the derivation applied again; statistics it waits for are shared)."""
    root, chain = _RECIPES.get(data.name, (data, ()))
    out = _cloned(root)
    for func, args, dtype in chain:
        if func is _RECHUNK:
            out = out.rechunk(*args)
        else:
            out = out.map_blocks(func, *args, dtype=dtype, meta=np.empty((0, 0), dtype))
    return out


def _sparse_chain(data: da.Array, fresh: bool) -> tuple[da.Array, tuple[Any, ...]] | None:
    """The stored bands ``data`` derives from and the sparse variants of its steps, or None
    when a step has no variant."""
    root, chain = _RECIPES.get(data.name, (data, ()))
    source = _cloned(root) if fresh else root
    steps: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
    for func, args, _ in chain:
        if func is _RECHUNK and not steps:
            source = source.rechunk(*args)
        elif func in _SPARSE_STEPS:
            steps.append((_SPARSE_STEPS[func], args))
        else:
            return None
    return source, tuple(steps)


def _on_nonzeros(block: Any, steps: Any, func: Callable[..., Any], args: Any, kw: Any) -> Any:
    band = _kernels.to_csr(block)
    for step, step_args in steps:
        band = step(band, *step_args)
    return func(band, *args, **kw)


def band_map(
    data: da.Array,
    func: Callable[..., Any],
    *args: Any,
    cells: Mapping[str, Any] | None = None,
    fresh: bool = True,
) -> list[Any]:
    """Delayed ``func(band, *args, **per-cell slices)``, one per band of ``data``, each
    band given as a :class:`scipy.sparse.csr_matrix` (genes x cells) of its non-zeros.

    ``cells`` are per-cell vectors, each passed to ``func`` sliced to the band.  With
    ``fresh`` (the default) the bands are read by their own tasks (:func:`fresh_reads`),
    so that a layer which waits for the result does not keep bands in memory meanwhile.
    The steps of a derived layer run on the non-zeros where each has a sparse variant,
    else on the dense band before it is reduced to its non-zeros.
    """
    sparse_chain = _sparse_chain(data, fresh)
    if sparse_chain is None:
        source, steps = (fresh_reads(data) if fresh else data), ()
    else:
        source, steps = sparse_chain
    blocks = source.to_delayed()[0]
    bounds = np.cumsum((0, *data.chunks[1]))
    call = dask.delayed(_on_nonzeros, pure=True)
    return [
        call(
            block,
            steps,
            func,
            args,
            {k: v[bounds[i] : bounds[i + 1]] for k, v in (cells or {}).items()},
        )
        for i, block in enumerate(blocks)
    ]


def tree_sum(parts: list[Any]) -> Any:
    """A delayed dict: delayed dicts added up key by key (a pairwise tree)."""
    add = dask.delayed(_add, pure=True)
    while len(parts) > 1:
        pairs = [add(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        parts = pairs + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0]


def band_sums(
    data: da.Array, func: Callable[..., dict[str, np.ndarray]], *args: Any, **kw: Any
) -> Any:
    """A delayed dict: the dicts of :func:`band_map` added up key by key (a pairwise tree)."""
    return tree_sum(band_map(data, func, *args, **kw))


def band_concat(data: da.Array, func: Callable[..., np.ndarray], *args: Any, **kw: Any) -> Any:
    """A delayed array: the per-cell results of :func:`band_map` joined along the cells."""
    parts = band_map(data, func, *args, **kw)
    return dask.delayed(np.concatenate, pure=True)(parts, axis=-1)


def add_layer(ds: xr.Dataset, name: str, data: da.Array, attrs: dict[str, Any]) -> xr.Dataset:
    """``ds`` with lazy layer ``name`` (genes, cells) added and recorded as the current one."""
    row_dim, col_dim = conv.dataset_dims(ds)
    if name in ds.variables and name not in ds.data_vars:
        raise LoomNameError(f"{name!r} is an attribute of the Dataset; choose another layer name")
    out = ds.assign({name: xr.Variable((row_dim, col_dim), data, attrs=dict(attrs))})
    out.attrs[CURRENT_LAYER] = name
    out.encoding = dict(ds.encoding)
    return out


def assign_attrs(
    ds: xr.Dataset,
    rows: Mapping[str, Any] | None = None,
    cols: Mapping[str, Any] | None = None,
    globals_: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """``ds`` with row and column attributes (1-D, or 2-D with extra dim ``<name>_dim_1``)
    and global attributes added or replaced, named by loomx's naming rule."""
    row_dim, col_dim = conv.dataset_dims(ds)

    def dataset(values: Mapping[str, Any] | None, dim: str) -> xr.Dataset:
        out = {}
        for key, value in (values or {}).items():
            dims = (dim,) if np.ndim(value) == 1 else (dim, *conv.extra_dim_names(key, 2))
            out[key] = xr.Variable(dims, value)
        return xr.Dataset(out)

    out = assign_qc(ds, dataset(cols, col_dim), dataset(rows, row_dim))
    out.attrs.update(ds.attrs)
    out.attrs.update(globals_ or {})
    return out

"""A layer's dask array: NaN-skipping mean, var and std as one compiled pass per block, and
picked rows or columns read straight from the file.

xarray skips NaNs by default on float data: ``m.mean("col")`` becomes ``np.nanmean`` of
the dask array, and dask's ``nanmean`` / ``nanvar`` compute per block ``np.nansum`` (a full
copy of the block with NaNs replaced), a NaN count, and for the variance ``A - mean`` in
float64 and its square: four to six passes over each block and temporaries twice its size,
several times the CPU of reading it (measured in ``benchmarks/README.md``).

A layer opened by loomx is a :class:`LayerArray`: dask's own array, whose
``np.nanmean``, ``np.nanvar``, ``np.nanstd`` (what xarray's defaults call) and NaN-skipping
sums (xarray's ``isnan``, ``where``, ``sum`` sequence, recognised step by step) run dask's own
reduction tree with a compiled per-block step: count, sum and sum of squared deviations from
the block's mean in two passes over the block, no temporaries, float64 accumulators,
without the GIL.  The blocks' moments are combined by dask's ``mean_combine`` /
``moment_combine`` (Chan's parallel formula), so results equal dask's to rounding.

Rows or columns picked with an index array (``m.isel(col=cols)``) become tasks that read
only the HDF5 chunks holding their picks and place each picked column straight into the
result (:meth:`loomx._hdf5.chunks.ChunkIndex.read_picks`); dask's ``take`` reads every block a
pick falls in, whole, and shuffles.  :func:`reread` gives a layer other blocks read
straight from the file, where dask's ``rechunk`` would split and join the old ones.  Every
other operation, and any array derived from a layer, is plain dask.
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import Any

import dask.array as da
import numpy as np
from dask.array import reductions as dask_reductions

from loomx._hdf5 import first_calls as _first_calls
from loomx._hdf5 import kernels as _kernels

__all__ = [
    "LayerArray",
    "as_layer_array",
    "reread",
]

_FLAGS = {"reassoc", "contract"}
"""Sums may be reordered (vectorized); NaN and inf keep their IEEE meaning."""

if _kernels.available():

    @_kernels.compiled(fastmath=_FLAGS)
    def _moments_along_rows(
        x: np.ndarray, with_m2: bool
    ) -> tuple[Any, Any, Any]:  # pragma: no cover
        """Per row of a 2-D block: count, sum and sum of squared deviations of non-NaNs."""
        rows, cols = x.shape
        n = np.zeros(rows, np.int64)
        total = np.zeros(rows, np.float64)
        m2 = np.zeros(rows, np.float64)
        for i in range(rows):
            row = x[i]
            count = 0
            acc = 0.0
            for j in range(cols):
                v = np.float64(row[j])
                seen = v == v
                count += seen
                acc += v if seen else 0.0
            n[i] = count
            total[i] = acc
            if with_m2 and count:
                mean = acc / count
                dev = 0.0
                for j in range(cols):
                    v = np.float64(row[j])
                    d = v - mean
                    dev += d * d if v == v else 0.0
                m2[i] = dev
        return n, total, m2

    @_kernels.compiled(fastmath=_FLAGS)
    def _moments_along_cols(
        x: np.ndarray, with_m2: bool
    ) -> tuple[Any, Any, Any]:  # pragma: no cover
        """Per column of a 2-D block: count, sum and sum of squared deviations of non-NaNs."""
        rows, cols = x.shape
        n = np.zeros(cols, np.int64)
        total = np.zeros(cols, np.float64)
        m2 = np.zeros(cols, np.float64)
        for i in range(rows):
            row = x[i]
            for j in range(cols):
                v = np.float64(row[j])
                seen = v == v
                n[j] += seen
                total[j] += v if seen else 0.0
        if with_m2:
            mean = total / np.maximum(n, 1)
            for i in range(rows):
                row = x[i]
                for j in range(cols):
                    v = np.float64(row[j])
                    d = v - mean[j]
                    m2[j] += d * d if v == v else 0.0
        return n, total, m2


class _Unsupported(Exception):
    """The fused path does not cover this call; dask's own implementation runs."""


def _block_moments(
    block: np.ndarray, axis: tuple[int, ...], with_m2: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, sum and M2 of a 2-D block along ``axis`` (one axis), with kept dims."""
    values = np.asarray(block)
    small = values.size <= _NUMPY_VALUES
    if small and _first_calls.runs_in_python_first(values.size * _VALUE_SECONDS * (1 + with_m2)):
        return _moments_in_numpy(values, axis[0], with_m2)
    if axis == (1,):
        n, total, m2 = _moments_along_rows(values, with_m2)
        shape = (values.shape[0], 1)
    else:
        n, total, m2 = _moments_along_cols(values, with_m2)
        shape = (1, values.shape[1])
    return n.reshape(shape), total.reshape(shape), m2.reshape(shape)


_VALUE_SECONDS = 4e-9
"""NumPy's time per value in :func:`_moments_in_numpy` (one pass; 2-core machine)."""
_NUMPY_VALUES = 1 << 22
"""The largest block :func:`_moments_in_numpy` takes (its float64 temporaries: 32 MB each)."""


@np.errstate(invalid="ignore")  # inf - inf, as the compiled loop computes it
def _moments_in_numpy(
    values: np.ndarray, axis: int, with_m2: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_block_moments` in NumPy, for a process's first small reductions (before a
    compiled function is loaded: :func:`loomx._hdf5.first_calls.runs_in_python_first`); the
    same values, summed in another order.  ``values``: float32 or float64 (:func:`_check`)."""
    seen = ~np.isnan(values)
    clean = np.where(seen, values, 0).astype(np.float64, copy=False)
    n = seen.sum(axis, dtype=np.int64, keepdims=True)
    total = clean.sum(axis, dtype=np.float64, keepdims=True)
    m2 = np.zeros(total.shape, np.float64)
    if with_m2:
        deviation = np.where(seen, clean - total / np.maximum(n, 1), 0.0)
        m2 = np.square(deviation).sum(axis, keepdims=True)
    return n, total, m2


def _mean_chunk(
    x: Any, dtype: Any = "f8", computing_meta: bool = False, axis: Any = None, **kwargs: Any
) -> Any:
    """dask's ``mean_chunk`` for NaN-skipping means: ``{"n", "total"}`` of one block."""
    if computing_meta:
        return x
    n, total, _ = _block_moments(x, tuple(axis), with_m2=False)
    return {"n": n.astype(dtype), "total": total.astype(dtype)}


def _moment_chunk(
    x: Any,
    order: int = 2,
    dtype: Any = "f8",
    computing_meta: bool = False,
    axis: Any = None,
    implicit_complex_dtype: bool = False,
    **kwargs: Any,
) -> Any:
    """dask's ``moment_chunk`` (order 2) for NaN-skipping variances: ``{"total", "n",
    "M"}`` of one block, ``M`` holding the sum of squared deviations from its mean."""
    if computing_meta:
        return x
    n, total, m2 = _block_moments(x, tuple(axis), with_m2=True)
    return {"total": total.astype(dtype), "n": n, "M": m2.astype(dtype)[..., np.newaxis]}


_COMPILED_DTYPES = (np.dtype("float32"), np.dtype("float64"))
"""The layer dtypes the fused reductions take (numba has no float16)."""


def _check(a: da.Array, axis: Any, kwargs: dict[str, Any]) -> tuple[int, ...]:
    if not _kernels.available() or a.ndim != 2 or a.dtype not in _COMPILED_DTYPES:
        raise _Unsupported  # float16: dask's own reductions
    if kwargs.get("out") is not None or kwargs.get("where", True) is not True:
        raise _Unsupported
    axes = (axis,) if isinstance(axis, int | np.integer) else axis
    if axes is None or len(axes) != 1:
        raise _Unsupported
    return (int(axes[0]) % 2,)


def _nanmean(
    a: da.Array, axis: Any = None, dtype: Any = None, keepdims: bool = False, **kwargs: Any
) -> da.Array:
    axes = _check(a, axis, kwargs)
    dt = dtype if dtype is not None else np.mean(np.ones(1, a.dtype)).dtype
    return da.reduction(
        a,
        _mean_chunk,
        dask_reductions.mean_agg,
        axis=axes,
        keepdims=keepdims,
        dtype=dt,
        split_every=kwargs.get("split_every"),
        concatenate=False,
        combine=partial(
            dask_reductions.mean_combine,
            sum=dask_reductions.chunk.nansum,
            numel=dask_reductions.nannumel,
        ),
    )


def _nanvar(
    a: da.Array,
    axis: Any = None,
    dtype: Any = None,
    keepdims: bool = False,
    ddof: int = 0,
    **kwargs: Any,
) -> da.Array:
    axes = _check(a, axis, kwargs)
    dt = dtype if dtype is not None else np.var(np.ones(1, a.dtype)).dtype
    return da.reduction(
        a,
        _moment_chunk,
        partial(dask_reductions.moment_agg, sum=np.sum, ddof=ddof),
        axis=axes,
        keepdims=keepdims,
        dtype=dt,
        split_every=kwargs.get("split_every"),
        combine=partial(dask_reductions.moment_combine, sum=np.nansum),
        concatenate=False,
    )


def _nanstd(
    a: da.Array,
    axis: Any = None,
    dtype: Any = None,
    keepdims: bool = False,
    ddof: int = 0,
    **kwargs: Any,
) -> da.Array:
    result = dask_reductions.safe_sqrt(
        _nanvar(a, axis=axis, dtype=dtype, keepdims=keepdims, ddof=ddof, **kwargs)
    )
    if dtype and dtype != result.dtype:
        result = result.astype(dtype)
    return result


def _nansum_chunk(
    x: Any, axis: Any = None, keepdims: bool = True, computing_meta: bool = False, **kwargs: Any
) -> Any:
    """Per-block sums of the non-NaN values along one axis, in float64, dims kept."""
    if computing_meta:
        return x
    return _block_moments(x, tuple(axis), with_m2=False)[1]


def _nansum(
    a: da.Array, axis: Any = None, dtype: Any = None, keepdims: bool = False, **kwargs: Any
) -> da.Array:
    axes = _check(a, axis, kwargs)
    dt = dtype if dtype is not None else np.zeros(1, a.dtype).sum().dtype
    return da.reduction(
        a,
        _nansum_chunk,
        partial(dask_reductions.chunk.sum, dtype=dt),
        axis=axes,
        keepdims=keepdims,
        dtype=dt,
        split_every=kwargs.get("split_every"),
    )


_FUSED = {np.nanmean: _nanmean, np.nanvar: _nanvar, np.nanstd: _nanstd, np.nansum: _nansum}


class LayerArray(da.Array):
    """A layer's dask array: plain dask, except for two things.

    - NaN-skipping ``sum``, ``mean``, ``var`` and ``std`` along one axis of a float layer
      (xarray's defaults) run one compiled pass per block.
    - Rows or columns picked by an index array (``m.isel(col=cols)``) are read straight
      from the file: each task reads only the HDF5 chunks that hold its picks
      (:meth:`loomx._hdf5.chunks.ChunkIndex.read_picks`), with no block-sized intermediate.
      dask's own ``take`` would read every block the picks fall in, whole, and shuffle.

    Anything else computed from it (``m + 1``, ``m[:, 5:9]``) is an ordinary
    :class:`dask.array.Array`; pickling gives one too.

    Examples
    --------
    >>> import loomx, dask  # doctest: +SKIP
    >>> m = loomx.open_loom("pbmc.loom")["matrix"]  # doctest: +SKIP
    >>> mean, std = dask.compute(m.mean("col"), m.std("col"))  # doctest: +SKIP
    """

    __slots__ = ()

    def __getitem__(self, index: Any) -> Any:
        source = getattr(self, "_source", None)
        picked = None if source is None else _one_picked_axis(self.shape, index)
        if picked is None:
            return super().__getitem__(index)
        return _read_picked_array(self, source, *picked)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        fused = _FUSED.get(func)
        if fused is not None and args and args[0] is self:
            try:
                return fused(self, *args[1:], **kwargs)
            except _Unsupported:
                pass
        out = super().__array_function__(func, _as_dask(types), args, kwargs)
        if func is np.zeros_like and args and args[0] is self:
            return _tagged(_ZerosLike, out, self)
        return out

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = super().__array_ufunc__(ufunc, method, *inputs, **kwargs)
        if ufunc is np.isnan and method == "__call__" and inputs == (self,) and not kwargs:
            return _tagged(_IsNan, out, self)
        return out


class _Derived(LayerArray):
    """A step of xarray's NaN-skipping sum of a layer (``nanops.nansum``: ``isnan(x)``,
    ``where(mask, zeros_like(x), x)``, ``sum``), recognised on the way.  Each step holds
    dask's own array for its operation; only the final ``np.sum`` of the NaN-filled layer
    becomes :func:`_nansum` of the layer, one compiled pass per block instead of a NaN
    mask and a filled copy of every block.  Any other use is the plain dask result."""

    __slots__ = ()

    def __getitem__(self, index: Any) -> Any:
        return da.Array.__getitem__(self, index)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        return da.Array.__array_ufunc__(self, ufunc, method, *inputs, **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        out = da.Array.__array_function__(self, func, _as_dask(types), args, kwargs)
        layer = self._of
        if (
            func is np.where
            and isinstance(self, _IsNan)
            and len(args) == 3
            and args[0] is self
            and isinstance(args[1], _ZerosLike)
            and args[1]._of is layer
            and args[2] is layer
            and not kwargs
        ):
            return _tagged(_NanFilled, out, layer)
        if func is np.sum and isinstance(self, _NanFilled) and args and args[0] is self:
            try:
                return _nansum(layer, *args[1:], **kwargs)
            except (_Unsupported, TypeError):
                pass
        return out


class _IsNan(_Derived):
    __slots__ = ()


class _ZerosLike(_Derived):
    __slots__ = ()


class _NanFilled(_Derived):
    __slots__ = ()


def _as_dask(types: Any) -> tuple[type, ...]:
    """NEP-18 ``types`` with loomx's array classes as dask's own (dask declines a call
    whose types include a class that is not one of its own class's superclasses)."""
    return tuple(da.Array if issubclass(t, LayerArray) else t for t in types)


def _tagged(kind: type[_Derived], arr: Any, layer: LayerArray) -> Any:
    """``arr`` (dask's result of a step on ``layer``) as a ``kind`` remembering ``layer``."""
    if type(arr) is not da.Array:
        return arr
    out = kind(arr.dask, arr.name, arr.chunks, meta=arr._meta)
    out._of = layer
    return out


def as_layer_array(arr: da.Array, source: Any = None) -> LayerArray:
    """``arr`` as a :class:`LayerArray` (same graph, name and chunks).

    ``source`` is the backend array ``arr`` reads (indexed with xarray's ``OuterIndexer``);
    without it picked rows and columns go through dask's ``take``.
    """
    out = LayerArray(arr.dask, arr.name, arr.chunks, meta=arr._meta)
    out._source = source
    return out


def _one_picked_axis(shape: tuple[int, ...], index: Any) -> tuple[int, np.ndarray, slice] | None:
    """``(axis, positions, other)`` when ``index`` picks positions along one axis of a 2-D
    array with an integer array and takes a step-1 slice of the other; else None."""
    if len(shape) != 2 or not isinstance(index, tuple) or len(index) != 2:
        return None
    arrays = [i for i, k in enumerate(index) if isinstance(k, np.ndarray | list)]
    if len(arrays) != 1:
        return None
    axis = arrays[0]
    positions = np.asarray(index[axis])
    other = index[1 - axis]
    if positions.ndim != 1 or positions.dtype.kind not in "iu" or not isinstance(other, slice):
        return None
    if positions.size and (positions.min() < 0 or positions.max() >= shape[axis]):
        return None
    start, stop, step = other.indices(shape[1 - axis])
    if step != 1:
        return None
    return axis, positions.astype(np.int64), slice(start, max(start, stop))


def _read_picks(source: Any, key: tuple[Any, Any]) -> np.ndarray:
    """One task of :func:`_read_picked_array`: the backend array at an outer key."""
    from xarray.core.indexing import OuterIndexer

    return np.asarray(source[OuterIndexer(key)])


def _read_picked_array(
    arr: LayerArray, source: Any, axis: int, positions: np.ndarray, other: slice
) -> da.Array:
    """``arr[index]`` for :func:`_one_picked_axis`'s selection, as tasks that each read
    their rows (columns) of the picks from ``source``."""
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    edges = np.cumsum((0, *arr.chunks[1 - axis]))
    cuts = np.unique(np.clip(edges, other.start, other.stop))
    spans = [slice(int(a), int(b)) for a, b in itertools.pairwise(cuts.tolist())]
    if not spans:
        spans = [slice(other.start, other.start)]
    size = max(1, arr.chunks[axis][0])
    groups = [positions[i : i + size] for i in range(0, positions.size, size)] or [positions]
    name = "loomx-picked-" + tokenize(arr.name, axis, positions, other)
    layer = {}
    for a, span in enumerate(spans):
        for b, group in enumerate(groups):
            key = (group, span) if axis == 0 else (span, group)
            layer[(name, b, a) if axis == 0 else (name, a, b)] = (_read_picks, source, key)
    sizes = (tuple(g.size for g in groups), tuple(s.stop - s.start for s in spans))
    chunks = sizes if axis == 0 else sizes[::-1]
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return LayerArray(graph, name, chunks, meta=arr._meta)


def reread(arr: da.Array, chunks: Any) -> da.Array:
    """``arr.rechunk(chunks)``; for a layer as :func:`as_layer_array` made it (with its
    backend array), each new block read straight from the file.

    dask's rechunk reads the old blocks and splits and joins them: from square blocks to
    full-height bands it holds a whole row of old blocks per band and copies every value
    once more.  Callers make sure ``arr`` still reads its layer whole and unmodified
    (:func:`loomx._read.lazy_arrays.unchanged_source`).

    Examples
    --------
    >>> m = loomx.open_loom("pbmc.loom")["matrix"]  # doctest: +SKIP
    >>> bands = reread(m.data, (m.shape[0], 128))  # doctest: +SKIP
    """
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    source = getattr(arr, "_source", None)
    if source is None or tuple(source.shape) != tuple(arr.shape):
        return arr.rechunk(chunks)
    blocks = da.core.normalize_chunks(chunks, arr.shape, dtype=arr.dtype)
    name = "loomx-reread-" + tokenize(arr.name, blocks)
    spans = [
        [slice(int(a), int(b)) for a, b in itertools.pairwise(np.cumsum((0, *sizes)).tolist())]
        for sizes in blocks
    ]
    layer = {
        (name, *place): (_read_picks, source, key)
        for place, key in zip(
            itertools.product(*(range(len(s)) for s in spans)),
            itertools.product(*spans),
            strict=True,
        )
    }
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return as_layer_array(da.Array(graph, name, blocks, meta=arr._meta), source)

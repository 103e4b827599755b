"""NaN-skipping mean, var and std of layers as one compiled pass per block.

xarray skips NaNs by default on float data: ``m.mean("col")`` becomes ``np.nanmean`` of
the dask array, and dask's ``nanmean`` / ``nanvar`` compute per block ``np.nansum`` (a full
copy of the block with NaNs replaced), a NaN count, and for the variance ``A - mean`` in
float64 and its square: four to six passes over each block and temporaries twice its size,
several times the CPU of reading it (measured in ``benchmarks/README.md``).

A layer opened by loomx is a :class:`LayerArray`: dask's own array, whose
``np.nanmean``, ``np.nanvar`` and ``np.nanstd`` (what xarray's defaults call) run dask's own
reduction tree with a compiled per-block step: count, sum and sum of squared deviations from
the block's mean in two passes over the block, no temporaries, float64 accumulators,
without the GIL.  The blocks' moments are combined by dask's ``mean_combine`` /
``moment_combine`` (Chan's parallel formula), so results equal dask's to rounding.  Every
other operation, and any array derived from a layer, is plain dask.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import dask.array as da
import numpy as np
from dask.array import reductions as dask_reductions

from . import _kernels

__all__ = ["LayerArray", "as_layer_array"]


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
    if axis == (1,):
        n, total, m2 = _moments_along_rows(values, with_m2)
        shape = (values.shape[0], 1)
    else:
        n, total, m2 = _moments_along_cols(values, with_m2)
        shape = (1, values.shape[1])
    return n.reshape(shape), total.reshape(shape), m2.reshape(shape)


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


def _check(a: da.Array, axis: Any, kwargs: dict[str, Any]) -> tuple[int, ...]:
    if not _kernels.available() or a.ndim != 2 or a.dtype.kind != "f":
        raise _Unsupported
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


_FUSED = {np.nanmean: _nanmean, np.nanvar: _nanvar, np.nanstd: _nanstd}


class LayerArray(da.Array):
    """A layer's dask array: plain dask, except that NaN-skipping ``mean``, ``var`` and
    ``std`` along one axis of a float layer run one compiled pass per block.

    Anything computed from it (``m + 1``, ``m.isel(...)``) is an ordinary
    :class:`dask.array.Array`; pickling gives one too.

    Examples
    --------
    >>> import loomx, dask  # doctest: +SKIP
    >>> m = loomx.open_loom("pbmc.loom")["matrix"]  # doctest: +SKIP
    >>> mean, std = dask.compute(m.mean("col"), m.std("col"))  # doctest: +SKIP
    """

    __slots__ = ()

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        fused = _FUSED.get(func)
        if fused is not None and args and args[0] is self:
            try:
                return fused(self, *args[1:], **kwargs)
            except _Unsupported:
                pass
        return super().__array_function__(func, types, args, kwargs)


def as_layer_array(arr: da.Array) -> da.Array:
    """``arr`` as a :class:`LayerArray` (same graph, name and chunks)."""
    return LayerArray(arr.dask, arr.name, arr.chunks, meta=arr._meta)

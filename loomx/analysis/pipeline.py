"""The whole chain on a Loom file, step by step, each step's results written back
all-or-nothing with its name and parameters: QC -> outliers (``Valid`` cells) -> gene
filter (``Valid`` genes) -> normalize + log1p -> highly variable genes (``Selected``) ->
PCA -> neighbors (``KNN``, ``MKNN``) -> Leiden (``ClusterID``) -> UMAP (``X``, ``Y``) ->
marker genes.

Resumable: step ``s`` records, in the global attribute ``loomx_process_<s>``, its own
parameters and those of every step before it, in the same write-back as its results.  A
rerun skips a step whose record matches and redoes the others; a run killed inside a
step leaves the file as the last completed step left it (the write-back is the step's
only write, and it is all-or-nothing).  The normalized layers are never written: each
step that reads them recomputes them band by band from the counts.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._hdf5.filesystem import is_url
from loomx._hdf5.remote import local_copy
from loomx._read import chunking as _chunking
from loomx._read.backend import chunk_layers, open_loom
from loomx._write.writer import to_loom
from loomx.analysis import bands as _bands
from loomx.analysis import embedding, hvg, markers, pca, preprocess
from loomx.errors import LoomFileError
from loomx.ops.qc import assign_qc, calculate_qc_metrics

__all__ = ["DEFAULTS", "RECORD_PREFIX", "STEPS", "process_file", "require_output"]

STEPS = (
    "qc",
    "outliers",
    "filter_genes",
    "normalize",
    "highly_variable_genes",
    "pca",
    "neighbors",
    "leiden",
    "umap",
    "rank_genes_groups",
)
"""The steps of :func:`process_file`, in order."""

DEFAULTS: dict[str, dict[str, Any]] = {
    "qc": {"percent_top": [20, 50, 100, 200, 500]},
    "outliers": {"metrics": dict(preprocess.OUTLIER_METRICS)},
    "filter_genes": {"min_cells": 3},
    "normalize": {"target_sum": None, "base": None},
    "highly_variable_genes": {"flavor": "seurat", "n_top_genes": 2000},
    "pca": {"n_comps": None},
    "neighbors": {"n_neighbors": 15, "random_state": 0},
    "leiden": {"resolution": 1.0, "random_state": 0},
    "umap": {"min_dist": 0.5, "random_state": 0},
    "rank_genes_groups": {"groupby": "ClusterID", "method": "t-test"},
}
"""Each step's parameters and their defaults (scanpy's, and the best practices' QC)."""

RECORD_PREFIX = "loomx_process_"
"""Global attribute ``loomx_process_<step>``: the JSON record of a completed step."""

Compute = Callable[..., tuple[Any, ...]]


TARGET_SUM = "loomx_normalize_target_sum"
"""Global attribute: the ``target_sum`` the normalize step chose (the median total when
none is given), so that later steps normalize without a read to find it."""


def _log_normalized(ds: xr.Dataset, params: Mapping[str, Any]) -> xr.Dataset:
    norm = params["normalize"]
    target = ds.attrs.get(TARGET_SUM, norm["target_sum"])
    ds = preprocess.normalize_total(ds, target_sum=target, layer=_spec.MATRIX)
    return preprocess.log1p(ds, base=norm["base"])


def _qc(ds: xr.Dataset, params: Mapping[str, Any], compute: Compute) -> xr.Dataset:
    cells, genes = calculate_qc_metrics(ds, percent_top=params["qc"]["percent_top"], compute=False)
    cells, genes = compute(cells, genes)
    return assign_qc(ds, cells, genes)


def _run(step: str, ds: xr.Dataset, params: Mapping[str, Any], compute: Compute) -> xr.Dataset:
    p = params[step]
    if step == "qc":
        return _qc(ds, params, compute)
    if step == "outliers":
        return preprocess.mark_outliers(ds, p["metrics"])
    if step == "filter_genes":
        return preprocess.filter_genes(ds, min_cells=p["min_cells"], layer=_spec.MATRIX)
    if step == "normalize":
        target = p["target_sum"]
        if target is None:
            target = preprocess.median_total(ds, layer=_spec.MATRIX, compute=compute)
        out = ds.copy()
        out.attrs[TARGET_SUM] = float(target)
        return out
    if step == "highly_variable_genes":
        source = ds if p["flavor"] == "seurat_v3" else _log_normalized(ds, params)
        return hvg.highly_variable_genes(source, **p)
    if step == "pca":
        return pca.pca(_log_normalized(ds, params), p["n_comps"], compute=compute)
    if step == "neighbors":
        return embedding.neighbors(ds, **p)
    if step == "leiden":
        return embedding.leiden(ds, **p)
    if step == "umap":
        return embedding.umap(ds, **p)
    return markers.rank_genes_groups(_log_normalized(ds, params), **p)


def _results(ds: xr.Dataset, out: xr.Dataset, compute: Compute) -> xr.Dataset:
    """``out`` without the lazy layers, its new lazy attributes computed in one graph."""
    out = out.drop_vars([n for n in ("normalized", "log1p") if n in out.data_vars])
    out.attrs.pop(_bands.CURRENT_LAYER, None)
    lazy = [
        name
        for name, var in out.variables.items()
        if isinstance(var.data, da.Array)
        and var.ndim <= 2
        and not (name in ds.variables and var.data is ds.variables[name].data)
        and set(var.dims) != set(conv.dataset_dims(ds))
    ]
    values = compute(*[out[name].data for name in lazy]) if lazy else ()
    for name, value in zip(lazy, values, strict=True):
        out[name] = out[name].copy(data=np.asarray(value))
    return out


def _open_banded(path: str, locking: bool | None) -> xr.Dataset:
    """The file with its layers as full-height bands of whole HDF5 chunks (no rechunk)."""
    lazy = open_loom(path, chunks=None, locking=locking)
    row_dim, col_dim = conv.dataset_dims(lazy)
    if _spec.MATRIX not in lazy.data_vars:
        return lazy
    var = lazy[_spec.MATRIX]
    hdf5 = (var.encoding.get("chunksizes") or (None, None))[1]
    width = _chunking.band_width(lazy.sizes[row_dim], var.dtype.itemsize, hdf5)
    return chunk_layers(lazy, {row_dim: -1, col_dim: width})


def _records(params: Mapping[str, Any]) -> dict[str, str]:
    """Step -> its record: its parameters and those of every step before it."""
    out = {}
    chain: dict[str, Any] = {}
    for step in STEPS:
        chain[step] = params[step]
        out[step] = json.dumps(chain, sort_keys=True, default=str)
    return out


def _summary(path: str) -> dict[str, Any]:
    with open_loom(path) as ds:
        row_dim, col_dim = conv.dataset_dims(ds)
        cells, genes = _bands.cell_mask(ds), _bands.gene_mask(ds)
        selected = _bands.attr_name(ds, _spec.ROW_ATTRS, "Selected")
        clusters = _bands.attr_name(ds, _spec.COL_ATTRS, "ClusterID")
        return {
            "cells": int(ds.sizes[col_dim]),
            "valid_cells": int(cells.sum()),
            "genes": int(ds.sizes[row_dim]),
            "valid_genes": int(genes.sum()),
            "selected_genes": int(ds[selected].values.sum()) if selected else None,
            "clusters": int(ds[clusters].values.max()) + 1 if clusters else None,
        }


def require_output(path: str | os.PathLike[str], output: str | os.PathLike[str] | None) -> None:
    """Refuse a remote ``path`` (a URL) without a local ``output`` for the results.

    Examples
    --------
    >>> require_output("https://example.org/pbmc.loom", None)  # doctest: +SKIP
    Traceback (most recent call last):
    loomx.errors.LoomFileError: 'https://example.org/pbmc.loom': a remote file is ...
    """
    if is_url(os.fspath(path)) and output is None:
        raise LoomFileError(
            "a remote file is read-only; give output (loomx process --output OUT.loom) for "
            "the results",
            path=path,
        )
    if output is not None and is_url(os.fspath(output)):
        raise LoomFileError("output must be a local file, found a URL", path=output)


def process_file(
    path: str | os.PathLike[str],
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    output: str | os.PathLike[str] | None = None,
    compute: Compute = dask.compute,
    progress: Callable[[int, str, str, float], None] | None = None,
    locking: bool | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run :data:`STEPS` on a Loom file, writing each step's results back as it completes.

    Parameters
    ----------
    path
        The Loom file (changed in place unless ``output``), or a URL (read only; then
        ``output`` is required).
    params
        Per step, parameters that replace :data:`DEFAULTS`.
    output
        Work on this copy of ``path`` (made first if missing; an existing one resumes).
    compute
        Computes dask collections, like :func:`dask.compute`.
    progress
        Called as ``progress(index, step, state, seconds)`` with ``state`` ``"start"``,
        ``"done"`` or ``"skipped"``.
    locking
        HDF5 file locking.
    storage_options
        fsspec options for a URL ``path`` (credentials, endpoint, ...).

    Raises
    ------
    LoomFileError
        ``path`` is a URL and ``output`` is not given (before anything is read).

    Returns
    -------
    dict
        ``file``, ``steps`` (step -> ``"done"`` or ``"skipped"``), ``seconds`` per step,
        and the counts of :func:`_summary` (cells, valid cells, genes, ...).

    Examples
    --------
    >>> params = {"leiden": {"resolution": 0.5}}
    >>> summary = process_file("pbmc.loom", params=params)  # doctest: +SKIP
    """
    require_output(path, output)
    chosen = {step: {**DEFAULTS[step], **dict((params or {}).get(step, {}))} for step in STEPS}
    target = os.fspath(output if output is not None else path)
    if output is not None and not os.path.exists(target):
        with local_copy(os.fspath(path), target, storage_options):
            pass  # renamed into place as the block ends
    records = _records(chosen)
    states: dict[str, str] = {}
    seconds: dict[str, float] = {}
    redo = False
    for index, step in enumerate(STEPS):
        start = time.perf_counter()
        key = RECORD_PREFIX + step
        with _open_banded(target, locking) as ds:
            done = not redo and ds.attrs.get(key) == records[step]
            if not done:
                if progress:
                    progress(index, step, "start", 0.0)
                out = _results(ds, _run(step, ds, chosen, compute), compute)
                out.attrs[key] = records[step]
                to_loom(out, target, mode="a", locking=locking)
        redo = redo or not done
        states[step] = "skipped" if done else "done"
        seconds[step] = time.perf_counter() - start
        if progress:
            progress(index, step, states[step], seconds[step])
    return {"file": target, "steps": states, "seconds": seconds, **_summary(target)}

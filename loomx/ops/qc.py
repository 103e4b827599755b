"""Quality-control metrics of scanpy's ``calculate_qc_metrics``, both axes in one read.

A layer is read once, as full-height column bands (every gene of a few hundred cells):
each band gives the per-cell metrics whole, and per-gene sums, sums of squares and
non-zero counts that add up across bands.  One ``dask.compute`` runs the whole graph, on
any scheduler (threads, processes, ``dask.distributed``).

Names and definitions are scanpy's (:func:`scanpy.pp.calculate_qc_metrics` with
``qc_vars=["mt"]``): per cell ``n_genes_by_counts``, ``total_counts``,
``pct_counts_in_top_{n}_genes``, ``total_counts_mt``, ``pct_counts_mt`` and ``log1p_``
variants; per gene ``n_cells_by_counts``, ``mean_counts``, ``pct_dropout_by_counts``,
``total_counts`` and ``log1p_`` variants, plus ``variance_counts`` (sample variance,
``ddof=1``, as scanpy's highly-variable-gene selection uses).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._hdf5.filesystem import move_into_place, temporary_file
from loomx._read import chunking as _chunking
from loomx._read.backend import chunk_layers, open_loom
from loomx._read.layer import reread
from loomx._read.lazy_arrays import unchanged_source
from loomx._write.maintain import delete
from loomx._write.writer import to_loom
from loomx.errors import LoomFormatError, LoomNameError
from loomx.ops.qc_kernels import band_stats

__all__ = ["assign_qc", "calculate_qc_metrics", "qc_file"]

MITO_PREFIXES = ("MT-", "mt-")
"""Gene symbol prefixes of mitochondrial genes (human, mouse)."""

PERCENT_TOP = (50, 100, 200, 500)
"""Ranks of ``pct_counts_in_top_{n}_genes``, as scanpy's default ``percent_top``."""

GENE_SYMBOL_ATTRS = (
    "Gene",
    "gene",
    "Genes",
    "GeneName",
    "gene_name",
    "gene_names",
    "gene_symbols",
    "Symbol",
    "features",
    "var_names",
    "index",
)
"""Row attributes searched, in order, for gene symbols where producers put them: loompy's
``Gene`` first (also Seurat's and loomx's 10x conversions), 10x's ``gene_name``, Seurat's
``features``, anndata's ``var_names`` (``write_loom`` of an index without a name) and
``index`` (an index named so); one holding text."""

MITO_METRICS = ("total_counts_mt", "log1p_total_counts_mt", "pct_counts_mt")
"""Per-cell metrics that need mitochondrial genes."""

QC_PARAMETERS = "loomx_qc_parameters"
"""Global attribute in which :func:`qc_file` records, as JSON, how its metrics were made."""


def _symbol_attr(ds: xr.Dataset, row_dim: str, wanted: str | None = None) -> str | None:
    """Name of the Dataset variable holding gene symbols, or ``None``.

    ``wanted`` names it: a row attribute's Loom name or a variable name.
    """
    paths = conv.variable_paths(ds, conv.dataset_dims(ds))
    by_path = {h5path: name for name, h5path in paths.items()}
    if wanted is not None:
        name = by_path.get(f"/{_spec.ROW_ATTRS}/{wanted}", wanted)
        if name not in ds.variables or ds[name].dims != (row_dim,):
            found = sorted(h.rsplit("/", 1)[1] for h in by_path if h.startswith("/row_attrs/"))
            raise LoomNameError(
                f"no gene symbol attribute {wanted!r}; the row attributes are {found}"
            )
        return name
    for attr in GENE_SYMBOL_ATTRS:
        name = by_path.get(f"/{_spec.ROW_ATTRS}/{attr}")
        if name is not None and ds[name].dims == (row_dim,) and ds[name].dtype.kind in "OUS":
            return name
    return None


def mito_mask(symbols: Any, prefixes: Sequence[str]) -> np.ndarray:
    """``True`` for each gene symbol that starts with one of ``prefixes``."""
    values = np.asarray(symbols)
    text = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
    return np.array([t.startswith(tuple(prefixes)) for t in text], dtype=bool)


def _add_genes(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: a[key] + b[key] for key in ("sum", "sumsq", "nnz")}


def _per_band(data: da.Array, mito: np.ndarray, ns: np.ndarray) -> tuple[Delayed, Delayed]:
    """The per-cell rows and the per-gene sums of :func:`band_stats` over the full-height
    bands of ``data``, as one graph written out: a task per band, its cells' and genes'
    parts taken apart (so that a band's results are freed before the last band is done),
    the cells' columns joined, the genes' partials summed pairwise (depth log2(bands)).

    (``dask.delayed`` per band tokenized its arguments and culled the whole graph once per
    band: seconds of serial work for the seed file's 1,257 bands.)
    """
    token = tokenize(data.name, mito, ns)
    name = f"loomx-qc-{token}"
    stats = [(f"{name}-band", i) for i in range(data.numblocks[1])]
    layer: dict[Any, Any] = {
        key: (band_stats, (data.name, 0, i), mito, ns) for i, key in enumerate(stats)
    }
    for what, take in (("cells", _cells_only), ("genes", _genes_only)):
        layer.update({(f"{name}-{what}", i): (take, key) for i, key in enumerate(stats)})
    cells = f"{name}-cells-all"
    layer[cells] = (np.hstack, [(f"{name}-cells", i) for i in range(len(stats))])
    parts: list[Any] = [(f"{name}-genes", i) for i in range(len(stats))]
    level = 0
    while len(parts) > 1:
        pairs = []
        for i in range(0, len(parts) - 1, 2):
            key = (f"{name}-genes-{level}", i // 2)
            layer[key] = (_add_genes, parts[i], parts[i + 1])
            pairs.append(key)
        parts = pairs + ([parts[-1]] if len(parts) % 2 else [])
        level += 1
    genes = f"{name}-genes-all"
    layer[genes] = (_identity, parts[0])
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[data])
    return Delayed(cells, graph, layer=name), Delayed(genes, graph, layer=name)


def _identity(value: Any) -> Any:
    return value


def _genes_only(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: stats[key] for key in ("sum", "sumsq", "nnz")}


def _cells_only(stats: dict[str, np.ndarray]) -> np.ndarray:
    return stats["cells"]


BAND_BLOCKS = 2
"""QC's bands are this many of :func:`loomx._read.chunking.band_width`'s bands wide: a
band reads runs of that many more adjacent chunks (one ``preadv`` each: a full-height band
of a loompy layout reads one run per chunk row), and there are that many fewer tasks;
wider still, a band no longer stays in the processor's cache between its kernels
(``benchmarks/README.md``, the seed file's scale)."""


def _band_width(n_genes: int, itemsize: int, step: int | None) -> int:
    """Cells per QC band: :data:`BAND_BLOCKS` times the band-width rule's width."""
    return BAND_BLOCKS * _chunking.band_width(n_genes, itemsize, step)


def _bands(var: xr.DataArray, row_dim: str, col_dim: str) -> da.Array:
    """The layer as a dask array of full-height column bands (each HDF5 chunk read once)."""
    var = var.transpose(row_dim, col_dim)
    data = var.data
    n = var.shape[0]
    if not isinstance(data, da.Array) or len(data.chunks[0]) > 1:
        hdf5 = (var.encoding.get("chunksizes") or (None, None))[1]
        current = data.chunks[1][0] if isinstance(data, da.Array) and data.chunks[1] else None
        width = _band_width(n, var.dtype.itemsize, hdf5 or current)
        if not isinstance(data, da.Array):
            data = da.from_array(data, chunks=(max(n, 1), width))
        elif unchanged_source(var.variable) is not None:
            data = reread(data, (n, width))  # bands read from the file, not joined blocks
        else:
            data = data.rechunk({0: -1, 1: width})
    return data


def calculate_qc_metrics(
    ds: xr.Dataset,
    layer: str = "matrix",
    *,
    mito_prefixes: Sequence[str] | None = MITO_PREFIXES,
    percent_top: Sequence[int] | None = PERCENT_TOP,
    gene_symbols: str | None = None,
    compute: bool = True,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Per-cell and per-gene QC metrics under scanpy's names, from one read of ``layer``.

    Parameters
    ----------
    ds
        A Loom Dataset (rows are genes, columns cells, as in Loom files).
    layer
        The layer holding counts.
    mito_prefixes
        Gene symbols starting with one of these are mitochondrial (``total_counts_mt``,
        ``pct_counts_mt``); ``None`` or empty leaves those metrics out.
    percent_top
        Ranks of ``pct_counts_in_top_{n}_genes``; ranks above the gene count are left out.
    gene_symbols
        Row attribute holding gene symbols; default the first of :data:`GENE_SYMBOL_ATTRS`
        present.  Without one the mitochondrial metrics are left out.
    compute
        False: return the metrics as lazy dask arrays (one graph; computing them together
        with :func:`dask.compute` still reads the layer once).

    Returns
    -------
    (cells, genes) : tuple of xarray.Dataset
        Metrics on the column dim (scanpy's ``obs`` metrics) and on the row dim (``var``
        metrics, plus ``variance_counts``), as in ``scanpy.pp.calculate_qc_metrics(adata,
        qc_vars=["mt"], percent_top=percent_top)``.

    Examples
    --------
    >>> ds = loomx.open_loom("pbmc.loom")  # doctest: +SKIP
    >>> cells, genes = loomx.calculate_qc_metrics(ds)  # doctest: +SKIP
    >>> cells["pct_counts_mt"].median()  # doctest: +SKIP
    """
    row_dim, col_dim = conv.dataset_dims(ds)
    if layer not in ds.data_vars or set(ds[layer].dims) != {row_dim, col_dim}:
        raise LoomNameError(f"no layer {layer!r}; layers are {_layer_names(ds, row_dim, col_dim)}")
    var = ds[layer]
    if var.dtype.kind not in "biuf":
        raise LoomFormatError(f"layer {layer!r} has dtype {var.dtype}; expected numbers")
    n_genes, n_cells = ds.sizes[row_dim], ds.sizes[col_dim]
    ns = np.array(sorted({int(n) for n in (percent_top or ()) if 0 < int(n) <= n_genes}))
    ns = ns.astype(np.int64)
    symbols = _symbol_attr(ds, row_dim, gene_symbols)
    with_mito = bool(mito_prefixes) and symbols is not None
    mito = (
        mito_mask(ds[symbols].values, mito_prefixes or ())
        if with_mito
        else np.zeros(n_genes, dtype=bool)
    )
    _warn_without_mito(mito_prefixes, symbols, int(mito.sum()))
    data = _bands(var, row_dim, col_dim)
    if data.numblocks[1]:
        cells_raw, genes_raw = _per_band(data, mito, ns)
    else:
        cells_raw = np.zeros((3 + ns.size, 0))
        genes_raw = {
            "sum": np.zeros(n_genes),
            "sumsq": np.zeros(n_genes),
            "nnz": np.zeros(n_genes, np.int64),
        }
    integer = var.dtype.kind in "biu"
    if compute:
        cells_raw, genes_raw = dask.compute(cells_raw, genes_raw)
        cells = _cell_metrics(cells_raw, ns, with_mito, integer)
        genes = _gene_metrics(genes_raw, n_cells, integer)
    else:
        empty = {"sum": np.zeros(0), "sumsq": np.zeros(0), "nnz": np.zeros(0, np.int64)}
        cells = _lazy(
            dask.delayed(_cell_metrics)(cells_raw, ns, with_mito, integer),
            _cell_metrics(np.zeros((3 + ns.size, 0)), ns, with_mito, integer),
            n_cells,
        )
        genes = _lazy(
            dask.delayed(_gene_metrics)(genes_raw, n_cells, integer),
            _gene_metrics(empty, n_cells, integer),
            n_genes,
        )
    cell_ds = xr.Dataset({k: (col_dim, v) for k, v in cells.items()})
    gene_ds = xr.Dataset({k: (row_dim, v) for k, v in genes.items()})
    cell_ds.attrs = {
        "layer": layer,
        "mito_genes": int(mito.sum()) if with_mito else None,
        "gene_symbols": _loom_name(ds, symbols) if symbols is not None else None,
        "mito_prefixes": list(mito_prefixes) if with_mito else None,
    }
    gene_ds.attrs = {"layer": layer}
    return cell_ds, gene_ds


def _loom_name(ds: xr.Dataset, name: str) -> str:
    """The Loom name of a row attribute's variable (``row_attrs:X`` -> ``X``)."""
    h5path = conv.variable_paths(ds, conv.dataset_dims(ds)).get(name)
    return h5path.rsplit("/", 1)[1] if h5path else name


def _warn_without_mito(prefixes: Sequence[str] | None, symbols: str | None, found: int) -> None:
    """Warn when mitochondrial metrics were asked for and no gene could be one."""
    if not prefixes or found:
        return
    tried = ", ".join(repr(p) for p in prefixes)
    if symbols is None:
        searched = ", ".join(GENE_SYMBOL_ATTRS)
        warnings.warn(
            f"no gene symbol row attribute (searched {searched}): mitochondrial metrics "
            "left out; name the attribute, or skip them (--no-mito)",
            UserWarning,
            stacklevel=3,
        )
        return
    warnings.warn(
        f"no value of row attribute {symbols!r} starts with {tried}: no mitochondrial genes; "
        "give the right prefix (--mito-prefix), or skip these metrics (--no-mito)",
        UserWarning,
        stacklevel=3,
    )


def _layer_names(ds: xr.Dataset, row_dim: str, col_dim: str) -> list[str]:
    return [str(n) for n, v in ds.data_vars.items() if set(v.dims) == {row_dim, col_dim}]


def _lazy(metrics: Any, template: dict[str, np.ndarray], length: int) -> dict[str, da.Array]:
    """Dask arrays of the delayed dict ``metrics`` (one task computes them all), with the
    names and dtypes of ``template``."""
    return {
        name: da.from_delayed(metrics[name], (length,), dtype=value.dtype, meta=value)
        for name, value in template.items()
    }


@np.errstate(divide="ignore", invalid="ignore")  # NaN and log1p(<-1) as scanpy gives them
def _cell_metrics(
    raw: np.ndarray, ns: np.ndarray, with_mito: bool, integer: bool
) -> dict[str, np.ndarray]:
    total, nnz, mt = raw[0], raw[1].astype(np.int64), raw[2]
    if integer:
        total, mt = total.astype(np.int64), mt.astype(np.int64)
    out = {
        "n_genes_by_counts": nnz,
        "log1p_n_genes_by_counts": np.log1p(nnz),
        "total_counts": total,
        "log1p_total_counts": np.log1p(total),
    }
    for i, n in enumerate(ns):
        out[f"pct_counts_in_top_{n}_genes"] = raw[3 + i] / raw[0] * 100
    if with_mito:
        out["total_counts_mt"] = mt
        out["log1p_total_counts_mt"] = np.log1p(mt)
        out["pct_counts_mt"] = raw[2] / raw[0] * 100
    return out


@np.errstate(divide="ignore", invalid="ignore")
def _gene_metrics(raw: dict[str, np.ndarray], n_cells: int, integer: bool) -> dict[str, Any]:
    total, sumsq, nnz = raw["sum"], raw["sumsq"], raw["nnz"]
    mean = total / n_cells if n_cells else total * math.nan
    variance = (sumsq - total * mean) / (n_cells - 1) if n_cells > 1 else mean * math.nan
    return {
        "n_cells_by_counts": nnz,
        "mean_counts": mean,
        "log1p_mean_counts": np.log1p(mean),
        "pct_dropout_by_counts": (1 - nnz / n_cells) * 100 if n_cells else mean * math.nan,
        "total_counts": total.astype(np.int64) if integer else total,
        "log1p_total_counts": np.log1p(total),
        "variance_counts": np.maximum(variance, 0) if n_cells > 1 else variance,
    }


def assign_qc(ds: xr.Dataset, cells: xr.Dataset, genes: xr.Dataset) -> xr.Dataset:
    """``ds`` with the metrics as column and row attributes, named by loomx's naming rule.

    A metric that exists on both axes (``total_counts``) or clashes with another name
    is qualified (``col_attrs:total_counts``, ``row_attrs:total_counts``), as
    :func:`loomx.open_loom` names it when the file is read again; existing attributes
    of the same names are replaced and other variables renamed where the rule says so.
    The result writes back with ``loomx.to_loom(out, path, mode="a")``, which writes
    only the metrics.

    Examples
    --------
    >>> out = loomx.assign_qc(ds, *loomx.calculate_qc_metrics(ds))  # doctest: +SKIP
    >>> loomx.to_loom(out, "pbmc.loom", mode="a")  # doctest: +SKIP
    """
    dims = conv.dataset_dims(ds)
    paths = conv.variable_paths(ds, dims)
    spaces: dict[str, dict[str, str]] = {_spec.LAYERS: {}, _spec.ROW_ATTRS: {}, _spec.COL_ATTRS: {}}
    for name, h5path in paths.items():
        kind = conv.path_kind(h5path)
        raw = "" if h5path == f"/{_spec.MATRIX}" else h5path.rsplit("/", 1)[1]
        spaces[_spec.LAYERS if kind == "layer" else kind][raw] = name
    new = {_spec.COL_ATTRS: cells, _spec.ROW_ATTRS: genes}
    replaced = [
        spaces[space].pop(str(key))
        for space, metrics in new.items()
        for key in metrics
        if str(key) in spaces[space]
    ]
    names = conv.assign_names(
        spaces[_spec.LAYERS],
        [*spaces[_spec.ROW_ATTRS], *map(str, genes)],
        [*spaces[_spec.COL_ATTRS], *map(str, cells)],
        dims,
    )
    out = ds.drop_vars(replaced)
    renames = {
        old: names[(space, raw)]
        for space, members in spaces.items()
        for raw, old in members.items()
        if names[(space, raw)] != old
    }
    out = out.rename_vars(renames) if renames else out
    coords = {}
    for space, metrics in new.items():
        for key, value in metrics.items():
            coords[names[(space, str(key))]] = value.variable
    out = out.assign_coords(coords)
    out.encoding = dict(ds.encoding)
    return out


def qc_file(
    path: str | os.PathLike[str],
    *,
    layer: str = "matrix",
    mito_prefixes: Sequence[str] | None = MITO_PREFIXES,
    percent_top: Sequence[int] | None = PERCENT_TOP,
    output: str | os.PathLike[str] | None = None,
    compute: Callable[..., tuple[Any, ...]] = dask.compute,
    locking: bool | None = None,
    gene_symbols: str | None = None,
) -> dict[str, Any]:
    """Compute the QC metrics of a Loom file in one read and store them in the file.

    The metrics become column and row attributes (see :func:`assign_qc`), written back
    into ``path`` (nothing else is rewritten; the write is all-or-nothing) or, with
    ``output``, into a copy of ``path`` at ``output``, which is left untouched.

    Parameters
    ----------
    path
        The Loom file.
    layer, mito_prefixes, percent_top
        As for :func:`calculate_qc_metrics`.
    output
        Write a copy with the metrics here instead of changing ``path``.
    compute
        Computes dask collections, like :func:`dask.compute` (the default); the command
        line passes one that shows progress or runs on a cluster.
    locking
        HDF5 file locking (``False`` on filesystems without it).
    gene_symbols
        The row attribute holding gene symbols (its Loom name); default the first of
        :data:`GENE_SYMBOL_ATTRS` the file has.

    Returns
    -------
    dict
        Summary: ``file``, ``cells``, ``genes``, ``median_total_counts``,
        ``median_n_genes_by_counts``, ``median_pct_counts_mt`` (None without gene
        symbols), ``mito_genes``, ``gene_symbols`` (the attribute used, or None),
        ``seconds``.

    Examples
    --------
    >>> summary = qc_file("pbmc.loom", mito_prefixes=["MT-"])  # doctest: +SKIP
    """
    start = time.perf_counter()
    path = os.fspath(path)
    if output is None:
        return _qc_into(
            path, path, layer, mito_prefixes, percent_top, compute, locking, start, gene_symbols
        )
    output = os.fspath(output)
    if not os.path.isfile(path):
        open_loom(path, locking=locking).close()  # the reader's error for a missing file
    with temporary_file(output, "qc", f"writing {output}") as tmp:
        shutil.copyfile(path, tmp)
        summary = _qc_into(
            tmp, output, layer, mito_prefixes, percent_top, compute, locking, start, gene_symbols
        )
        move_into_place(tmp, output)
    return summary


def _qc_into(
    path: str,
    shown: str,
    layer: str,
    mito_prefixes: Sequence[str] | None,
    percent_top: Sequence[int] | None,
    compute: Callable[..., tuple[Any, ...]],
    locking: bool | None,
    start: float,
    gene_symbols: str | None = None,
) -> dict[str, Any]:
    with open_loom(path, chunks=None, locking=locking) as lazy:
        row_dim, col_dim = conv.dataset_dims(lazy)
        if layer not in lazy.data_vars:
            raise LoomNameError(
                f"no layer {layer!r}; layers are {_layer_names(lazy, row_dim, col_dim)}",
                path=shown,
            )
        var = lazy[layer]
        hdf5 = (var.encoding.get("chunksizes") or (None, None))[1]
        width = _band_width(lazy.sizes[row_dim], var.dtype.itemsize, hdf5)
        ds = chunk_layers(lazy, {row_dim: -1, col_dim: width})
        cells, genes = calculate_qc_metrics(
            ds,
            layer,
            mito_prefixes=mito_prefixes,
            percent_top=percent_top,
            compute=False,
            gene_symbols=gene_symbols,
        )
        cells, genes = compute(cells, genes)
        mito = cells.attrs.get("mito_genes")
        if mito == 0:  # no gene matched: zeros would read as measured
            cells = cells.drop_vars([m for m in MITO_METRICS if m in cells])
        out = assign_qc(ds, cells, genes)
        stale = _stale_metrics(ds, set(map(str, cells.data_vars)))
        out = out.drop_vars(list(stale))
        out.attrs = {**ds.attrs, QC_PARAMETERS: json.dumps(_parameters(cells, percent_top))}
        if stale:
            delete(path, list(stale.values()), locking=locking)
        to_loom(out, path, mode="a", locking=locking)
    return {
        "file": shown,
        "layer": layer,
        "cells": int(cells.sizes[col_dim]),
        "genes": int(genes.sizes[row_dim]),
        "median_total_counts": _median(cells["total_counts"]),
        "median_n_genes_by_counts": _median(cells["n_genes_by_counts"]),
        "median_pct_counts_mt": _median(cells["pct_counts_mt"]) if mito else None,
        "mito_genes": mito,
        "mito_prefixes": list(mito_prefixes or ()),
        "gene_symbols": cells.attrs.get("gene_symbols"),
        "removed": sorted(stale.values()),
        "seconds": time.perf_counter() - start,
    }


def _parameters(cells: xr.Dataset, percent_top: Sequence[int] | None) -> dict[str, Any]:
    """What :data:`QC_PARAMETERS` records: the layer, the gene symbols, the prefixes."""
    return {
        "layer": cells.attrs["layer"],
        "gene_symbols": cells.attrs.get("gene_symbols"),
        "mito_prefixes": cells.attrs.get("mito_prefixes"),
        "mito_genes": cells.attrs.get("mito_genes"),
        "percent_top": sorted(int(n) for n in percent_top or ()),
        "metrics": sorted(map(str, cells.data_vars)),
    }


def _stale_metrics(ds: xr.Dataset, computed: set[str]) -> dict[str, str]:
    """Cell metrics in the file that this run did not compute (an earlier run's, made
    with other parameters): variable name -> HDF5 path."""
    paths = conv.variable_paths(ds, conv.dataset_dims(ds))
    family = (*MITO_METRICS, "pct_counts_in_top_")
    stale = {}
    for name, h5path in paths.items():
        group, _, raw = h5path.lstrip("/").partition("/")
        if group == _spec.COL_ATTRS and raw.startswith(family) and raw not in computed:
            stale[name] = h5path
    return stale


def _median(values: xr.DataArray) -> float:
    data = np.asarray(values, dtype=np.float64)
    return float(np.nanmedian(data)) if data.size and not np.isnan(data).all() else math.nan

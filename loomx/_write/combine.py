"""Concatenate Loom files along columns into a new file: :func:`combine`.

:func:`combine` opens every input lazily, aligns rows by a key attribute with a lazy
permutation and concatenates along columns; attributes, graphs and globals are planned and
written as by :func:`loomx.to_loom` into a temporary file, then each input's layers are
added with the first input's storage: its stored chunks copied raw when its rows keep their
order, its storage matches and its columns start on a chunk edge, else its blocks are
streamed (whole chunks compressed in the dask tasks, in parallel).  The file is renamed into
place at the end.  Memory is bounded by the dask blocks, not by the file sizes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping, Sequence

import dask.array as da
import h5py
import numpy as np
import xarray as xr

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._format.graphs import graph_edges, graph_names
from loomx._hdf5.files import open_h5
from loomx._hdf5.filesystem import move_into_place, same_file, temporary_file
from loomx._read.backend import open_loom
from loomx._write.append import full_height, key_order, loom_objects
from loomx._write.plan import LayerPlan, plan_dataset
from loomx._write.storage import create_layer, create_layer_like, raw_copy, storage_of_dataset
from loomx._write.stream import queue_columns, run_queue
from loomx._write.writer import write_new_file
from loomx.errors import LoomFormatError, LoomNameError

__all__ = [
    "combine",
]


def combine(
    files: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    key: str | None = None,
    batch_size: int | None = None,
    locking: bool | None = None,
) -> None:
    """Concatenate Loom files along columns into a new file ``out``, out-of-core.

    Parameters
    ----------
    files
        Input Loom files; each must have the same layers and column attributes.
    out
        Output file, written as spec 3.0.0 (atomically: temporary name, then rename).
    key
        Row attribute (e.g. ``"Accession"``) with unique values in every file: rows of each
        file are permuted to the first file's order.  None: files are taken row by row.
    batch_size
        Columns per dask block; default about 16 MiB of full-height columns.

    Notes
    -----
    Row attributes, row graphs and global attributes come from the first file.  Column
    graphs are concatenated with vertices offset; a graph missing in some files keeps its
    edges, with those files' columns unconnected.  Layers keep the first file's storage
    (chunks, filters); an input whose rows keep their order, whose storage matches and
    whose columns start on a chunk edge is copied chunk by chunk without recompression.

    Examples
    --------
    >>> loomx.combine(["a.loom", "b.loom"], "ab.loom", key="Accession")  # doctest: +SKIP
    """
    out = os.fspath(out)
    paths = [os.fspath(p) for p in files]
    if not paths:
        raise ValueError("combine needs at least one input file")
    if os.path.exists(out) and any(same_file(p, out) for p in paths):
        raise LoomFormatError("is also an input; write to a new file", path=out)
    opened: list[xr.Dataset] = []
    try:
        with temporary_file(out, "combine", "combine") as tmp:
            opened.extend(open_loom(p, chunks=None, locking=locking) for p in paths)
            combined, inputs = _combined(paths, opened, key, batch_size)
            plan = plan_dataset(combined, out, "w", conv.DEFAULT_DIMS, None, locking=locking)
            with open_h5(tmp, "w", locking) as f:
                write_new_file(f, plan.without_layers())
                _write_layers(f, plan.layers, inputs, combined.sizes, locking)
            move_into_place(tmp, out)
    finally:
        for ds in opened:
            ds.close()


def _write_layers(
    f: h5py.File,
    layers: list[LayerPlan],
    inputs: list,
    sizes: Mapping[str, int],
    locking: bool | None,
) -> None:
    """Write the layers into the new file ``f`` with the first input's storage: each
    input's stored chunks copied raw where storage and column offset allow it, else its
    (permuted) blocks streamed."""
    n, total = (sizes[d] for d in conv.DEFAULT_DIMS)
    lock = threading.Lock()
    jobs: list = []
    with contextlib.ExitStack() as stack:
        sources = [stack.enter_context(open_h5(p, "r", locking)) for p, *_ in inputs]
        for layer in layers:
            parent_path, _, name = layer.h5path.rpartition("/")
            parent = f.require_group(parent_path or "/")
            template, dtype = sources[0][layer.h5path], layer.data.dtype
            if template.dtype == dtype:
                dset = create_layer_like(parent, name, template, total)
            else:
                dset = create_layer(parent, name, (n, total), dtype, storage_of_dataset(template))
            for src, (_, col0, order, part) in zip(sources, inputs, strict=True):
                if order is None and raw_copy(src[layer.h5path], dset, col0):
                    continue
                data = da.asarray(part[layer.var_name].data).astype(dtype)
                queue_columns(jobs, dset, data, col0, lock, rows=order)
        run_queue(jobs, overlap=True)  # into a new file no reader sees until it is complete


def _combined(
    paths: list[str], opened: list[xr.Dataset], key: str | None, batch_size: int | None
) -> tuple[xr.Dataset, list]:
    """The lazy concatenation of ``opened`` along columns, rows in the first file's order."""
    dims = conv.DEFAULT_DIMS
    first, kpath = opened[0], f"/{_spec.ROW_ATTRS}/{key}"
    vars0 = loom_objects(first, dims, paths[0])
    want = {h: v for h, v in vars0.items() if conv.path_kind(h) != _spec.ROW_ATTRS}
    n, offset = first.sizes[dims[0]], 0
    parts, graphs, inputs = [], {}, []
    for p, ds in zip(paths, opened, strict=True):
        found = loom_objects(ds, dims, p)
        cols = {h: v for h, v in found.items() if conv.path_kind(h) != _spec.ROW_ATTRS}
        if set(cols) != set(want):
            diff = sorted(set(cols) ^ set(want))
            raise LoomFormatError(
                f"layers or column attributes differ from the first file {paths[0]!r}: {diff}",
                path=p,
            )
        if ds.sizes[dims[0]] != n:
            raise LoomFormatError(f"has {ds.sizes[dims[0]]} rows, {paths[0]!r} has {n}", path=p)
        if key is not None and kpath not in found:
            raise LoomNameError(f"key {key!r} not found", path=p, h5path=kpath)
        for name in graph_names(ds, _spec.COL_GRAPHS):
            a, b, w = graph_edges(ds, _spec.COL_GRAPHS, name)
            graphs.setdefault(name, []).append((np.asarray(a) + offset, np.asarray(b) + offset, w))
        gvars = [v for v in ds.variables if conv.parse_graph_var(str(v)) is not None]
        rows = [v for h, v in found.items() if conv.path_kind(h) == _spec.ROW_ATTRS]
        body = full_height(ds.drop_vars(gvars), dims, p, batch_size)
        order = None
        if key is not None and ds is not first:
            order = key_order(first[vars0[kpath]].values, ds[found[kpath]].values, (p, kpath))
            order = None if np.array_equal(order, np.arange(n)) else order
        renames = {found[h]: want[h] for h in cols if found[h] != want[h]}
        body = body.drop_vars(rows).rename(renames)
        parts.append(body if order is None else body.isel({dims[0]: order}))
        inputs.append((p, offset, order, body))  # layers are written from body and order
        offset += ds.sizes[dims[1]]
    combined = xr.concat(parts, dim=dims[1], data_vars="minimal", coords="minimal", join="exact")
    keep = [v for h, v in vars0.items() if conv.path_kind(h) == _spec.ROW_ATTRS]
    keep += [v for v in first.variables if str(v).startswith(f"{_spec.ROW_GRAPHS}:")]
    combined = combined.assign_coords({v: first.variables[v] for v in keep})
    for name, pieces in graphs.items():
        names = conv.graph_var_names(_spec.COL_GRAPHS, name)
        a, b, w = (np.concatenate([np.asarray(piece[k]) for piece in pieces]) for k in range(3))
        combined = combined.assign_coords(
            {
                names["vertex"]: (dims[1], np.arange(offset, dtype=np.int64)),
                names["a"]: (names["edge"], a.astype(np.int64)),
                names["b"]: (names["edge"], b.astype(np.int64)),
                names["w"]: (names["edge"], w.astype(np.float64)),
            }
        )
    combined.attrs = dict(first.attrs)
    combined.encoding = {"loom_dims": dims}
    return combined, inputs

"""Grow a Loom file along columns: :func:`append` cells to it.

A layer that is chunked and growable along columns (loompy's and loomx's layers are) grows in
place: the new columns, with the old chunk column they share, are written as a *patch*
staged in the file (the file's storage; chunks compressed block by block in parallel), which
the commit copies in after resizing the layer (:mod:`loomx._write.transaction`).  Earlier
columns are never rewritten, so appending batch after batch costs what the batches cost.
Other layers are rebuilt at the new width under a temporary name (old chunks copied raw).
Column attributes and column graphs are written complete under temporary names, and
everything is committed at once (an fsynced pending commit, then the link swaps and patch
copies), so the file reads as all old or all new whatever the moment of an error or an
interruption (SIGKILL, power loss).

The alignment helpers here (rows by a key, full-height column bands) serve
:func:`loomx.combine` too.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import dask.array as da
import h5py
import numpy as np
import xarray as xr

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._format import values as _values
from loomx._format.graphs import graph_edges, graph_names
from loomx._hdf5.files import locking_in_use, open_h5
from loomx._hdf5.links import hard_get
from loomx._read import chunking as _chunking
from loomx._read.backend import open_loom
from loomx._write.plan import (
    encode_attr,
    field_names,
    in_field_order,
    layer_data,
    resolve_dims,
)
from loomx._write.storage import (
    LOOMPY_STORAGE,
    copy_columns,
    create_attr,
    create_graph,
    create_layer,
    create_layer_like,
    grows_along,
    storage_of_dataset,
)
from loomx._write.stream import current_client, queue_columns, run_queue
from loomx._write.transaction import Transaction, recover_pending, transaction
from loomx._write.writer import to_loom
from loomx.errors import LoomFormatError, LoomNameError

__all__ = ["append", "full_height", "key_order", "loom_objects"]

FillValues = Mapping[str, Any] | Literal["auto"] | None
ATTR_STORAGE = dataclasses.replace(LOOMPY_STORAGE, chunks=None)


def loom_objects(ds: xr.Dataset, dims: Sequence[str], path: str) -> dict[str, str]:
    """The variable name of every layer and attribute of ``ds``, by HDF5 path."""
    return {h5path: name for name, h5path in conv.variable_paths(ds, dims, path=path).items()}


# --------------------------------------------------------------------------- alignment


def is_text(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind in "OUST"


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or is_text(a.dtype) != is_text(b.dtype):
        return False
    if is_text(a.dtype):
        return bool(np.array_equal(a.astype(str), b.astype(str)))
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind == b.dtype.kind == "f"))


def fill_value(
    fill_values: FillValues, name: str, dtype: np.dtype, where: tuple[str, str], why: str
) -> Any:
    """The fill value for ``name`` or a LoomFormatError saying why one is needed;
    ``where`` is the ``(file, HDF5 path)`` for the message."""
    if fill_values == "auto":
        return "" if is_text(dtype) else np.zeros((), dtype=dtype)[()]
    if fill_values is not None and name in fill_values:
        return fill_values[name]
    raise LoomFormatError(
        f"{why}; pass fill_values={{{name!r}: ...}} or 'auto'", path=where[0], h5path=where[1]
    )


def key_order(file_key: np.ndarray, other_key: np.ndarray, where: tuple[str, str]) -> np.ndarray:
    """Positions in ``other_key`` of each value of ``file_key`` (both must be unique)."""
    file_key, other_key = (np.asarray(k) for k in (file_key, other_key))
    if is_text(file_key.dtype) or is_text(other_key.dtype):
        file_key, other_key = file_key.astype(str), other_key.astype(str)
    fs, os_ = np.argsort(file_key, kind="stable"), np.argsort(other_key, kind="stable")
    f_sorted, o_sorted = file_key[fs], other_key[os_]
    for values, side in ((f_sorted, "the target"), (o_sorted, "the new data")):
        dup = values[1:][values[1:] == values[:-1]]
        if len(dup):
            raise LoomFormatError(
                f"key values are not unique in {side}: {dup[:3]}", path=where[0], h5path=where[1]
            )
    if len(f_sorted) != len(o_sorted) or not np.array_equal(f_sorted, o_sorted):
        missing = np.setdiff1d(f_sorted, o_sorted)[:3].tolist()
        extra = np.setdiff1d(o_sorted, f_sorted)[:3].tolist()
        raise LoomFormatError(
            f"key values differ; missing in the new data: {missing}, not in the "
            f"target: {extra}; expected the same set of values",
            path=where[0],
            h5path=where[1],
        )
    order = np.empty(len(fs), dtype=np.int64)
    order[fs] = os_
    return order


def full_height(
    ds: xr.Dataset, dims: tuple[str, str], path: str, width: int | None = None
) -> xr.Dataset:
    """Layers as dask arrays in full-height column bands (row permutations stay in-block)."""
    out = {}
    paths = conv.variable_paths(ds, dims, path=path)
    for name, var in ds.data_vars.items():
        if sorted(var.dims) != sorted(dims):
            continue
        var = var.transpose(*dims)
        step = (var.encoding.get("chunksizes") or (64, 64))[1]
        cols = width or _chunking.band_width(var.shape[0], var.dtype.itemsize, step)
        lazy = var.variable
        if lazy.chunks is None and not lazy._in_memory:  # read in bands: no rechunk
            lazy = lazy.chunk({dims[0]: -1, dims[1]: cols})
        data = layer_data(path, paths.get(str(name), f"/{_spec.LAYERS}/{name}"), lazy)
        out[name] = (dims, da.asarray(data).rechunk((-1, cols), method="tasks"))
    return ds.assign(out) if out else ds


# --------------------------------------------------------------------------- append plan


class _AppendPlan:
    def __init__(self, path: str, shape: tuple[int, int], m_new: int, legacy: bool) -> None:
        self.path = path
        self.shape = shape
        self.m_new = m_new
        self.legacy = legacy
        self.layers: list[tuple[str, Any, Any, np.dtype]] = []  # h5path, new, old fill, dtype
        self.rows: np.ndarray | None = None  # order of the new layers' rows (None: as they are)
        self.attrs: dict[str, np.ndarray] = {}  # rewritten whole
        self.attr_tails: dict[str, np.ndarray] = {}  # values of the new columns only
        self.target: h5py.File | None = None  # the file, open read-only while planning
        self.graphs: dict[str, dict[str, np.ndarray]] = {}
        self.locking: bool | None = None


def _plan_append(
    old: xr.Dataset,
    ds: xr.Dataset,
    path: str,
    key: str | None,
    fill_values: FillValues,
    dims: Sequence[str] | None,
    target: h5py.File | None = None,
) -> _AppendPlan:
    fdims = tuple(old.encoding["loom_dims"])
    dims = resolve_dims(ds, dims, path)
    ds = ds.transpose(*dims, ...)  # (col, row) layers, as xr.where may give them
    if f"/{_spec.MATRIX}" not in loom_objects(old, fdims, path):
        raise LoomFormatError("missing; use to_loom to create", path=path, h5path="/matrix")
    n, m = old[_spec.MATRIX].shape
    legacy = not _spec.uses_vlen_utf8(old.encoding.get("loom_spec_version", "3.0.0"))
    if ds.sizes.get(dims[0], 0) != n:
        found = f"found {ds.sizes.get(dims[0], 0)} rows ({dims[0]!r})"
        raise LoomFormatError(f"{found}; the file has {n}", path=path, h5path="/matrix")
    m_new = int(ds.sizes.get(dims[1], 0))
    fvars, dvars = loom_objects(old, fdims, path), loom_objects(ds, dims, path)
    rows = None
    if key is not None:
        kpath = f"/{_spec.ROW_ATTRS}/{key}"
        if kpath not in fvars or kpath not in dvars:
            side = "the file" if kpath not in fvars else "the new data"
            raise LoomNameError(f"key {key!r} not found in {side}", path=path, h5path=kpath)
        order = key_order(old[fvars[kpath]].values, ds[dvars[kpath]].values, (path, kpath))
        if not np.array_equal(order, np.arange(n)):
            rows = order
    body = ds if rows is None else full_height(ds, dims, path)  # layers: reordered when packed
    ds = ds if rows is None else body.isel({dims[0]: rows})
    plan = _AppendPlan(path, (n, m), m_new, legacy)
    plan.rows = rows
    plan.target = target
    for h5path in sorted(set(fvars) | set(dvars)):
        kind = conv.path_kind(h5path)
        fname, dname = fvars.get(h5path), dvars.get(h5path)
        where = (path, h5path)
        if kind == _spec.ROW_ATTRS:
            if fname is None:
                raise LoomFormatError(
                    f"row attribute {dname!r} of the new data is not in the file; "
                    "append adds columns only (drop it, or add it first with to_loom(mode='a'))",
                    path=where[0],
                    h5path=where[1],
                )
            if dname is not None and not same_values(old[fname].values, ds[dname].values):
                raise LoomFormatError(
                    f"row attribute {dname!r} differs from the file", path=where[0], h5path=where[1]
                )
        elif kind == "layer":
            _plan_layer(plan, old, body, h5path, fname, dname, fill_values)
        else:
            _plan_col_attr(plan, old, ds, h5path, fname, dname, fill_values)
    _plan_graphs(plan, old, ds)
    return plan


def _plan_layer(
    plan: _AppendPlan,
    old: xr.Dataset,
    ds: xr.Dataset,
    h5path: str,
    fname: str | None,
    dname: str | None,
    fill_values: FillValues,
) -> None:
    where = (plan.path, h5path)
    if dname is None:
        dtype = old[fname].dtype
        why = f"layer {fname!r} of the file is missing in the new data"
        value = fill_value(fill_values, str(fname), dtype, where, why)
        plan.layers.append((h5path, value, None, dtype))
        return
    data = layer_data(plan.path, h5path, ds[dname].variable)
    if fname is None:
        dtype = data.dtype
        why = f"layer {dname!r} of the new data is not in the file"
        plan.layers.append((h5path, data, fill_value(fill_values, dname, dtype, where, why), dtype))
        return
    dtype = old[fname].dtype
    if not np.can_cast(data.dtype, dtype, "safe"):
        raise LoomFormatError(
            f"the new data has dtype {data.dtype}, the file {dtype}; cast it with "
            f".astype({str(dtype)!r}) first",
            path=where[0],
            h5path=where[1],
        )
    plan.layers.append((h5path, data, None, dtype))


def _plan_col_attr(
    plan: _AppendPlan,
    old: xr.Dataset,
    ds: xr.Dataset,
    h5path: str,
    fname: str | None,
    dname: str | None,
    fill_values: FillValues,
) -> None:
    where = (plan.path, h5path)
    m, k = plan.shape[1], plan.m_new
    new = np.asarray(ds[dname].values) if dname is not None else None
    compound = _compound_dtype(old, ds, fname, dname, where)
    if compound is not None and fname is not None and new is not None:
        new = in_field_order(new, field_names(ds, ds[dname].variable), compound, where)
    if fname is not None:
        shape, dtype = old[fname].shape, old[fname].dtype
        if new is None:
            why = f"column attribute {fname!r} of the file is missing in the new data"
            value = fill_value(fill_values, str(fname), dtype, where, why)
            new = np.full((k, *shape[1:]), value, dtype=object if is_text(dtype) else dtype)
        elif shape[1:] != new.shape[1:] or is_text(dtype) != is_text(new.dtype):
            raise LoomFormatError(
                f"the file has dtype {dtype} and shape {shape}, the "
                f"new data {new.dtype} and {new.shape}; expected the same kind and extra dims",
                path=where[0],
                h5path=where[1],
            )
        if is_text(new.dtype):
            new = new.astype(object)
        tail = encode_attr(plan.path, h5path, new, plan.legacy)
        target = plan.target.get(h5path) if plan.target is not None else None
        if isinstance(target, h5py.Dataset) and _fits(tail, target, axis=0):
            plan.attr_tails[h5path] = tail.astype(target.dtype)
            return
        present = old[fname].values
    else:
        why = f"column attribute {dname!r} of the new data is not in the file"
        value = fill_value(fill_values, str(dname), new.dtype, where, why)
        present = np.full((m, *new.shape[1:]), value, dtype=object if is_text(new.dtype) else None)
    if is_text(present.dtype):
        present, new = present.astype(object), new.astype(object)
    values = np.concatenate([present, new])
    if compound is None:
        plan.attrs[h5path] = encode_attr(plan.path, h5path, values, plan.legacy)
        return
    try:
        plan.attrs[h5path] = _values.array_to_compound(values, compound)
    except ValueError as err:
        raise LoomFormatError(f"{fname or dname}: {err}", path=where[0], h5path=where[1]) from err


def _compound_dtype(
    old: xr.Dataset, ds: xr.Dataset, fname: str | None, dname: str | None, where: tuple[str, str]
) -> np.dtype | None:
    """The compound dtype of a column attribute: the file's, else the new data's."""
    source, name = (old, fname) if fname is not None else (ds, dname)
    var = source[name].variable
    wanted = var.encoding.get("dtype")
    if var.ndim != 2 or not _values.is_compound_request(wanted):
        return None
    try:
        return _values.compound_dtype(wanted, field_names(source, var), var.dtype)
    except ValueError as err:
        raise LoomFormatError(f"{name}: {err}", path=where[0], h5path=where[1]) from err


def _fits(values: np.ndarray, target: h5py.Dataset, axis: int) -> bool:
    """Whether ``values`` can be added to ``target`` along ``axis`` in place: chunked,
    growable there, and a dtype that holds them unchanged."""
    if not grows_along(target, axis) or target.dtype.names:
        return False
    if target.dtype.kind == "O" or values.dtype.kind == "O":
        return target.dtype.kind == values.dtype.kind == "O"
    if target.dtype.kind == "S":
        return values.dtype.kind == "S" and values.dtype.itemsize <= target.dtype.itemsize
    return np.can_cast(values.dtype, target.dtype, "safe")


def _plan_graphs(plan: _AppendPlan, old: xr.Dataset, ds: xr.Dataset) -> None:
    for name in graph_names(ds, _spec.ROW_GRAPHS):
        where = (plan.path, f"/{_spec.ROW_GRAPHS}/{name}")
        if name not in graph_names(old, _spec.ROW_GRAPHS) or not _same_edges(
            graph_edges(old, _spec.ROW_GRAPHS, name), graph_edges(ds, _spec.ROW_GRAPHS, name)
        ):
            raise LoomFormatError(
                f"row graph {name!r} differs from the file's", path=where[0], h5path=where[1]
            )
    space, m = _spec.COL_GRAPHS, plan.shape[1]
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    for name in sorted(set(graph_names(old, space)) | set(graph_names(ds, space))):
        h5path = f"/{space}/{name}"
        conv.check_link_name(name, path=plan.path, h5path=h5path)
        if name in graph_names(old, space):
            h5path = old[conv.graph_var_names(space, name)["vertex"]].encoding.get(
                "loom_path", h5path
            )
            a0, b0, w0 = graph_edges(old, space, name)
        else:
            a0, b0, w0 = empty
        a1, b1, w1 = graph_edges(ds, space, name) if name in graph_names(ds, space) else empty
        plan.graphs[h5path] = {
            "a": np.concatenate([a0, np.asarray(a1) + m]).astype(np.int64),
            "b": np.concatenate([b0, np.asarray(b1) + m]).astype(np.int64),
            "w": np.concatenate([w0, w1]).astype(np.float64),
        }


def _same_edges(x: tuple[np.ndarray, ...], y: tuple[np.ndarray, ...]) -> bool:
    def canon(e: tuple[np.ndarray, ...]) -> np.ndarray:
        stacked = np.stack([np.asarray(v, np.float64) for v in e])
        return stacked[:, np.lexsort(stacked[::-1])]

    return bool(np.array_equal(canon(x), canon(y)))


# --------------------------------------------------------------------------- append write


def _write_append(plan: _AppendPlan, txn: Transaction) -> None:
    """Stage every object: a patch of new columns for each layer that grows in place,
    everything else complete under its staged (temporary) name."""
    f = txn.file
    n, m = plan.shape
    width = m + plan.m_new
    lock = threading.Lock()
    jobs: list = []
    for h5path, data, old_fill, dtype in plan.layers:
        target = hard_get(f, h5path, plan.path) if old_fill is None else None  # None: new layer
        col0 = m  # where ``data`` goes in the dataset written here
        if target is not None and grows_along(target, 1):
            # the chunk column holding the old edge is rewritten with the new columns
            edge = m // target.chunks[1] * target.chunks[1]
            parent, link = txn.stage_patch(h5path, (0, edge), (n, width))
            dset = create_layer_like(parent, link, target, width - edge)
            if m > edge:
                dset[:, : m - edge] = target[:, edge:m]
            col0 = m - edge
        elif target is not None:
            parent, tmp = txn.stage(h5path)
            dset = create_layer_like(parent, tmp, target, width)
            copy_columns(target, dset, 0)
        else:
            parent, tmp = txn.stage(h5path)
            matrix = hard_get(f, f"/{_spec.MATRIX}", plan.path)
            dset = create_layer(parent, tmp, (n, width), dtype, storage_of_dataset(matrix))
        step = dset.chunks or (64, 64)
        parts = [(data, col0, plan.m_new)]
        if old_fill is not None:
            parts.append((old_fill, 0, m))
        for part, start, cols in parts:
            if not cols:
                continue
            rows = plan.rows if part is data else None
            if not isinstance(part, da.Array | np.ndarray):
                band = _chunking.band_width(n, np.dtype(dtype).itemsize, step[1])
                part, rows = da.full((n, cols), part, dtype=dtype, chunks=(-1, band)), None
            queue_columns(jobs, dset, da.asarray(part).astype(dtype), start, lock, rows=rows)
    run_queue(jobs)
    for h5path, tail in plan.attr_tails.items():
        target = hard_get(f, h5path, plan.path)
        edge = m // target.chunks[0] * target.chunks[0]
        values = np.concatenate([target[edge:m], tail]) if m > edge else tail
        if target.dtype.kind == "O":
            values = np.asarray([v.decode() if isinstance(v, bytes) else v for v in values], object)
        rest = tuple(target.shape[1:])
        parent, link = txn.stage_patch(h5path, (edge, *([0] * len(rest))), (width, *rest))
        space = h5py.h5s.create_simple(values.shape, (h5py.h5s.UNLIMITED, *rest))
        dsid = h5py.h5d.create(
            parent.id, link.encode(), target.id.get_type(), space, dcpl=target.id.get_create_plist()
        )
        h5py.Dataset(dsid)[()] = values
    for h5path, values in plan.attrs.items():
        old = hard_get(f, h5path, plan.path)
        storage = storage_of_dataset(old) if isinstance(old, h5py.Dataset) else ATTR_STORAGE
        create_attr(*txn.stage(h5path), values, dataclasses.replace(storage, chunks=None))
    for h5path, edges in plan.graphs.items():
        create_graph(*txn.stage(h5path), edges)


def _execute_append(plan: _AppendPlan) -> None:
    client = current_client()
    with transaction(plan.path, what="append", locking=plan.locking, client=client) as txn:
        _write_append(plan, txn)


def append(
    path: str | os.PathLike[str],
    ds: xr.Dataset,
    *,
    key: str | None = None,
    fill_values: FillValues = None,
    dims: Sequence[str] | None = None,
    locking: bool | None = None,
) -> None:
    """Append the columns (cells) of ``ds`` to the Loom file at ``path``.

    Parameters
    ----------
    path
        An existing Loom file (a missing one is created from ``ds`` as by ``to_loom``).
    ds
        Dataset in loomx's model with the file's rows: layers ``(row, col)``, column
        attributes, column graphs.  Row attributes it has must exist in the file and be
        equal (after alignment by ``key``); row graphs likewise.  ``ds.attrs`` is not
        written: the file keeps its global attributes.
    key
        Row attribute (e.g. ``"Accession"``) present in both, with unique values: the rows
        of ``ds`` are permuted to the file's order.  None: rows must already match.
    fill_values
        For a layer or column attribute present on one side only: ``{variable name:
        value}`` or ``"auto"`` (0, or ``""`` for strings).  None: such a mismatch is an error.
    dims
        The (row, col) dims of ``ds``; default as in :func:`loomx.to_loom`.
    locking
        HDF5 file locking for every file this opens; default the setting of the Datasets
        open on ``path`` in this process, else the one ``ds`` was opened with
        (``ds.encoding["loom_locking"]``).  ``False`` on filesystems without locking.

    Raises
    ------
    LoomFormatError, LoomNameError
        Mismatched rows, layers, attributes, dtypes or key; raised before the file is
        opened for writing (it stays byte-identical).
    LoomWriteError
        Writing failed or the file is held open elsewhere; the file keeps its content.

    Notes
    -----
    Column graphs of the same name are concatenated, the new vertices offset by the old
    column count; a graph on one side only keeps its edges (the other columns are
    unconnected vertices).  Chunked layers grow in place (only the chunk column holding
    the old edge is rewritten); column attributes are rewritten whole.  A Dataset opened
    on the file before the append still has the old shape (attributes it has not loaded
    yet would read the new length): reopen the file.

    Examples
    --------
    >>> more = loomx.open_loom("batch2.loom")                       # doctest: +SKIP
    >>> loomx.append("atlas.loom", more, key="Accession")           # doctest: +SKIP
    """
    path = os.fspath(path)
    if locking is None:
        locking = locking_in_use(path) if os.path.exists(path) else None
    if locking is None:
        locking = ds.encoding.get("loom_locking")
    if not os.path.exists(path):
        to_loom(ds, path, mode="w", dims=dims, locking=locking)
        return
    recover_pending(path, locking)
    old = open_loom(path, chunks=None, locking=locking)
    try:
        with open_h5(path, "r", locking) as target:
            plan = _plan_append(old, ds, path, key, fill_values, dims, target)
        plan.target = None
    finally:
        old.close()
    plan.locking = locking
    _execute_append(plan)

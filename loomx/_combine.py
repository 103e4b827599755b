"""Grow Loom files along columns: :func:`append` cells to a file, :func:`combine` files.

:func:`append` never modifies an existing object in place.  Each layer is rebuilt at the new
width under a temporary name in the same file: the old HDF5 chunks are copied raw
(``read_direct_chunk``/``write_direct_chunk``: no decompression, no recompression), then the
new columns are streamed in block by block.  Column attributes and column graphs are written
complete under temporary names too, and all of them are committed at once (``_transaction``:
an fsynced journal, then the link swaps), so the file reads as all old or all new whatever
the moment of an error or an interruption (SIGKILL, power loss).  The price: the old
layers' space stays in the file as free space (``h5repack`` reclaims it), so the file grows
by the old layer sizes.

:func:`combine` opens every input lazily, aligns rows by a key attribute with a lazy
permutation and concatenates along columns; attributes, graphs and globals are written by
the :func:`loomx.to_loom` machinery into a temporary file, then each input's layers are
added: its stored chunks copied raw when its rows keep their order, its storage matches
and its columns start on a chunk edge, else its blocks are streamed (whole chunks
compressed in the dask tasks, in parallel).  The file is renamed into place at the end.
Memory is bounded by the dask blocks, not by the file sizes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import dask.array as da
import dask.threaded
import h5py
import numpy as np
import xarray as xr

from . import _compress, _spec, _stream, _transaction
from . import _conventions as conv
from . import _writer as wr
from .backend import open_loom
from .errors import LoomFormatError, LoomNameError, LoomWriteError, LoomxError, describe
from .graphs import graph_edges, graph_names

__all__ = ["append", "combine"]

BLOCK_BYTES = 64 * 2**20
"""Target raw size of one full-height block of columns."""

FillValues = Mapping[str, Any] | Literal["auto"] | None


# --------------------------------------------------------------------------- helpers


def _loom_vars(ds: xr.Dataset, dims: tuple[str, str], path: str) -> dict[str, str]:
    """Map the HDF5 path of every layer and attribute of ``ds`` to its variable name."""
    out: dict[str, str] = {}
    for key, var in ds.variables.items():
        name = str(key)
        if conv.parse_graph_var(name) is not None:
            continue
        space, raw = conv.split_qualified(name)
        if name == _spec.MATRIX and space is None:
            h5path = f"/{_spec.MATRIX}"
        elif space in (_spec.LAYERS, _spec.ROW_ATTRS, _spec.COL_ATTRS):
            h5path = f"/{space}/{raw}"
        elif var.ndim and var.dims[0] in dims:
            if key in ds.data_vars and var.dims == dims:
                h5path = f"/{_spec.LAYERS}/{raw}"
            else:
                space = _spec.ROW_ATTRS if var.dims[0] == dims[0] else _spec.COL_ATTRS
                h5path = f"/{space}/{raw}"
        elif key in ds.data_vars:
            found = f"data variable {name!r} has dims {var.dims}"
            raise LoomFormatError(f"{describe(path, '/')}: {found}; expected {dims}")
        else:
            continue
        out[h5path] = name
    return out


def _kind(h5path: str) -> str:
    if h5path == f"/{_spec.MATRIX}" or h5path.startswith(f"/{_spec.LAYERS}/"):
        return "layer"
    return h5path.split("/")[1]


def _is_text(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind in "OUST"


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or _is_text(a.dtype) != _is_text(b.dtype):
        return False
    if _is_text(a.dtype):
        return bool(np.array_equal(a.astype(str), b.astype(str)))
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind == b.dtype.kind == "f"))


def _fill(fill_values: FillValues, name: str, dtype: np.dtype, where: str, why: str) -> Any:
    """The fill value for ``name`` or a LoomFormatError saying why one is needed."""
    if fill_values == "auto":
        return "" if _is_text(dtype) else np.zeros((), dtype=dtype)[()]
    if fill_values is not None and name in fill_values:
        return fill_values[name]
    raise LoomFormatError(f"{where}: {why}; pass fill_values={{{name!r}: ...}} or 'auto'")


def _key_order(file_key: np.ndarray, other_key: np.ndarray, where: str) -> np.ndarray:
    """Positions in ``other_key`` of each value of ``file_key`` (both must be unique)."""
    file_key, other_key = (np.asarray(k) for k in (file_key, other_key))
    if _is_text(file_key.dtype) or _is_text(other_key.dtype):
        file_key, other_key = file_key.astype(str), other_key.astype(str)
    fs, os_ = np.argsort(file_key, kind="stable"), np.argsort(other_key, kind="stable")
    f_sorted, o_sorted = file_key[fs], other_key[os_]
    for values, side in ((f_sorted, "the target"), (o_sorted, "the new data")):
        dup = values[1:][values[1:] == values[:-1]]
        if len(dup):
            raise LoomFormatError(f"{where}: key values are not unique in {side}: {dup[:3]}")
    if len(f_sorted) != len(o_sorted) or not np.array_equal(f_sorted, o_sorted):
        missing = np.setdiff1d(f_sorted, o_sorted)[:3].tolist()
        extra = np.setdiff1d(o_sorted, f_sorted)[:3].tolist()
        raise LoomFormatError(
            f"{where}: key values differ; missing in the new data: {missing}, not in the "
            f"target: {extra}; expected the same set of values"
        )
    order = np.empty(len(fs), dtype=np.int64)
    order[fs] = os_
    return order


def _band_width(n_rows: int, itemsize: int, step: int) -> int:
    """Columns per full-height block: about BLOCK_BYTES, a multiple of ``step``."""
    width = BLOCK_BYTES // max(1, n_rows * itemsize)
    return max(step, width // step * step)


def _full_height(
    ds: xr.Dataset, dims: tuple[str, str], path: str, width: int | None = None
) -> xr.Dataset:
    """Layers as dask arrays in full-height column bands (row permutations stay in-block)."""
    out = {}
    for name, var in ds.data_vars.items():
        if var.dims != dims:
            continue
        step = (var.encoding.get("chunksizes") or (64, 64))[1]
        cols = width or _band_width(var.shape[0], var.dtype.itemsize, step)
        lazy = var.variable
        if lazy.chunks is None and not lazy._in_memory:  # read in bands: no rechunk
            lazy = lazy.chunk({dims[0]: -1, dims[1]: cols})
        data = wr.layer_data(path, f"/{name}", lazy)
        out[name] = (dims, da.asarray(data).rechunk((-1, cols), method="tasks"))
    return ds.assign(out) if out else ds


def _queue(
    jobs: list,
    dset: h5py.Dataset,
    arr: da.Array,
    col0: int,
    lock: threading.Lock,
    rows: np.ndarray | None = None,
) -> None:
    """Queue ``arr[rows]`` for columns ``col0:`` of ``dset``: the whole chunks in between
    are compressed in the dask tasks (in parallel, rows reordered while packing); partial
    chunks at either end, which another input shares, go through h5py's filters.

    With ``rows``, ``arr`` must be in full-height blocks."""
    chunks = dset.chunks or dset.shape
    plain = dset.compression != "gzip" or dset.shuffle or dset.fletcher32 or dset.scaleoffset
    level = None if plain else _compress.deflate_level("gzip", dset.compression_opts)
    k, width = arr.shape[1], chunks[1]
    head = min(k, -col0 % width)
    tail = k if col0 + k == dset.shape[1] else max(head, (col0 + k) // width * width - col0)
    for a, b, pack in ((0, head, False), (head, tail, level is not None), (tail, k, False)):
        if b > a:
            piece = _stream.aligned(arr[:, a:b], chunks, col0 + a)
            if pack:
                piece = _compress.packed(piece, dset, level, origin=(0, col0 + a), rows=rows)
            elif rows is not None:
                piece = piece[rows]
            jobs.append((piece, _stream.Sink(dset, lock, col0=col0 + a)))


def _run(jobs: list) -> None:
    if jobs:
        arrays = [arr for arr, _ in jobs]
        get = _stream.scheduler(arrays) or dask.threaded.get
        _stream.stream(arrays, [sink for _, sink in jobs], get)


# --------------------------------------------------------------------------- append plan


class _AppendPlan:
    def __init__(self, path: str, shape: tuple[int, int], m_new: int, legacy: bool) -> None:
        self.path = path
        self.shape = shape
        self.m_new = m_new
        self.legacy = legacy
        self.layers: list[tuple[str, Any, Any, np.dtype]] = []  # h5path, new, old fill, dtype
        self.rows: np.ndarray | None = None  # order of the new layers' rows (None: as they are)
        self.attrs: dict[str, np.ndarray] = {}
        self.graphs: dict[str, dict[str, np.ndarray]] = {}


def _plan_append(
    old: xr.Dataset,
    ds: xr.Dataset,
    path: str,
    key: str | None,
    fill_values: FillValues,
    dims: Sequence[str] | None,
) -> _AppendPlan:
    fdims = tuple(old.encoding["loom_dims"])
    dims = wr.resolve_dims(ds, dims, path)
    if f"/{_spec.MATRIX}" not in _loom_vars(old, fdims, path):
        raise LoomFormatError(f"{describe(path, '/matrix')}: missing; use to_loom to create")
    n, m = old[_spec.MATRIX].shape
    legacy = not _spec.uses_vlen_utf8(old.encoding.get("loom_spec_version", "3.0.0"))
    if ds.sizes.get(dims[0], 0) != n:
        found = f"found {ds.sizes.get(dims[0], 0)} rows ({dims[0]!r})"
        raise LoomFormatError(f"{describe(path, '/matrix')}: {found}; the file has {n}")
    m_new = int(ds.sizes.get(dims[1], 0))
    fvars, dvars = _loom_vars(old, fdims, path), _loom_vars(ds, dims, path)
    rows = None
    if key is not None:
        kpath = f"/{_spec.ROW_ATTRS}/{key}"
        if kpath not in fvars or kpath not in dvars:
            side = "the file" if kpath not in fvars else "the new data"
            raise LoomNameError(f"{describe(path, kpath)}: key {key!r} not found in {side}")
        order = _key_order(old[fvars[kpath]].values, ds[dvars[kpath]].values, describe(path, kpath))
        if not np.array_equal(order, np.arange(n)):
            rows = order
    body = ds if rows is None else _full_height(ds, dims, path)  # layers: reordered when packed
    ds = ds if rows is None else body.isel({dims[0]: rows})
    plan = _AppendPlan(path, (n, m), m_new, legacy)
    plan.rows = rows
    for h5path in sorted(set(fvars) | set(dvars)):
        kind = _kind(h5path)
        fname, dname = fvars.get(h5path), dvars.get(h5path)
        where = describe(path, h5path)
        if kind == _spec.ROW_ATTRS:
            if fname is None:
                raise LoomFormatError(
                    f"{where}: row attribute {dname!r} of the new data is not in the file; "
                    "append adds columns only (drop it, or add it first with to_loom(mode='a'))"
                )
            if dname is not None and not _same(old[fname].values, ds[dname].values):
                raise LoomFormatError(f"{where}: row attribute {dname!r} differs from the file")
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
    where = describe(plan.path, h5path)
    if dname is None:
        dtype = old[fname].dtype
        why = f"layer {fname!r} of the file is missing in the new data"
        value = _fill(fill_values, str(fname), dtype, where, why)
        plan.layers.append((h5path, value, None, dtype))
        return
    data = wr.layer_data(plan.path, h5path, ds[dname].variable)
    if fname is None:
        dtype = data.dtype
        why = f"layer {dname!r} of the new data is not in the file"
        plan.layers.append((h5path, data, _fill(fill_values, dname, dtype, where, why), dtype))
        return
    dtype = old[fname].dtype
    if not np.can_cast(data.dtype, dtype, "safe"):
        raise LoomFormatError(
            f"{where}: the new data has dtype {data.dtype}, the file {dtype}; cast it with "
            f".astype({str(dtype)!r}) first"
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
    where = describe(plan.path, h5path)
    m, k = plan.shape[1], plan.m_new
    present = old[fname].values if fname is not None else None
    new = np.asarray(ds[dname].values) if dname is not None else None
    if present is not None and new is not None:
        if present.shape[1:] != new.shape[1:] or _is_text(present.dtype) != _is_text(new.dtype):
            raise LoomFormatError(
                f"{where}: the file has dtype {present.dtype} and shape {present.shape}, the "
                f"new data {new.dtype} and {new.shape}; expected the same kind and extra dims"
            )
    elif present is None:
        why = f"column attribute {dname!r} of the new data is not in the file"
        value = _fill(fill_values, str(dname), new.dtype, where, why)
        present = np.full((m, *new.shape[1:]), value, dtype=object if _is_text(new.dtype) else None)
    else:
        why = f"column attribute {fname!r} of the file is missing in the new data"
        value = _fill(fill_values, str(fname), present.dtype, where, why)
        new = np.full((k, *present.shape[1:]), value, dtype=present.dtype)
    if _is_text(present.dtype):
        present, new = present.astype(object), new.astype(object)
    values = np.concatenate([present, new])
    plan.attrs[h5path] = wr.encode_attr(plan.path, h5path, values, plan.legacy)


def _plan_graphs(plan: _AppendPlan, old: xr.Dataset, ds: xr.Dataset) -> None:
    for name in graph_names(ds, _spec.ROW_GRAPHS):
        where = describe(plan.path, f"/{_spec.ROW_GRAPHS}/{name}")
        if name not in graph_names(old, _spec.ROW_GRAPHS) or not _same_edges(
            graph_edges(old, _spec.ROW_GRAPHS, name), graph_edges(ds, _spec.ROW_GRAPHS, name)
        ):
            raise LoomFormatError(f"{where}: row graph {name!r} differs from the file's")
    space, m = _spec.COL_GRAPHS, plan.shape[1]
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    for name in sorted(set(graph_names(old, space)) | set(graph_names(ds, space))):
        h5path = f"/{space}/{name}"
        wr.check_name(plan.path, h5path, name)
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


def _like(parent: h5py.Group, name: str, template: h5py.Dataset, width: int) -> h5py.Dataset:
    """A new ``(n, width)`` layer with ``template``'s storage settings (chunks, filters,
    fill value), growable along columns; loompy's settings when ``template`` is contiguous."""
    n = template.shape[0]
    if template.chunks is None:
        return _new_layer(parent, name, template.dtype, (n, width))
    space = h5py.h5s.create_simple((n, width), (n, h5py.h5s.UNLIMITED))
    dcpl = template.id.get_create_plist()
    dsid = h5py.h5d.create(parent.id, name.encode(), template.id.get_type(), space, dcpl=dcpl)
    return h5py.Dataset(dsid)


def _storage(dset: h5py.Dataset) -> tuple:
    fill = np.asarray(dset.fillvalue).tobytes()
    return (
        dset.dtype,
        dset.chunks,
        dset.compression,
        dset.compression_opts,
        dset.shuffle,
        dset.fletcher32,
        dset.scaleoffset,
        fill,
    )


def _raw_copy(src: h5py.Dataset, dst: h5py.Dataset, col0: int) -> bool:
    """Copy every stored chunk of ``src`` as it is into ``dst`` at column ``col0``.

    Only when the storage is identical and ``col0`` falls on a chunk edge; returns whether
    it copied.  Chunks ``src`` never stored stay unallocated (read as the same fill value).
    """
    if _storage(src) != _storage(dst) or src.chunks is None or col0 % src.chunks[1]:
        return False
    offsets: list[tuple[int, ...]] = []
    src.id.chunk_iter(lambda info: offsets.append(info.chunk_offset))
    for row, col in offsets:
        mask, raw = src.id.read_direct_chunk((row, col))
        dst.id.write_direct_chunk((row, col + col0), raw, mask)
    return True


def _copy_columns(src: h5py.Dataset, dst: h5py.Dataset, col0: int) -> None:
    """Copy ``src`` into ``dst`` at column ``col0``: raw chunks, else in column bands."""
    if _raw_copy(src, dst, col0):
        return
    n, m = src.shape
    step = _band_width(n, src.dtype.itemsize, (dst.chunks or (1, 64))[1])
    for c in range(0, m, step):
        stop = min(c + step, m)
        dst[:, col0 + c : col0 + stop] = src[:, c:stop]


def _new_layer(
    parent: h5py.Group, name: str, dtype: np.dtype, shape: tuple[int, int]
) -> h5py.Dataset:
    n, m = shape
    return parent.create_dataset(
        name,
        shape=shape,
        dtype=dtype,
        chunks=(max(1, min(64, n)), max(1, min(64, m))),
        maxshape=(n, None),
        compression="gzip",
        compression_opts=_spec.LOOMPY_COMPRESSION_LEVEL,
    )


def _write_attr(group: h5py.Group, name: str, values: np.ndarray) -> None:
    dtype = conv.STRING_DTYPE if values.dtype.kind == "O" else values.dtype
    kwargs: dict[str, Any] = {}
    if values.size:
        kwargs = {"chunks": True, "compression": "gzip", "compression_opts": 2}
    group.create_dataset(name, data=values, dtype=dtype, **kwargs)


def _write_append(plan: _AppendPlan, txn: _transaction.Transaction) -> None:
    """Write every object complete under its staged (temporary) name."""
    f = txn.file
    n, m = plan.shape
    width = m + plan.m_new
    lock = threading.Lock()
    jobs: list = []
    for h5path, data, old_fill, dtype in plan.layers:
        parent, tmp = txn.stage(h5path)
        if old_fill is None:
            dset = _like(parent, tmp, f[h5path], width)
            _copy_columns(f[h5path], dset, 0)
        else:
            dset = _new_layer(parent, tmp, dtype, (n, width))
        step = dset.chunks or (64, 64)
        parts = [(data, m, plan.m_new)]
        if old_fill is not None:
            parts.append((old_fill, 0, m))
        for part, col0, cols in parts:
            if not cols:
                continue
            rows = plan.rows if part is data else None
            if not isinstance(part, da.Array | np.ndarray):
                band = _band_width(n, np.dtype(dtype).itemsize, step[1])
                part, rows = da.full((n, cols), part, dtype=dtype, chunks=(-1, band)), None
            _queue(jobs, dset, da.asarray(part).astype(dtype), col0, lock, rows=rows)
    _run(jobs)
    for h5path, values in plan.attrs.items():
        _write_attr(*txn.stage(h5path), values)
    for h5path, edges in plan.graphs.items():
        parent, tmp = txn.stage(h5path)
        group = parent.create_group(tmp)
        for part in conv.GRAPH_PARTS:
            group.create_dataset(part, data=edges[part])


def _execute_append(plan: _AppendPlan) -> None:
    with _transaction.transaction(plan.path, what="append") as txn:
        _write_append(plan, txn)


def append(
    path: str | os.PathLike[str],
    ds: xr.Dataset,
    *,
    key: str | None = None,
    fill_values: FillValues = None,
    dims: Sequence[str] | None = None,
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
    unconnected vertices).  Every layer is rebuilt under a temporary name (old chunks
    copied raw) and swapped in after an fsync, so the file grows by the old layers' size
    until ``h5repack``.  A Dataset opened on the file before the append still has the old
    shape (attributes it has not loaded yet would read the new length): reopen the file.

    Examples
    --------
    >>> more = loomx.open_loom("batch2.loom")                       # doctest: +SKIP
    >>> loomx.append("atlas.loom", more, key="Accession")           # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        wr.to_loom(ds, path, mode="w", dims=dims)
        return
    _transaction.recover_pending(path)
    old = open_loom(path, chunks=None)
    try:
        plan = _plan_append(old, ds, path, key, fill_values, dims)
    finally:
        old.close()
    _execute_append(plan)


# --------------------------------------------------------------------------- combine


def combine(
    files: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    key: str | None = None,
    batch_size: int | None = None,
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
        Columns per dask block; default about 64 MiB of full-height columns.

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
    if os.path.exists(out) and any(_transaction.same_file(p, out) for p in paths):
        raise LoomFormatError(f"{out!r}: is also an input; write to a new file")
    opened = [open_loom(p, chunks=None) for p in paths]
    tmp = wr.temp_path(out, "combine")
    try:
        combined, inputs = _combined(paths, opened, key, batch_size)
        plan = wr.plan_dataset(combined, tmp, "w", conv.DEFAULT_DIMS, None)
        layers, plan.layers = plan.layers, []
        wr.execute(plan)
        _write_layers(tmp, layers, inputs, combined.sizes)
        wr.move_into_place(tmp, out)
    except LoomxError:
        raise
    except OSError as exc:
        raise LoomWriteError(f"{out!r}: combine failed: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        for ds in opened:
            ds.close()


def _write_layers(path: str, layers: list, inputs: list, sizes: Mapping[str, int]) -> None:
    """Write the layers into the new file ``path``: each input's stored chunks copied raw
    where storage and column offset allow it, else its (permuted) blocks streamed."""
    n, total = (sizes[d] for d in conv.DEFAULT_DIMS)
    lock = threading.Lock()
    jobs: list = []
    with h5py.File(path, "r+") as f, contextlib.ExitStack() as stack:
        sources = [stack.enter_context(h5py.File(p, "r")) for p, *_ in inputs]
        for layer in layers:
            parent_path, _, name = layer.h5path.rpartition("/")
            parent = f.require_group(parent_path or "/")
            template, dtype = sources[0][layer.h5path], layer.data.dtype
            if template.dtype == dtype:
                dset = _like(parent, name, template, total)
            else:
                dset = _new_layer(parent, name, dtype, (n, total))
            for src, (_, col0, order, part) in zip(sources, inputs, strict=True):
                if order is None and _raw_copy(src[layer.h5path], dset, col0):
                    continue
                data = da.asarray(part[layer.var_name].data).astype(dtype)
                _queue(jobs, dset, data, col0, lock, rows=order)
        _run(jobs)


def _combined(
    paths: list[str], opened: list[xr.Dataset], key: str | None, batch_size: int | None
) -> tuple[xr.Dataset, list]:
    """The lazy concatenation of ``opened`` along columns, rows in the first file's order."""
    dims = conv.DEFAULT_DIMS
    first, kpath = opened[0], f"/{_spec.ROW_ATTRS}/{key}"
    vars0 = _loom_vars(first, dims, paths[0])
    want = {h: v for h, v in vars0.items() if _kind(h) != _spec.ROW_ATTRS}
    n, offset = first.sizes[dims[0]], 0
    parts, graphs, inputs = [], {}, []
    for p, ds in zip(paths, opened, strict=True):
        found = _loom_vars(ds, dims, p)
        cols = {h: v for h, v in found.items() if _kind(h) != _spec.ROW_ATTRS}
        if set(cols) != set(want):
            diff = sorted(set(cols) ^ set(want))
            raise LoomFormatError(
                f"{p!r}: layers or column attributes differ from the first "
                f"file {paths[0]!r}: {diff}"
            )
        if ds.sizes[dims[0]] != n:
            raise LoomFormatError(f"{p!r}: has {ds.sizes[dims[0]]} rows, {paths[0]!r} has {n}")
        if key is not None and kpath not in found:
            raise LoomNameError(f"{describe(p, kpath)}: key {key!r} not found")
        for name in graph_names(ds, _spec.COL_GRAPHS):
            a, b, w = graph_edges(ds, _spec.COL_GRAPHS, name)
            graphs.setdefault(name, []).append((np.asarray(a) + offset, np.asarray(b) + offset, w))
        gvars = [v for v in ds.variables if conv.parse_graph_var(str(v)) is not None]
        rows = [v for h, v in found.items() if _kind(h) == _spec.ROW_ATTRS]
        body = _full_height(ds.drop_vars(gvars), dims, p, batch_size)
        order = None
        if key is not None and ds is not first:
            order = _key_order(first[vars0[kpath]].values, ds[found[kpath]].values, repr(p))
            order = None if np.array_equal(order, np.arange(n)) else order
        renames = {found[h]: want[h] for h in cols if found[h] != want[h]}
        body = body.drop_vars(rows).rename(renames)
        parts.append(body if order is None else body.isel({dims[0]: order}))
        inputs.append((p, offset, order, body))  # layers are written from body and order
        offset += ds.sizes[dims[1]]
    combined = xr.concat(parts, dim=dims[1], data_vars="minimal", coords="minimal", join="exact")
    keep = [v for h, v in vars0.items() if _kind(h) == _spec.ROW_ATTRS]
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

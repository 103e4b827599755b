"""Write xarray Datasets as Loom files: complete new files and write-back into existing ones.

``mode="w"`` writes a complete spec 3.0.0 file under a temporary name next to the target,
fsyncs it and renames it into place.  ``mode="a"`` writes what is new or differs from the disk
into an existing file, following its spec version: new data first goes to a spool file next
to the target (the target is not held for writing while blocks are computed), then one ``r+``
transaction copies each object in under a temporary link and commits them all at once
(see ``_transaction``).
Everything is validated before the first byte is written; layers are computed block by
block, and gzip layers are compressed into finished HDF5 chunks in the same tasks (threads,
processes or workers in parallel, see ``_compress``); the one process that holds the output
open only writes the chunks' bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading
import uuid
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import dask
import dask.array as da
import dask.threaded
import h5py
import numpy as np
import xarray as xr
from xarray.core import indexing

from . import _compress, _spec, _stream, _transaction
from . import _conventions as conv
from .errors import LoomFormatError, LoomNameError, LoomWriteError, LoomxError, describe
from .graphs import check_edges, induced_edges

__all__ = [
    "check_name",
    "encode_attr",
    "execute",
    "layer_data",
    "move_into_place",
    "plan_dataset",
    "resolve_dims",
    "temp_path",
    "to_loom",
]

TMP_TAG = _spec.TEMPORARY_TAG
"""Marks temporary files and links; the owner's pid follows, so stale ones can be removed."""

_ATTR_SPACES = {_spec.ROW_ATTRS: 0, _spec.COL_ATTRS: 1}
_GRAPH_SPACES = {_spec.ROW_GRAPHS: 0, _spec.COL_GRAPHS: 1}


# --------------------------------------------------------------------------- plan


@dataclasses.dataclass
class _Layer:
    h5path: str
    var_name: str
    data: Any  # numpy or dask array, dims (row, col)
    compare: bool = False  # mode "a": skip the commit when every block equals the disk


class _Plan:
    """Everything to write, validated and encoded; opaque to ``dask.delayed`` on purpose."""

    def __init__(self, path: str, mode: str, legacy: bool, shape: tuple[int, int]) -> None:
        self.path = path
        self.mode = mode
        self.legacy = legacy
        self.shape = shape
        self.layers: list[_Layer] = []
        self.arrays: dict[str, np.ndarray] = {}  # attributes (and 3.0 globals) by HDF5 path
        self.graphs: dict[str, dict[str, np.ndarray]] = {}  # {h5path: {"a": .., "b": .., "w": ..}}
        self.root_attrs: dict[str, np.ndarray] = {}  # legacy globals
        self.layer_chunks: tuple[int, int] = (64, 64)
        self.compression: str | None = "gzip"
        self.compression_opts: int | None = 2


def _fail(
    path: str, h5path: str, message: str, cls: type[LoomxError] = LoomFormatError
) -> LoomxError:
    return cls(f"{describe(path, h5path)}: {message}")


def check_name(path: str, h5path: str, name: str) -> None:
    """Refuse a name that cannot be an HDF5 link (LoomNameError naming ``h5path``)."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise _fail(
            path,
            h5path,
            f"name {name!r} cannot be stored as an HDF5 link; expected a non-empty name "
            "without '/' (rename the variable)",
            cls=LoomNameError,
        )


def resolve_dims(ds: xr.Dataset, dims: Sequence[str] | None, path: str) -> tuple[str, str]:
    """Explicit dims, else the dims the Dataset was opened with, else those of ``matrix``."""
    if dims is None:
        matrix = ds.data_vars.get(_spec.MATRIX)
        candidates = [
            ds.encoding.get("loom_dims"),
            matrix.dims if matrix is not None and matrix.ndim == 2 else None,
            conv.DEFAULT_DIMS,
        ]
        found = [tuple(c) for c in candidates if c is not None]
        dims = next((c for c in found if set(c) <= set(ds.dims)), found[0])
    dims = tuple(str(d) for d in dims)
    if len(dims) != 2 or dims[0] == dims[1]:
        raise _fail(path, "/", f"found dims {dims!r}; expected two distinct names (rows, cols)")
    return dims  # type: ignore[return-value]


def _from_target(var: xr.Variable, path: str, h5path: str) -> bool:
    """Whether the variable's encoding says it was read from ``path`` at ``h5path``."""
    source = var.encoding.get("source")
    return var.encoding.get("loom_path") == h5path and _transaction.same_file(source, path)


def encode_attr(path: str, h5path: str, values: Any, legacy: bool) -> np.ndarray:
    """Attribute values as stored: numbers as they are, strings per the spec version."""
    arr = np.asarray(values)
    if arr.dtype.kind == "O" and (bad := [v for v in arr.flat if not isinstance(v, str | bytes)]):
        found = f"found an object array holding {type(bad[0]).__name__} ({bad[0]!r}); "
        raise _fail(path, h5path, found + "expected numbers or strings (fill missing values)")
    if arr.dtype.kind not in "biufUSTO":
        raise _fail(path, h5path, f"found dtype {arr.dtype}; expected numbers, bools or strings")
    return conv.encode_attr_values(arr, legacy=legacy)


def _encode_global(path: str, h5path: str, value: Any, legacy: bool) -> np.ndarray:
    value = value.decode("utf-8") if isinstance(value, bytes) else value
    if isinstance(value, str) and legacy:
        return np.array(value.encode("ascii", "xmlcharrefreplace"))
    if isinstance(value, str):
        return np.array(value, dtype=conv.STRING_DTYPE)
    if isinstance(value, bool | int | float | np.number | np.bool_ | list | tuple | np.ndarray):
        return encode_attr(path, h5path, value, legacy)
    message = f"found a global attribute of type {type(value).__name__}; expected a str, "
    raise _fail(path, h5path, message + "number, bool or an array of those")


def layer_data(path: str, h5path: str, var: xr.Variable) -> Any:
    """The layer's data as a numpy or dask array (lazily indexed arrays become dask)."""
    if var.dtype.kind == "b":
        raise _fail(path, h5path, "found dtype bool; cast the layer with .astype('uint8')")
    if not _spec.is_layer_dtype(var.dtype):
        allowed = ", ".join(str(t) for t in _spec.LAYER_DTYPES)
        raise _fail(path, h5path, f"found dtype {var.dtype}; expected one of {allowed}")
    if var.chunks is None and not var._in_memory:
        var = var.chunk(var.encoding.get("preferred_chunks") or {})
    return var.data


def _graph(
    path: str, space: str, graph: str, parts: dict[str, xr.Variable], n: int, in_place: bool
) -> tuple[str, dict[str, np.ndarray] | None]:
    """Check one graph and map its edges to the current rows or columns.

    Written back in place, a graph read from a legacy ``/col_edges`` group stays there, and
    one still reading its own edge list unchanged gives None (nothing to write).
    """
    h5path = f"/{space}/{graph}"
    legacy_path = f"/{_spec.LEGACY_GRAPH_GROUPS[space]}/{graph}"
    if in_place and "a" in parts and _from_target(parts["a"], path, f"{legacy_path}/a"):
        h5path = legacy_path
    check_name(path, h5path, graph)
    untouched = [
        in_place and p in parts and _pristine(parts[p], path, f"{h5path}/{p}") for p in "abw"
    ]
    vertex = parts.get("vertex")
    if all(untouched) and (vertex is None or np.array_equal(vertex.values, np.arange(n))):
        return h5path, None
    names = conv.graph_var_names(space, graph)
    missing = [names[p] for p in conv.GRAPH_PARTS if p not in parts]
    if missing:
        raise _fail(path, h5path, f"missing graph variables {missing}")
    a, b, w = (np.asarray(parts[p].values) for p in conv.GRAPH_PARTS)
    if not a.ndim == b.ndim == w.ndim == 1 or not len(a) == len(b) == len(w):
        found = [x.shape for x in (a, b, w)]
        raise _fail(path, h5path, f"a, b, w have shapes {found}; expected equal 1-D")
    for p, v in (("a", a), ("b", b), ("w", w)):
        whole = v.dtype.kind == "f" and bool(np.all(np.isfinite(v) & (v == np.round(v))))
        if v.dtype.kind not in ("biuf" if p == "w" else "iu") and not whole:
            expected = "floats" if p == "w" else "integers"
            raise _fail(path, f"{h5path}/{p}", f"found dtype {v.dtype}; expected {expected}")
    a, b = (v.astype(np.int64) if v.dtype.kind == "f" else v for v in (a, b))
    w = w if w.dtype.kind == "f" else w.astype(np.float64)
    ids = np.arange(n, dtype=np.int64) if vertex is None else np.asarray(vertex.values)
    if ids.shape != (n,) or ids.dtype.kind not in "iu" or (n and ids.min() < 0):
        raise _fail(
            path,
            h5path,
            f"{names['vertex']}: found shape {ids.shape} and dtype {ids.dtype}; expected "
            f"{n} non-negative integer vertex numbers on the axis",
        )
    bound = None if vertex is None else vertex.encoding.get("loom_n_vertices")
    identity = np.array_equal(ids, np.arange(n))
    if bound is None and (identity or not any("source" in v.encoding for v in parts.values())):
        bound = n if identity else int(ids.max(initial=-1)) + 1
    check_edges(
        a, b, int(bound) if bound is not None else np.iinfo(np.int64).max, describe(path, h5path)
    )
    if identity and (not len(a) or max(a.max(), b.max()) < n):
        return h5path, {"a": a, "b": b, "w": w}  # as they are: order, duplicates, dtypes
    a2, b2, w2 = induced_edges(a, b, w, ids)
    return h5path, {"a": np.asarray(a2), "b": np.asarray(b2), "w": np.asarray(w2, np.float64)}


def plan_dataset(
    ds: xr.Dataset, path: str, mode: str, dims: Sequence[str] | None, target: h5py.File | None
) -> _Plan:
    """Validate ``ds`` completely and turn it into what to write (nothing touches disk).

    With ``target`` (the existing file, mode "a"), only what differs from it is kept.
    """
    dims = resolve_dims(ds, dims, path)
    legacy = root_globals = False
    shape: list[int | None] = [ds.sizes.get(d) for d in dims]
    if target is not None:
        legacy = not _spec.uses_vlen_utf8(_file_version(target))
        # globals stay where the file keeps them: root attributes when it has no /attrs
        root_globals = not isinstance(target.get(_spec.GLOBAL_ATTRS), h5py.Group)
        disk = target.get(_spec.MATRIX)
        if isinstance(disk, h5py.Dataset) and disk.ndim == 2:
            if any(s not in (None, d) for s, d in zip(shape, disk.shape, strict=True)):
                found = dict(zip(dims, shape, strict=True))
                message = f"found sizes {found}; the file has shape {disk.shape} (use mode='w')"
                raise _fail(path, f"/{_spec.MATRIX}", message)
            shape = list(disk.shape)
    n_rows, n_cols = (0 if s is None else int(s) for s in shape)
    plan = _Plan(path, mode, legacy, (n_rows, n_cols))

    graph_parts: dict[tuple[str, str], dict[str, xr.Variable]] = {}
    seen: dict[str, Hashable] = {}
    for key, var in ds.variables.items():
        name = str(key)
        parsed = conv.parse_graph_var(name)
        if parsed is not None:
            if parsed[2] != "edge":
                graph_parts.setdefault(parsed[:2], {})[parsed[2]] = var
            continue
        space, raw = conv.split_qualified(name)
        is_data = key in ds.data_vars
        if name == _spec.MATRIX and space is None:
            space, kind = None, "matrix"
        elif space == _spec.LAYERS:
            kind = "layer"
        elif space in _ATTR_SPACES:
            kind = "attr"
        elif var.ndim and var.dims[0] in dims:
            if is_data and var.dims == dims:
                space, kind = _spec.LAYERS, "layer"
            else:
                space = _spec.ROW_ATTRS if var.dims[0] == dims[0] else _spec.COL_ATTRS
                kind = "attr"
        elif is_data:
            expected = f"expected {dims} or a first dim in {dims} (drop it or use ds.attrs)"
            raise _fail(path, "/", f"data variable {name!r} has dims {var.dims}; {expected}")
        else:
            continue  # coordinates of extra dims (e.g. field names of an embedding)
        h5path = f"/{_spec.MATRIX}" if kind == "matrix" else f"/{space}/{raw}"
        check_name(path, h5path, raw)
        if h5path in seen:
            raise _fail(
                path,
                h5path,
                f"variables {seen[h5path]!r} and {name!r} both map here; rename one",
                cls=LoomNameError,
            )
        seen[h5path] = key
        if kind in ("matrix", "layer"):
            if var.dims != dims:
                raise _fail(path, h5path, f"found dims {var.dims}; expected {dims}")
            plan.layers.append(_Layer(h5path, name, layer_data(path, h5path, var)))
        else:
            axis = _ATTR_SPACES[space]
            if not var.ndim or var.dims[0] != dims[axis]:
                expected = f"expected the first dim to be {dims[axis]!r}"
                raise _fail(path, h5path, f"found dims {var.dims}; {expected}")
            if target is None or not _pristine(var, path, h5path):
                plan.arrays[h5path] = encode_attr(path, h5path, var.values, legacy)

    for (space, graph), parts in sorted(graph_parts.items()):
        n = plan.shape[_GRAPH_SPACES[space]]
        h5path, edges = _graph(path, space, graph, parts, n, target is not None)
        if edges is not None:
            plan.graphs[h5path] = edges

    for key, value in ds.attrs.items():
        name = str(key)
        if name == _spec.VERSION_KEY:
            continue  # new files say 3.0.0; existing files keep their own version
        h5path = f"/ (attribute {name})" if root_globals else f"/{_spec.GLOBAL_ATTRS}/{name}"
        check_name(path, h5path, name)
        encoded = _encode_global(path, h5path, value, legacy)
        if root_globals:
            plan.root_attrs[name] = encoded
        else:
            plan.arrays[f"/{_spec.GLOBAL_ATTRS}/{name}"] = encoded

    if mode == "w" and not any(layer.h5path == f"/{_spec.MATRIX}" for layer in plan.layers):
        raise _fail(
            path,
            f"/{_spec.MATRIX}",
            f"the Dataset has no {_spec.MATRIX!r} variable; the spec requires /matrix "
            "(rename the main layer to 'matrix')",
        )
    if target is not None:
        _drop_unchanged(plan, ds, target)
    return plan


# --------------------------------------------------------------------------- mode "a"


def _file_version(f: h5py.File) -> str:
    raw = f.attrs.get(_spec.VERSION_KEY)
    if raw is None:
        obj = f.get(f"/{_spec.GLOBAL_ATTRS}/{_spec.VERSION_KEY}")
        raw = obj[()] if isinstance(obj, h5py.Dataset) else None
    return "0.0.0" if raw is None else _spec.version_from_raw(raw)


def _disk_values(obj: h5py.Dataset, legacy: bool) -> np.ndarray:
    raw = np.asarray(obj[()])
    if raw.dtype.names:
        raw, _ = conv.compound_to_array(raw)
    if conv.is_string_dtype(obj.dtype):
        return conv.decode_strings(raw, fixed_length=raw.dtype.kind == "S", legacy=legacy)
    return raw


def _equal(disk: np.ndarray, new: np.ndarray, legacy: bool) -> bool:
    new = np.asarray(new)
    if new.dtype.kind in "OS":
        new = conv.decode_strings(new, fixed_length=new.dtype.kind == "S", legacy=legacy)
        return disk.dtype.kind == "O" and disk.shape == new.shape and bool(np.all(disk == new))
    if disk.dtype != new.dtype or disk.shape != new.shape:
        return False
    return bool(np.array_equal(disk, new, equal_nan=new.dtype.kind == "f"))


_ADAPTERS = ("ImplicitToExplicitIndexingAdapter", "CopyOnWriteArray", "MemoryCachedArray")


def _backend_array(data: Any) -> Any:
    """The backend array that ``data`` reads in full and unchanged, else None.

    Follows a dask array made by ``from_array`` (its graph has no other layer) and
    xarray's lazy adapters; a lazily indexed array must select everything.
    """
    if isinstance(data, da.Array):
        layers = getattr(data.__dask_graph__(), "layers", {})
        source = f"original-{data.name}"
        if set(layers) != {data.name, source}:
            return None
        data = dict(layers[source]).get(source)
        data = getattr(data, "value", data) if type(data).__name__ == "DataNode" else data
    for _ in range(8):
        if isinstance(data, indexing.LazilyIndexedArray):
            if data.shape != data.array.shape:
                return None
            for k, size in zip(data.key.tuple, data.array.shape, strict=True):
                if not isinstance(k, slice) or k.indices(size) != (0, size, 1):
                    return None
        elif type(data).__name__ not in _ADAPTERS:
            return data
        data = data.array
    return None


def _pristine(var: xr.Variable, path: str, h5path: str) -> bool:
    """Whether a lazily read variable still is exactly the data at ``h5path`` in ``path``."""
    if not _from_target(var, path, h5path):
        return False
    backend = _backend_array(var._data)
    store = getattr(backend, "store", None)
    info = getattr(backend, "info", None) or getattr(getattr(backend, "attr", None), "info", None)
    return getattr(info, "h5path", None) == h5path and _transaction.same_file(
        getattr(store, "path", None), path
    )


def _drop_unchanged(plan: _Plan, ds: xr.Dataset, f: h5py.File) -> None:
    legacy = plan.legacy
    kept = []
    for layer in plan.layers:
        obj = f.get(layer.h5path)
        if isinstance(obj, h5py.Dataset) and obj.shape == plan.shape:
            if _pristine(ds.variables[layer.var_name], plan.path, layer.h5path):
                continue
            layer.compare = obj.dtype == layer.data.dtype
        kept.append(layer)
    plan.layers = kept
    for h5path in list(plan.arrays):
        obj = f.get(h5path)
        if isinstance(obj, h5py.Dataset) and h5path.startswith(f"/{_spec.GLOBAL_ATTRS}/"):
            if _same_value(obj[()], plan.arrays[h5path], legacy):
                del plan.arrays[h5path]
        elif isinstance(obj, h5py.Dataset):
            try:
                disk = _disk_values(obj, legacy)
            except (TypeError, UnicodeDecodeError):
                continue
            if _equal(disk, plan.arrays[h5path], legacy):
                del plan.arrays[h5path]
    for h5path, edges in list(plan.graphs.items()):
        grp = f.get(h5path)
        if isinstance(grp, h5py.Group) and all(
            isinstance(grp.get(p), h5py.Dataset) and np.array_equal(grp[p][()], edges[p])
            for p in conv.GRAPH_PARTS
        ):
            del plan.graphs[h5path]
    for name in list(plan.root_attrs):
        if name in f.attrs and _same_value(f.attrs[name], plan.root_attrs[name], legacy):
            del plan.root_attrs[name]


def _same_value(disk: Any, new: Any, legacy: bool) -> bool:
    """Global attributes compare as the reader decodes them (``np.uint8(1) == 1``)."""
    try:
        disk, new = (conv.decode_value(v, legacy=legacy) for v in (disk, new))
    except UnicodeDecodeError:
        return False
    if isinstance(disk, str) or isinstance(new, str):
        return type(disk) is type(new) and disk == new
    return np.shape(disk) == np.shape(new) and bool(np.array_equal(disk, new))


def _commit(plan: _Plan, spool_path: str, objects: list[str], client: Any) -> None:
    """Copy ``objects`` from the spool into the target and commit them all at once."""
    parents = {h5path.rpartition("/")[0] or "/" for h5path in objects}
    commit = _transaction.transaction(plan.path, what="write-back", client=client, groups=parents)
    with (
        commit as txn,
        h5py.File(spool_path, "r") as spool,
    ):
        for h5path in objects:
            parent, tmp = txn.stage(h5path)
            parent.copy(spool[h5path], parent, name=tmp)
        for name, value in plan.root_attrs.items():
            txn.set_root_attr(name, value)


# --------------------------------------------------------------------------- streaming


def _create_array(group: h5py.Group, name: str, values: np.ndarray, plan: _Plan) -> None:
    dtype = conv.STRING_DTYPE if values.dtype.kind == "O" else values.dtype
    kwargs: dict[str, Any] = {}
    if plan.compression and values.ndim >= 1 and values.size > 0:
        kwargs = {
            "chunks": True,
            "compression": plan.compression,
            "compression_opts": plan.compression_opts,
            "maxshape": (values.shape[0], *([None] * (values.ndim - 1))),
        }
    group.create_dataset(name, data=values, dtype=dtype, **kwargs)


def _write_content(f: h5py.File, plan: _Plan, reference: h5py.File | None, client: Any) -> list:
    """Write the plan's objects into ``f``; return the HDF5 paths that must be committed."""
    for h5path, values in plan.arrays.items():
        parent, _, name = h5path.rpartition("/")
        _create_array(f.require_group(parent or "/"), name, values, plan)
    for h5path, edges in plan.graphs.items():
        grp = f.require_group(h5path)
        for p in conv.GRAPH_PARTS:
            grp.create_dataset(p, data=edges[p])
    lock = threading.Lock()
    lazy: list[tuple[da.Array, _stream.Sink]] = []
    sinks = []
    level = _compress.deflate_level(plan.compression, plan.compression_opts)
    n, m = plan.shape
    chunks = (max(1, min(plan.layer_chunks[0], n)), max(1, min(plan.layer_chunks[1], m)))
    for layer in plan.layers:
        dset = f.create_dataset(
            layer.h5path,
            shape=(n, m),
            dtype=layer.data.dtype,
            chunks=chunks,
            maxshape=(n, None),
            compression=plan.compression,
            compression_opts=plan.compression_opts,
        )
        ref = reference[layer.h5path] if layer.compare and reference is not None else None
        sink = _stream.Sink(dset, lock, ref)
        sinks.append((layer, sink))
        data = layer.data
        if level is not None and not isinstance(data, da.Array) and data.size:
            data = _compress.in_blocks(data, dset.chunks)
        if not isinstance(data, da.Array):
            sink[(slice(None), slice(None))] = data
        elif data.size and level is not None:
            aligned = _stream.aligned(data, dset.chunks)
            lazy.append((_compress.packed(aligned, dset, level, keep_raw=ref is not None), sink))
        elif data.size:
            lazy.append((_stream.aligned(data, dset.chunks), sink))
    if lazy:
        arrays = [arr for arr, _ in lazy]
        get = _stream.scheduler(arrays) or dask.threaded.get
        _stream.stream(arrays, [s for _, s in lazy], get, client)
    skip = {layer.h5path for layer, sink in sinks if sink.equal}
    written = [layer.h5path for layer in plan.layers if layer.h5path not in skip]
    return written + list(plan.arrays) + list(plan.graphs)


# --------------------------------------------------------------------------- execution


def temp_path(path: str, kind: str) -> str:
    """A new temporary file name next to ``path``; removes those of writers that are gone."""
    folder, base = os.path.split(os.path.abspath(path))
    for stale in os.listdir(folder):
        prefix = f".{base}{TMP_TAG}"
        if stale.startswith(prefix) and not _transaction.owner_alive(stale[len(prefix) :]):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, stale))
    return os.path.join(folder, f".{base}{TMP_TAG}{os.getpid()}-{kind}-{uuid.uuid4().hex[:8]}")


def move_into_place(tmp: str, path: str) -> None:
    """Rename the finished file ``tmp`` to ``path`` durably (fsynced before and after),
    keeping the permissions of a file it replaces."""
    if os.path.exists(path):
        shutil.copymode(path, tmp)
    _transaction.fsync(tmp)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        _transaction.fsync(os.path.dirname(os.path.abspath(path)))


def execute(plan: _Plan) -> None:
    """Write a plan, on the current dask scheduler (a distributed client's workers too)."""
    get = _stream.scheduler()
    if get is None or _stream.scheduler_kind(get) != "distributed":
        return _execute_with(plan, None)
    try:
        from distributed import get_worker, worker_client

        get_worker()
    except ValueError:
        return _execute_with(plan, get.__self__)
    with worker_client() as client:  # running as a task (compute=False): secede meanwhile
        return _execute_with(plan, client)


def _execute_with(plan: _Plan, client: Any) -> None:
    path = plan.path
    tmp = temp_path(path, "new" if plan.mode == "w" else "spool")
    try:
        with h5py.File(tmp, "w") as f:
            if plan.mode == "w":
                for group in _spec.REQUIRED_GROUPS_3:
                    f.require_group(group)
                f[_spec.GLOBAL_ATTRS].create_dataset(
                    _spec.VERSION_KEY, data=_spec.LOOM_SPEC_VERSION, dtype=conv.STRING_DTYPE
                )
                _write_content(f, plan, None, client)
                objects: list[str] = []
            else:
                compare = any(layer.compare for layer in plan.layers)
                with h5py.File(path, "r") if compare else contextlib.nullcontext() as ref:
                    objects = _write_content(f, plan, ref, client)
        if plan.mode == "w":
            move_into_place(tmp, path)
        elif objects or plan.root_attrs:
            _commit(plan, tmp, objects, client)
    except LoomxError:
        raise
    except OSError as exc:
        raise LoomWriteError(f"{path!r}: writing failed: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _check_storage(chunks: Any, compression: str | None, compression_opts: Any) -> None:
    """Refuse storage options h5py would reject, before anything is written."""
    if compression not in (None, "gzip", "lzf"):
        raise ValueError(f"compression must be None, 'gzip' or 'lzf'; got {compression!r}")
    level = compression_opts
    if (
        compression == "gzip"
        and level is not None
        and not (isinstance(level, int | np.integer) and 0 <= level <= 9)
    ):
        raise ValueError(f"gzip compression_opts must be an int from 0 to 9; got {level!r}")
    if len(tuple(chunks)) != 2 or not all(
        isinstance(c, int | np.integer) and c > 0 for c in chunks
    ):
        raise ValueError(f"chunks must be two positive ints; got {chunks!r}")


def to_loom(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    mode: Literal["w", "a"] = "w",
    compute: bool = True,
    dims: Sequence[str] | None = None,
    chunks: tuple[int, int] = (_spec.LOOMPY_LAYER_CHUNKS, _spec.LOOMPY_LAYER_CHUNKS),
    compression: str | None = "gzip",
    compression_opts: int | None = _spec.LOOMPY_COMPRESSION_LEVEL,
) -> Any:
    """Write a Dataset as a Loom file.

    Parameters
    ----------
    ds
        Dataset in loomx's model: ``matrix`` and other ``(row, col)`` data variables are
        layers, variables whose first dim is ``row``/``col`` are attributes, graph
        side-variables (``col_graphs:KNN``, ``...:a``, ``...:b``, ``...:w``) are graphs and
        ``ds.attrs`` are global attributes.
    path
        Output file.
    mode
        ``"w"``: write a complete spec 3.0.0 file (atomically replacing any existing one).
        ``"a"``: write into an existing Loom file, following its spec version, only what is
        new or differs from the disk; may be the file ``ds`` was opened from, while ``ds`` is
        alive.  Everything is committed at once: killed at any moment, the file reads as
        all old or all new (see :func:`loomx.recover`).  A replaced object's old space is
        not reclaimed (``h5repack`` does that).  A missing file is created as with ``"w"``.
    compute
        False: validate now and return a ``dask.delayed`` object whose ``compute()`` writes.
    dims
        Names of the (row, col) dims; default ``ds.encoding["loom_dims"]``, then the dims of
        ``matrix``, then ``("row", "col")``.
    chunks, compression, compression_opts
        HDF5 storage of new layers (loompy's (64, 64), gzip level 2 by default); layers are
        growable along columns like loompy's.  Attributes use the same compression.

    Returns
    -------
    None, or a ``dask.delayed.Delayed`` when ``compute=False``.

    Raises
    ------
    LoomFormatError, LoomNameError
        The Dataset cannot be stored (found before anything is written; the file is unchanged).
    LoomWriteError
        Writing failed, or the file is held open elsewhere; the previous data stays readable.

    Notes
    -----
    NaN and Inf are stored as they are: the spec allows them, though loompy's own writer
    refuses them.  Bool attributes are stored as uint8, bool layers are refused.  After a
    write-back that replaced a variable, a Dataset still reading it lazily sees the new data;
    reopen the file to start from a consistent state.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"matrix": (("row", "col"), np.ones((3, 2), "float32"))},
    ...                 coords={"Gene": ("row", ["a", "b", "c"])})
    >>> to_loom(ds, "example.loom")                                   # doctest: +SKIP
    >>> to_loom(ds.assign_coords(Seen=("col", [1, 0])), "example.loom", mode="a")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if mode not in ("w", "a"):
        raise ValueError(f"mode must be 'w' or 'a'; got {mode!r}")
    _check_storage(chunks, compression, compression_opts)
    if mode == "a" and not os.path.exists(path):
        mode = "w"
    if mode == "a":
        try:
            _transaction.recover_pending(path)  # compare with the file as readers see it
            target = h5py.File(path, "r")
        except LoomxError:
            raise
        except OSError as exc:
            raise LoomWriteError(f"{path!r}: cannot open as HDF5 for write-back: {exc}") from exc
        with target:
            plan = plan_dataset(ds, path, mode, dims, target)
    else:
        plan = plan_dataset(ds, path, mode, dims, None)
    plan.layer_chunks = (int(chunks[0]), int(chunks[1]))
    plan.compression = compression
    plan.compression_opts = compression_opts if compression == "gzip" else None
    if compute:
        execute(plan)
        return None
    for layer in plan.layers:  # written as they are now, whatever happens to them meanwhile
        if isinstance(layer.data, np.ndarray):
            layer.data = layer.data.copy()
    return dask.delayed(execute, pure=False)(plan, dask_key_name=f"to_loom-{uuid.uuid4().hex}")

"""What a Dataset becomes on disk: validated, encoded, with its storage; nothing is written.

:func:`plan_dataset` turns a Dataset in loomx's model into a :class:`WritePlan`: each layer
with its HDF5 path (named by :mod:`loomx._format.names`), data (numpy or dask) and storage
(from its ``encoding`` and the writer's ``encoding=``, see :mod:`loomx._write.storage`);
attributes, graphs and global attributes encoded for the target's spec version.  For
write-back, what is the same as on disk is dropped: a layer that still is the dask array
:func:`loomx.open_loom` made from this very dataset (``encoding["loom_dask_name"]``)
without reading anything, other variables by comparing values.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np
import xarray as xr

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._format import values as _values
from loomx._format.graphs import check_edges, induced_edges
from loomx._hdf5.filesystem import same_file
from loomx._hdf5.links import hard_get
from loomx._read.layout import object_address
from loomx._read.lazy_arrays import unchanged_source
from loomx._write.storage import (
    LOOMPY_STORAGE,
    Storage,
    check_encoding_names,
    storage_of,
    storage_of_dataset,
)
from loomx.errors import LoomFormatError, LoomFormatWarning

__all__ = [
    "LayerPlan",
    "WritePlan",
    "attr_values",
    "encode_attr",
    "field_names",
    "in_field_order",
    "layer_data",
    "plan_dataset",
    "resolve_dims",
]


@dataclasses.dataclass
class LayerPlan:
    """One layer to write."""

    h5path: str
    var_name: str
    data: Any  # numpy or dask array, dims (row, col), already in ``dtype``
    storage: Storage
    compare: bool = False  # write-back: skip the commit when every block equals the disk


@dataclasses.dataclass
class WritePlan:
    """Everything to write, validated and encoded (opaque to ``dask.delayed`` on purpose:
    it is passed as one object, never traversed)."""

    path: str
    mode: str
    legacy: bool
    shape: tuple[int, int]
    locking: bool | None = None
    layers: list[LayerPlan] = dataclasses.field(default_factory=list)
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # by HDF5 path
    array_storage: dict[str, Storage] = dataclasses.field(default_factory=dict)
    graphs: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    root_attrs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # legacy globals
    restored: set[str] = dataclasses.field(default_factory=set)  # written whatever their values

    def without_layers(self) -> WritePlan:
        """A copy of this plan with no layers (the writer of layers is someone else)."""
        return dataclasses.replace(self, layers=[])


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
        raise LoomFormatError(
            f"found dims {dims!r}; expected two distinct names (rows, cols)", path=path, h5path="/"
        )
    return dims  # type: ignore[return-value]


def _from_target(var: xr.Variable, path: str, h5path: str) -> bool:
    """Whether the variable's encoding says it was read from ``path`` at ``h5path``."""
    source = var.encoding.get("source")
    return var.encoding.get("loom_path") == h5path and same_file(source, path)


def is_unchanged(var: xr.Variable, path: str, h5path: str, target: h5py.File) -> bool:
    """Whether ``var`` still reads ``h5path`` of ``path`` whole and unmodified, as
    :func:`loomx.open_loom` made it (see :func:`loomx._read.backend.unchanged_source`), and the
    file still holds the object it was read from (a held or persisted copy of a dataset
    that a later write replaced is not the disk's)."""
    source = unchanged_source(var)
    if source is None or source[1] != h5path or not same_file(source[0], path):
        return False
    recorded = var.encoding.get("loom_object_address")
    return recorded is not None and object_address(target, h5path) == recorded


def _unchanged_on_disk(
    var: xr.Variable,
    path: str,
    h5path: str,
    target: h5py.File | None,
    explicit: Mapping[str, Any] | None,
) -> bool:
    """Write-back of a variable that is known to be the disk's and asks for no new storage
    (``encoding=`` may ask to rewrite it)."""
    return target is not None and not explicit and is_unchanged(var, path, h5path, target)


def encode_attr(path: str, h5path: str, values: Any, legacy: bool) -> np.ndarray:
    """Attribute values as stored: numbers as they are, strings per the spec version."""
    arr = np.asarray(values)
    if arr.dtype.kind == "O" and (bad := [v for v in arr.flat if not isinstance(v, str | bytes)]):
        raise LoomFormatError(
            f"found an object array holding {type(bad[0]).__name__} ({bad[0]!r}); expected "
            "numbers or strings (fill missing values)",
            path=path,
            h5path=h5path,
        )
    if arr.dtype.kind not in "biufUSTO":
        raise LoomFormatError(
            f"found dtype {arr.dtype}; expected numbers, bools or strings", path=path, h5path=h5path
        )
    return _values.encode_attr_values(arr, legacy=legacy)


def field_names(ds: xr.Dataset, var: xr.Variable) -> list[str] | None:
    """The labels of a 2-D attribute's second dim (its field names), if it has them."""
    label = ds.variables.get(var.dims[1]) if var.ndim == 2 else None
    return None if label is None else [str(v) for v in np.asarray(label.values).ravel()]


def attr_values(
    ds: xr.Dataset,
    name: str,
    explicit: Mapping[str, Any] | None,
    path: str,
    h5path: str,
    legacy: bool,
) -> np.ndarray:
    """An attribute's values as stored: compound when its encoding ``dtype`` (``encoding=``,
    else its own, as :func:`loomx.open_loom` records it) asks for it
    (:func:`loomx._format.values.compound_dtype`), else :func:`encode_attr`."""
    var = ds.variables[name]
    wanted = (explicit or {}).get("dtype", var.encoding.get("dtype"))
    if not _values.is_compound_request(wanted):
        if var.ndim == 2 and field_names(ds, var) and var.dims[1] != var.dims[0]:
            labels = ds.variables[var.dims[1]]
            if labels.dtype.kind in "OUS":
                warnings.warn(
                    f"{h5path}: {name!r} is written as a plain 2-D attribute; the labels of "
                    f"{var.dims[1]!r} are not stored (encoding={{{name!r}: {{'dtype': "
                    "'compound'}} keeps them as field names)",
                    LoomFormatWarning,
                    stacklevel=4,
                )
        return encode_attr(path, h5path, var.values, legacy)
    if var.ndim != 2:
        raise LoomFormatError(
            f"{name}: a compound attribute needs 2 dims (the axis and its fields); found "
            f"dims {var.dims}",
            path=path,
            h5path=h5path,
        )
    try:
        dtype = _values.compound_dtype(wanted, field_names(ds, var), var.dtype)
        return _values.array_to_compound(np.asarray(var.values), dtype)
    except (TypeError, ValueError) as err:
        raise LoomFormatError(f"{name}: {err}", path=path, h5path=h5path) from err


def in_field_order(
    new: np.ndarray, fields: list[str] | None, dtype: np.dtype, where: tuple[str, str]
) -> np.ndarray:
    """A 2-D attribute's columns in the order of the fields of ``dtype`` (the file's
    compound dtype), given its own field names; other fields are refused."""
    have = list(dtype.names or ())
    if fields is None or fields == have:
        return new
    if sorted(fields) != sorted(have):
        raise LoomFormatError(
            f"the new data has fields {fields}, the file {have}; expected the same fields",
            path=where[0],
            h5path=where[1],
        )
    return new[:, [fields.index(f) for f in have]]


def layer_data(path: str, h5path: str, var: xr.Variable) -> Any:
    """The layer's data as a numpy or dask array (lazily indexed arrays become dask)."""
    if var.dtype.kind == "b":
        raise LoomFormatError(
            "found dtype bool; cast the layer with .astype('uint8')", path=path, h5path=h5path
        )
    if not _spec.is_layer_dtype(var.dtype):
        allowed = ", ".join(str(t) for t in _spec.LAYER_DTYPES)
        raise LoomFormatError(
            f"found dtype {var.dtype}; expected one of {allowed}", path=path, h5path=h5path
        )
    if var.chunks is None and not var._in_memory:
        var = var.chunk(var.encoding.get("preferred_chunks") or {})
    return var.data


def _plan_graph(
    path: str,
    space: str,
    graph: str,
    parts: dict[str, xr.Variable],
    n: int,
    target: h5py.File | None,
) -> tuple[str, dict[str, np.ndarray] | None]:
    """Check one graph and map its edges to the current rows or columns.

    Written back in place, a graph read from a legacy ``/col_edges`` group stays there.
    Edges of a graph whose rows or columns were not selected are kept as they are (order,
    duplicates), so an unmodified graph round-trips edge-exactly.
    """
    h5path = f"/{space}/{graph}"
    legacy_path = f"/{_spec.LEGACY_GRAPH_GROUPS[space]}/{graph}"
    in_place = target is not None
    if in_place and "a" in parts and _from_target(parts["a"], path, f"{legacy_path}/a"):
        h5path = legacy_path
    conv.check_link_name(graph, path=path, h5path=h5path)
    names = conv.graph_var_names(space, graph)
    missing = [names[p] for p in conv.GRAPH_PARTS if p not in parts]
    if missing:
        raise LoomFormatError(f"missing graph variables {missing}", path=path, h5path=h5path)
    vertex = parts.get("vertex")
    untouched = target is not None and all(
        is_unchanged(parts[p], path, f"{h5path}/{p}", target) for p in conv.GRAPH_PARTS
    )
    if untouched and (vertex is None or np.array_equal(vertex.values, np.arange(n))):
        return h5path, None  # the graph on disk, all rows or columns: nothing to write
    a, b, w = (np.asarray(parts[p].values) for p in conv.GRAPH_PARTS)
    if not a.ndim == b.ndim == w.ndim == 1 or not len(a) == len(b) == len(w):
        found = [x.shape for x in (a, b, w)]
        raise LoomFormatError(
            f"a, b, w have shapes {found}; expected equal 1-D", path=path, h5path=h5path
        )
    for p, v in (("a", a), ("b", b), ("w", w)):
        if v.dtype.kind not in ("biuf" if p == "w" else "iu") and not _values.whole_numbers(v):
            expected = "floats" if p == "w" else "integers"
            raise LoomFormatError(
                f"found dtype {v.dtype}; expected {expected}", path=path, h5path=f"{h5path}/{p}"
            )
    a, b = (v.astype(np.int64) if v.dtype.kind == "f" else v for v in (a, b))
    w = w if w.dtype.kind == "f" else w.astype(np.float64)
    ids = np.arange(n, dtype=np.int64) if vertex is None else np.asarray(vertex.values)
    if ids.shape != (n,) or ids.dtype.kind not in "iu" or (n and ids.min() < 0):
        raise LoomFormatError(
            f"{names['vertex']}: found shape {ids.shape} and dtype {ids.dtype}; expected "
            f"{n} non-negative integer vertex numbers on the axis",
            path=path,
            h5path=h5path,
        )
    bound = None if vertex is None else vertex.encoding.get("loom_n_vertices")
    identity = np.array_equal(ids, np.arange(n))
    if bound is None and (identity or not any("source" in v.encoding for v in parts.values())):
        bound = n if identity else int(ids.max(initial=-1)) + 1
    limit = int(bound) if bound is not None else np.iinfo(np.int64).max
    check_edges(a, b, limit, path, h5path)
    if identity and (not len(a) or max(a.max(), b.max()) < n):
        return h5path, {"a": a, "b": b, "w": w}  # as they are: order, duplicates, dtypes
    a2, b2, w2 = induced_edges(a, b, w, ids)
    return h5path, {"a": np.asarray(a2), "b": np.asarray(b2), "w": np.asarray(w2, np.float64)}


def plan_dataset(
    ds: xr.Dataset,
    path: str,
    mode: str,
    dims: Sequence[str] | None,
    target: h5py.File | None,
    *,
    encoding: Mapping[str, Mapping[str, Any]] | None = None,
    default_storage: Storage = LOOMPY_STORAGE,
    locking: bool | None = None,
) -> WritePlan:
    """Validate ``ds`` completely and turn it into what to write (nothing touches disk).

    With ``target`` (the existing file, mode "a"), only what differs from it is kept.
    ``encoding`` is the writer's per-variable storage (see :mod:`loomx._write.storage`).
    """
    dims = resolve_dims(ds, dims, path)
    explicit = check_encoding_names(encoding, {str(k) for k in ds.variables}, path)
    legacy = root_globals = False
    shape: list[int | None] = [ds.sizes.get(d) for d in dims]
    if target is not None:
        legacy = not _spec.uses_vlen_utf8(_spec.read_version(target)[0])
        # globals stay where the file keeps them: root attributes when it has no /attrs
        root_globals = not isinstance(hard_get(target, f"/{_spec.GLOBAL_ATTRS}", path), h5py.Group)
        disk = hard_get(target, f"/{_spec.MATRIX}", path)
        if isinstance(disk, h5py.Dataset) and disk.ndim == 2:
            if any(s not in (None, d) for s, d in zip(shape, disk.shape, strict=True)):
                found = dict(zip(dims, shape, strict=True))
                raise LoomFormatError(
                    f"found sizes {found}; the file has shape {disk.shape} (use mode='w')",
                    path=path,
                    h5path=f"/{_spec.MATRIX}",
                )
            shape = list(disk.shape)
    n_rows, n_cols = (0 if s is None else int(s) for s in shape)
    plan = WritePlan(path, mode, legacy, (n_rows, n_cols), locking)
    attr_default = dataclasses.replace(default_storage, chunks=None)

    for name, h5path in conv.variable_paths(ds, dims, path=path).items():
        var = ds.variables[name]
        kind = conv.path_kind(h5path)
        if kind == "layer":
            if sorted(var.dims) != sorted(dims):
                raise LoomFormatError(
                    f"found dims {var.dims}; expected {dims}", path=path, h5path=h5path
                )
            var = var.transpose(*dims)  # (col, row), as xr.where may order them, is a layer too
            if _unchanged_on_disk(var, path, h5path, target, explicit.get(name)):
                continue  # as on disk, and read from there: nothing to write, nothing to read
            data = layer_data(path, h5path, var)
            storage, dtype = storage_of(
                var.encoding, explicit.get(name), default_storage, data.dtype,
                path=path, h5path=h5path, ndim=2,
            )  # fmt: skip
            if not _spec.is_layer_dtype(dtype):
                raise LoomFormatError(
                    f"encoding dtype {dtype} is not a layer dtype", path=path, h5path=h5path
                )
            if _storage_changed(target, h5path, storage, explicit.get(name)):
                plan.restored.add(h5path)
            if dtype != data.dtype:
                data = data.astype(dtype)
            plan.layers.append(LayerPlan(h5path, name, data, storage))
            continue
        axis = _spec.AXIS_OF_ATTRS[kind]
        if not var.ndim or var.dims[0] != dims[axis]:
            raise LoomFormatError(
                f"found dims {var.dims}; expected the first dim to be {dims[axis]!r}",
                path=path,
                h5path=h5path,
            )
        same_fields = var.encoding.get("loom_compound_fields") in (None, field_names(ds, var))
        if same_fields and _unchanged_on_disk(var, path, h5path, target, explicit.get(name)):
            continue  # as on disk, and read from there: nothing to write, nothing to read
        values = attr_values(ds, name, explicit.get(name), path, h5path, legacy)
        storage, dtype = storage_of(
            var.encoding, explicit.get(name), attr_default, values.dtype,
            path=path, h5path=h5path, ndim=values.ndim,
        )  # fmt: skip
        if values.dtype.kind in "biuf" and dtype != values.dtype:
            values = values.astype(dtype)
        if _storage_changed(target, h5path, storage, explicit.get(name)):
            plan.restored.add(h5path)
        plan.arrays[h5path] = values
        plan.array_storage[h5path] = storage

    graph_parts: dict[tuple[str, str], dict[str, xr.Variable]] = {}
    for key, var in ds.variables.items():
        parsed = conv.parse_graph_var(str(key))
        if parsed is not None and parsed[2] != "edge":
            graph_parts.setdefault(parsed[:2], {})[parsed[2]] = var
    for (space, graph), parts in sorted(graph_parts.items()):
        n = plan.shape[_spec.AXIS_OF_GRAPHS[space]]
        h5path, edges = _plan_graph(path, space, graph, parts, n, target)
        if edges is not None:
            plan.graphs[h5path] = edges

    for key, value in ds.attrs.items():
        name = str(key)
        if name == _spec.VERSION_KEY:
            continue  # new files say 3.0.0; existing files keep their own version
        h5path = f"/ (attribute {name})" if root_globals else f"/{_spec.GLOBAL_ATTRS}/{name}"
        conv.check_link_name(name, path=path, h5path=h5path)
        try:
            encoded = _values.encode_global(value, legacy=legacy)
        except TypeError as err:
            raise LoomFormatError(str(err), path=path, h5path=h5path) from err
        if root_globals:
            plan.root_attrs[name] = encoded
        else:
            plan.arrays[h5path] = encoded
            plan.array_storage[h5path] = attr_default

    if mode == "w" and not any(layer.h5path == f"/{_spec.MATRIX}" for layer in plan.layers):
        raise LoomFormatError(
            f"the Dataset has no {_spec.MATRIX!r} variable; the spec requires /matrix "
            "(rename the main layer to 'matrix')",
            path=path,
            h5path=f"/{_spec.MATRIX}",
        )
    if target is not None:
        _drop_unchanged(plan, target)
    return plan


# --------------------------------------------------------------------------- write-back


def _storage_changed(
    target: h5py.File | None, h5path: str, storage: Storage, explicit: Mapping[str, Any] | None
) -> bool:
    """Whether ``encoding=`` asks for storage the object on disk does not have (then it is
    rewritten even when its values are the same)."""
    if target is None or not explicit:
        return False
    disk = hard_get(target, h5path, target.filename)
    if not isinstance(disk, h5py.Dataset):
        return False
    have = storage_of_dataset(disk)
    want = storage.fitted(disk.shape)
    if want.chunks is None:  # h5py's choice: any chunks will do
        have = dataclasses.replace(have, chunks=None)
    return have != want


def _drop_unchanged(plan: WritePlan, f: h5py.File) -> None:
    """Drop what equals the disk; layers that may equal it are compared while written."""
    legacy = plan.legacy
    for layer in plan.layers:
        obj = hard_get(f, layer.h5path, plan.path)
        if isinstance(obj, h5py.Dataset) and obj.shape == plan.shape:
            layer.compare = obj.dtype == layer.data.dtype and layer.h5path not in plan.restored
    for h5path in [p for p in plan.arrays if p not in plan.restored]:
        obj = hard_get(f, h5path, plan.path)
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
        grp = hard_get(f, h5path, plan.path)
        if isinstance(grp, h5py.Group) and all(
            isinstance(hard_get(grp, p, plan.path), h5py.Dataset)
            and _same_edges(grp[p][()], edges[p], p)
            for p in conv.GRAPH_PARTS
        ):
            del plan.graphs[h5path]
    for name in list(plan.root_attrs):
        if name in f.attrs and _same_value(f.attrs[name], plan.root_attrs[name], legacy):
            del plan.root_attrs[name]


def _same_edges(disk: np.ndarray, new: np.ndarray, part: str) -> bool:
    """Vertices compare by value (whole-valued float vertices of files from the wild equal
    their integers); weights bit for bit, as layers (0.0 and -0.0 differ)."""
    if part != "w":
        return bool(np.array_equal(disk, new))
    return _equal(np.asarray(disk), new, False)


def _disk_values(obj: h5py.Dataset, legacy: bool) -> np.ndarray:
    raw = np.asarray(obj[()])
    if _values.is_string_dtype(obj.dtype):
        return _values.decode_strings(raw, fixed_length=raw.dtype.kind == "S", legacy=legacy)
    return raw


def _equal(disk: np.ndarray, new: np.ndarray, legacy: bool) -> bool:
    new = np.asarray(new)
    if new.dtype.kind in "OS":
        new = _values.decode_strings(new, fixed_length=new.dtype.kind == "S", legacy=legacy)
        return disk.dtype.kind == "O" and disk.shape == new.shape and bool(np.all(disk == new))
    if disk.dtype != new.dtype or disk.shape != new.shape:
        return False
    return disk.tobytes() == np.ascontiguousarray(new).tobytes()  # bitwise: -0.0, NaN payloads


def _same_value(disk: Any, new: Any, legacy: bool) -> bool:
    """Global attributes compare as the reader decodes them (``np.uint8(1) == 1``)."""
    try:
        disk, new = (_values.decode_value(v, legacy=legacy) for v in (disk, new))
    except UnicodeDecodeError:
        return False
    if isinstance(disk, str) or isinstance(new, str):
        return type(disk) is type(new) and disk == new
    return np.shape(disk) == np.shape(new) and bool(np.array_equal(disk, new))

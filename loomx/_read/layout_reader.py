"""Reading the layout of a Loom file: every group, dataset and attribute header loomx
needs, through h5py's low-level calls where the file is plain (hard links only, no
external or virtual storage), checked against the spec, into a
:class:`~loomx._read.layout.LoomLayout`.  Metadata and attributes only, never layer data.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import h5py
import numpy as np

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._format import values as _values
from loomx._hdf5 import filesystem as _filesystem
from loomx._hdf5 import filters as _filters
from loomx._hdf5.links import hard_child
from loomx._read.layout import (
    AttrInfo,
    DatasetInfo,
    GraphInfo,
    LoomLayout,
    link_address,
)
from loomx._read.pending import Patch, committed_path, read_pending_commits
from loomx.errors import LoomFormatError, LoomFormatWarning, describe

__all__ = ["LayoutReader"]


class LayoutReader:
    """Reads and checks the layout of one open file (used only by LoomStore).

    Objects a writer has not finished (temporary names) are skipped; a commit a writer
    recorded but did not finish (a pending commit, :mod:`loomx._read.pending`) is applied
    as the file is read, without changing it.
    """

    def __init__(self, h5file: h5py.File, path: str, where: list[str] | None = None):
        self.f = h5file
        self.path = path
        self.where = ["/"] if where is None else where  # the object being read, for errors
        self.allow_filter_plugins = False
        self.follow_external = False
        self.pending: dict[str, dict[str, str]] = {}
        self.pending_attrs: list[h5py.AttributeManager] = []
        self.patches: dict[str, list[Patch]] = {}
        for commit in read_pending_commits(h5file):
            for parent, links in commit.pending(h5file).items():
                self.pending.setdefault(parent, {}).update(links)
            for final, found in commit.patches(h5file).items():
                self.patches.setdefault(final, []).extend(found)
            self.pending_attrs.append(h5file[commit.name].attrs)

    def children(self, group: h5py.Group) -> dict[str, str]:
        """Each child's name and the link it is read through (committed names applied,
        committed deletions left out)."""
        self.where[0] = committed_path(group.name)
        out = {name: name for name in group if _filesystem.TEMPORARY_TAG not in name}
        for name, link in self.pending.get(group.name, {}).items():
            if link:
                out[name] = link
            else:
                out.pop(name, None)
        return out

    def child(self, group: h5py.Group, name: str) -> h5py.Dataset | h5py.Group:
        return self.hard(group, self.children(group).get(name, name))

    def hard(self, group: h5py.Group, link: str) -> h5py.Dataset | h5py.Group:
        """:func:`hard_child`, remembering which object is being read."""
        self.where[0] = committed_path(f"{group.name.rstrip('/')}/{link}")
        obj = hard_child(group, link, self.path, self.follow_external)
        if isinstance(obj, h5py.Dataset) and not self.allow_filter_plugins:
            plist = obj.id.get_create_plist()
            codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
            plugins = [c for c in codes if c not in _filters.BUILTIN_FILTERS]
            if plugins:
                raise LoomFormatError(
                    f"stored with HDF5 filter plugin(s) {plugins} (code HDF5 would load "
                    f"from disk); expected built-in filters {sorted(_filters.BUILTIN_FILTERS)}. "
                    "Pass allow_filter_plugins=True to open_loom to read it",
                    path=self.path,
                    h5path=self.where[0],
                )
        return obj

    def warn(self, h5path: str, message: str) -> None:
        warnings.warn(f"{describe(self.path, h5path)}: {message}", LoomFormatWarning, stacklevel=4)

    def group(self, name: str) -> h5py.Group | None:
        link = self.children(self.f).get(name)
        if link is None:
            return None
        obj = self.hard(self.f, link)
        if not isinstance(obj, h5py.Group):
            raise LoomFormatError(
                "found a dataset, expected a group", path=self.path, h5path="/" + name
            )
        return obj

    def read(self) -> LoomLayout:
        self.where[0] = f"/{_spec.GLOBAL_ATTRS}/{_spec.VERSION_KEY}"
        version, source = _spec.read_version(self.f)
        legacy = not _spec.uses_vlen_utf8(version)
        shape = self.matrix_shape()
        layout = LoomLayout(path=self.path, version=version, shape=shape)
        layout.layers = self.layers(shape)
        for space, axis in _spec.AXIS_OF_ATTRS.items():
            attrs = self.attrs(space, shape[axis], legacy)
            setattr(layout, space, attrs)
        for space in _spec.AXIS_OF_GRAPHS:
            setattr(layout, space, self.graphs(space))
        layout.global_attrs, layout.global_attrs_location = self.global_attrs(version, legacy)
        layout.pending = {
            f"{parent.rstrip('/')}/{name}": f"{parent.rstrip('/')}/{link}"
            for parent, links in self.pending.items()
            for name, link in links.items()
            if link
        }
        layout.patches = self.patches
        if source is None:
            self.warn("/", f"no {_spec.VERSION_KEY}; reading it as a pre-3.0.0 Loom file")
        return layout

    def matrix_shape(self) -> tuple[int, int]:
        if _spec.MATRIX not in self.children(self.f):
            found = sorted(self.children(self.f))
            raise LoomFormatError(
                f"not a Loom file: no /matrix dataset "
                f"(found top-level objects {found}, expected /matrix, /row_attrs, /col_attrs)",
                path=self.path,
                h5path="/matrix",
            )
        matrix = self.child(self.f, _spec.MATRIX)
        if not isinstance(matrix, h5py.Dataset) or matrix.ndim != 2:
            what = "a group" if isinstance(matrix, h5py.Group) else f"shape {matrix.shape}"
            raise LoomFormatError(
                f"found {what}, expected a 2-D dataset", path=self.path, h5path="/matrix"
            )
        shape = self.extent(committed_path(matrix.name), tuple(matrix.shape))
        return (int(shape[0]), int(shape[1]))

    def extent(self, h5path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the dataset at (committed) ``h5path``, ``shape`` now, once a pending
        commit that grows it is carried out."""
        for patch in self.patches.get(h5path, ()):
            if patch.extent is not None:
                return patch.extent
        return shape

    def dataset(self, group: h5py.Group, base: str, link: str, what: str) -> DatasetInfo:
        """Storage facts of the dataset ``link`` of ``group`` (at ``base``) names, with its
        extent once pending commits are carried out; a clear error when it is no dataset
        (``what`` says what was expected) or one loomx does not read (see :meth:`hard`)."""
        raw = f"{base}/{link}"
        self.where[0] = committed_path(raw)
        info = DatasetInfo.of_plain(group, link, raw)
        if info is None:  # anything unusual: checked, and read, through h5py.Dataset
            dset = self.hard(group, link)
            if not isinstance(dset, h5py.Dataset):
                raise LoomFormatError(
                    f"found a group, expected {what}", path=self.path, h5path=self.where[0]
                )
            info = DatasetInfo.of(dset, link_address(group, link))
        extent = self.extent(info.h5path, info.shape)
        return info if extent == info.shape else dataclasses.replace(info, shape=extent)

    def layer_info(self, info: DatasetInfo, shape: tuple[int, int]) -> DatasetInfo:
        if info.shape != shape:
            raise LoomFormatError(
                f"layer shape {info.shape} does not match /matrix shape {shape}",
                path=self.path,
                h5path=info.h5path,
            )
        if not _spec.is_layer_dtype(info.dtype):
            raise LoomFormatError(
                f"layer dtype {info.dtype} is not numeric; "
                f"expected one of {[str(d) for d in _spec.LAYER_DTYPES]}",
                path=self.path,
                h5path=info.h5path,
            )
        return info

    def layers(self, shape: tuple[int, int]) -> dict[str, DatasetInfo]:
        link = self.children(self.f).get(_spec.MATRIX, _spec.MATRIX)
        out = {"": self.layer_info(self.dataset(self.f, "", link, "a layer dataset"), shape)}
        group = self.group(_spec.LAYERS)
        if group is None:
            return out
        base = group.name.rstrip("/")
        for name, link in self.children(group).items():
            info = self.dataset(group, base, link, "a layer dataset")
            out[name] = self.layer_info(info, shape)
        return out

    def attrs(self, space: str, length: int, legacy: bool) -> dict[str, AttrInfo]:
        group = self.group(space)
        if group is None:
            self.warn("/" + space, "group missing; expected it in every Loom file")
            return {}
        out = {}
        base = group.name.rstrip("/")
        for name, link in self.children(group).items():
            info = self.dataset(group, base, link, "an attribute dataset")
            if not info.shape or info.shape[0] != length:
                axis = "rows" if space == _spec.ROW_ATTRS else "columns"
                raise LoomFormatError(
                    f"attribute has shape {info.shape}, "
                    f"expected first dimension {length} (the number of {axis} of /matrix)",
                    path=self.path,
                    h5path=info.h5path,
                )
            out[name] = self.attr(info, legacy)
        return out

    def attr(self, info: DatasetInfo, legacy: bool) -> AttrInfo:
        dtype = info.dtype
        shape = info.shape
        if dtype.names is not None:
            fields = tuple(dtype.names)
            kinds = [dtype.fields[n][0] for n in fields]
            if any(d.kind not in "biuf" or d.shape for d in kinds):
                raise LoomFormatError(
                    f"compound dtype {dtype} has non-numeric "
                    "fields; expected numeric fields or a plain dtype",
                    path=self.path,
                    h5path=info.h5path,
                )
            self.warn(
                info.h5path,
                f"compound dtype with fields {list(fields)} (not allowed by the Loom spec); "
                "read as a 2-D attribute whose last dim is labelled by the field names (written "
                "back compound)",
            )
            return AttrInfo(
                info,
                "compound",
                (*shape, len(fields)),
                np.result_type(*kinds),
                compound_fields=fields,
            )
        string_info = h5py.check_string_dtype(dtype)
        if string_info is not None or dtype.kind in "SO":
            fixed = string_info is not None and string_info.length is not None
            return AttrInfo(
                info, "string", shape, np.dtype(object), fixed_length=fixed, legacy=legacy
            )
        if h5py.check_enum_dtype(dtype) is not None and dtype != np.bool_:
            self.warn(info.h5path, "HDF5 enum dtype (not allowed by the Loom spec); read as int")
            dtype = dtype.base
        if dtype.kind not in "biuf":
            raise LoomFormatError(
                f"attribute dtype {dtype} is not supported; expected numbers or strings",
                path=self.path,
                h5path=info.h5path,
            )
        return AttrInfo(info, "number", shape, np.dtype(dtype))

    def graphs(self, space: str) -> dict[str, GraphInfo]:
        out: dict[str, GraphInfo] = {}
        legacy_name = _spec.LEGACY_GRAPH_GROUPS[space]
        for group_name in (legacy_name, space):
            group = self.group(group_name)
            if group is None:
                continue
            if group_name == legacy_name and len(group):
                self.warn(group.name, f"legacy graph group; read as /{space}")
            for name, link in self.children(group).items():
                out[name] = self.graph(self.hard(group, link))
        return out

    def graph(self, group: h5py.Group | h5py.Dataset) -> GraphInfo:
        if not isinstance(group, h5py.Group):
            raise LoomFormatError(
                "found a dataset, expected a graph group with datasets a, b, w",
                path=self.path,
                h5path=committed_path(group.name),
            )
        parts = {}
        for part in conv.GRAPH_PARTS:
            self.where[0] = committed_path(f"{group.name}/{part}")
            if part not in group:
                raise LoomFormatError(
                    f"graph has no '{part}' dataset; expected a, b (vertices) and w (weights)",
                    path=self.path,
                    h5path=committed_path(group.name),
                )
            dset = self.hard(group, part)
            if not isinstance(dset, h5py.Dataset) or dset.ndim != 1:
                raise LoomFormatError(
                    "expected a 1-D dataset",
                    path=self.path,
                    h5path=committed_path(f"{group.name}/{part}"),
                )
            parts[part] = DatasetInfo.of(dset, link_address(group, part))
        lengths = {p: info.shape[0] for p, info in parts.items()}
        if len(set(lengths.values())) != 1:
            raise LoomFormatError(
                f"graph edge lists have unequal lengths "
                f"{lengths}; expected a, b and w of equal length",
                path=self.path,
                h5path=committed_path(group.name),
            )
        for part in ("a", "b"):
            kind = parts[part].dtype.kind
            if kind == "f":
                self.warn(
                    parts[part].h5path,
                    f"vertex indices stored as {parts[part].dtype}; expected integers "
                    "(accepted when whole-valued)",
                )
            elif kind not in "iu":
                raise LoomFormatError(
                    f"vertex dtype {parts[part].dtype}; expected integers",
                    path=self.path,
                    h5path=parts[part].h5path,
                )
        if parts["w"].dtype.kind not in "biuf":
            raise LoomFormatError(
                f"weight dtype {parts['w'].dtype}; expected numbers",
                path=self.path,
                h5path=parts["w"].h5path,
            )
        return GraphInfo(committed_path(group.name), parts["a"], parts["b"], parts["w"])

    def global_attrs(self, version: str, legacy: bool) -> tuple[dict[str, Any], str]:
        group = self.group(_spec.GLOBAL_ATTRS)
        out: dict[str, Any] = {}
        if group is not None:
            for name, link in self.children(group).items():
                dset = self.hard(group, link)
                if isinstance(dset, h5py.Dataset):
                    out[name] = self.global_value(dset[()], f"{group.name}/{name}", legacy)
            return out, "/attrs"
        self.where[0] = "/"
        for attrs in (self.f.attrs, *self.pending_attrs):
            for name, value in attrs.items():
                string_info = h5py.check_string_dtype(attrs.get_id(name).dtype)
                ascii_text = string_info is not None and string_info.encoding == "ascii"
                out[name] = self.global_value(value, "/", legacy, ascii_text)
        return out, "/"

    def global_value(self, value: Any, h5path: str, legacy: bool, ascii_text: bool = False) -> Any:
        try:
            return _values.decode_value(value, legacy=legacy, ascii_text=ascii_text)
        except UnicodeDecodeError as err:
            raise LoomFormatError(
                f"global attribute is not valid UTF-8 ({err})", path=self.path, h5path=h5path
            ) from err

"""Compare two Loom files object by object, reading them with h5py alone.

The comparison is independent of loomx's reader (it uses only the path names of
:mod:`loomx._format.spec`), so a reader bug cannot hide a writer bug or the other way round.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection
from typing import Any

import h5py
import numpy as np

from loomx._format import spec as _spec
from loomx._hdf5 import filesystem as _filesystem

__all__ = [
    "assert_loom_identical",
]

_BLOCK_BYTES = 64 * 2**20
"""Layers are compared in row slabs of about this many bytes."""

_XML_REFERENCE = re.compile(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|amp|lt|gt|quot|apos);")
_XML_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def _xml_reference(match: re.Match[str]) -> str:
    ref = match.group(1)
    if ref[0] != "#":
        return _XML_ENTITIES[ref]
    code = int(ref[2:], 16) if ref[1] in "xX" else int(ref[1:])
    return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else match.group(0)


def _unescape(text: str) -> str:
    return _XML_REFERENCE.sub(_xml_reference, text) if "&" in text else text


class _File:
    """One side of the comparison: an open file, its spec version and string rules."""

    def __init__(self, f: h5py.File, label: str) -> None:
        self.f = f
        self.label = label
        self.version = self._version()
        self.legacy = _parse_version(self.version) < (3, 0, 0)

    def _version(self) -> str:
        raw: Any = None
        attrs_group = self.f.get(_spec.GLOBAL_ATTRS, getlink=False)
        if isinstance(attrs_group, h5py.Group) and _spec.VERSION_KEY in attrs_group:
            raw = attrs_group[_spec.VERSION_KEY][()]
        elif _spec.VERSION_KEY in self.f.attrs:
            raw = self.f.attrs[_spec.VERSION_KEY]
        if raw is None:
            return ""
        raw = _unwrap(raw)
        return (raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)).strip()

    def text(self, raw: np.ndarray) -> np.ndarray:
        """Decode an array of HDF5 strings: vlen strictly as UTF-8, fixed-length ``S``
        strings of files older than 3.0.0 as ASCII with XML character references."""
        fixed = raw.dtype.kind == "S"
        flat = raw.ravel()
        out = np.empty(flat.shape, dtype=object)
        for i, item in enumerate(flat):
            text = item.decode("utf-8") if isinstance(item, bytes) else str(item)
            out[i] = _unescape(text) if fixed and self.legacy else text
        return out.reshape(raw.shape)

    def value(self, raw: Any, ascii_text: bool) -> Any:
        """A global attribute as comparable data: ``str``, an object array of ``str``, or
        a numeric numpy array (0-d for scalars).  Text stored as ASCII (fixed-length, or
        root attributes that h5py hands out as ``str``) is XML-unescaped in legacy files."""
        raw = _unwrap(raw) if _is_text(raw) else raw
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
            ascii_text = True
        if isinstance(raw, str):
            return _unescape(raw) if self.legacy and ascii_text else raw
        arr = np.asarray(raw)
        if _is_text(arr):
            return self.text(arr)
        return arr


def _parse_version(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            return (0, 0, 0)
        parts.append(int(digits))
    return tuple(parts) or (0, 0, 0)


def _unwrap(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(())[()]
    if isinstance(value, np.generic):
        return value.item() if isinstance(value, np.bytes_ | np.str_) else value
    return value


def _is_text(value: Any) -> bool:
    if isinstance(value, bytes | str | np.bytes_ | np.str_):
        return True
    if isinstance(value, np.ndarray):
        return (
            value.dtype.kind in "SU"
            or h5py.check_string_dtype(value.dtype) is not None
            or (
                value.dtype.kind == "O"
                and value.size > 0
                and isinstance(value.flat[0], bytes | str)
            )
        )
    return False


def _visible(name: str) -> bool:
    return _filesystem.TEMPORARY_TAG not in name


def _members(group: h5py.Group | None) -> dict[str, Any]:
    if group is None:
        return {}
    return {name: group[name] for name in group if _visible(name)}


def _bits(values: np.ndarray) -> np.ndarray:
    """The raw bytes of each element, as unsigned integers of the same width."""
    values = np.require(values, requirements="C")
    size = values.dtype.itemsize
    if values.dtype.kind in "biuf" and size in (1, 2, 4, 8):
        return values.view(f"u{size}")
    return values.view(np.uint8).reshape(*values.shape, size)


def _first_difference(a: np.ndarray, b: np.ndarray) -> tuple[int, ...] | None:
    diff = _bits(a) != _bits(b)
    if diff.ndim > a.ndim:
        diff = diff.any(axis=-1)
    found = np.argwhere(diff)
    return tuple(int(i) for i in found[0]) if len(found) else None


def _show(value: Any) -> str:
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return f"{value!r} (bits 0x{_bits(np.asarray(value)).item():x})"
    return repr(value)


def _fail(path: str, what: str, actual: Any, expected: Any) -> None:
    raise AssertionError(
        f"{path}: {what} differ\n  actual:   {_show(actual)}\n  expected: {_show(expected)}"
    )


def _same_names(path: str, actual: Collection[str], expected: Collection[str]) -> None:
    if set(actual) != set(expected):
        missing = sorted(set(expected) - set(actual))
        extra = sorted(set(actual) - set(expected))
        raise AssertionError(f"{path}: members differ; missing {missing}, unexpected {extra}")


def _compare_arrays(path: str, actual: np.ndarray, expected: np.ndarray, offset: int = 0) -> None:
    """Bitwise equality of numeric (or other fixed-size) arrays of one dtype and shape."""
    index = _first_difference(actual, expected)
    if index is not None:
        at = (index[0] + offset, *index[1:]) if index else index
        _fail(path, f"values at index {at}", actual[index], expected[index])


def _compare_dataset(path: str, actual: h5py.Dataset, expected: h5py.Dataset) -> None:
    if actual.dtype != expected.dtype:
        _fail(path, "dtypes", actual.dtype, expected.dtype)
    if actual.shape != expected.shape:
        _fail(path, "shapes", actual.shape, expected.shape)
    if actual.ndim == 0 or actual.size == 0:
        _compare_arrays(path, np.asarray(actual[()]), np.asarray(expected[()]))
        return
    row_bytes = max(actual.dtype.itemsize * actual.size // actual.shape[0], 1)
    step = max(_BLOCK_BYTES // row_bytes, 1)
    for start in range(0, actual.shape[0], step):
        stop = min(start + step, actual.shape[0])
        _compare_arrays(path, actual[start:stop], expected[start:stop], offset=start)


def _compare_values(path: str, actual: Any, expected: Any) -> None:
    """Decoded attribute values: strings by text, numbers by dtype, shape and bits."""
    a_text, e_text = isinstance(actual, str), isinstance(expected, str)
    if a_text != e_text:
        _fail(path, "kinds (text vs numbers)", actual, expected)
    if a_text:
        if actual != expected:
            _fail(path, "values", actual, expected)
        return
    a_str = actual.dtype == object
    e_str = expected.dtype == object
    if a_str != e_str:
        _fail(path, "kinds (text vs numbers)", actual.dtype, expected.dtype)
    if actual.shape != expected.shape:
        _fail(path, "shapes", actual.shape, expected.shape)
    if a_str:
        for index in np.ndindex(actual.shape):
            if actual[index] != expected[index]:
                _fail(path, f"strings at index {index}", actual[index], expected[index])
        return
    if actual.dtype != expected.dtype:
        _fail(path, "dtypes", actual.dtype, expected.dtype)
    _compare_arrays(path, actual, expected)


def _attribute(side: _File, dset: h5py.Dataset) -> np.ndarray:
    raw = dset[()]
    if h5py.check_string_dtype(dset.dtype) is not None or dset.dtype.kind in "SU":
        return side.text(np.asarray(raw))
    return np.asarray(raw)


def _layers(side: _File) -> dict[str, h5py.Dataset]:
    out = {}
    if _spec.MATRIX in side.f:
        out["/" + _spec.MATRIX] = side.f[_spec.MATRIX]
    group = side.f.get(_spec.LAYERS)
    for name, dset in _members(group).items():
        out[f"/{_spec.LAYERS}/{name}"] = dset
    return out


def _graphs(side: _File) -> dict[str, h5py.Group]:
    """``{"/col_graphs/KNN": group}``, legacy ``col_edges`` groups under their modern name."""
    out: dict[str, h5py.Group] = {}
    for space in (_spec.ROW_GRAPHS, _spec.COL_GRAPHS):
        for group_name in (space, _spec.LEGACY_GRAPH_GROUPS[space]):
            for name, group in _members(side.f.get(group_name)).items():
                out.setdefault(f"/{space}/{name}", group)
    return out


def _globals(side: _File, ignore: Collection[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    skip = {_spec.VERSION_KEY, *ignore}
    for name in side.f.attrs:
        if name not in skip and _visible(name):
            raw = side.f.attrs[name]
            info = h5py.check_string_dtype(side.f.attrs.get_id(name).dtype)
            out[name] = side.value(raw, info is not None and info.encoding == "ascii")
    group = side.f.get(_spec.GLOBAL_ATTRS)
    if isinstance(group, h5py.Group):
        for name, dset in _members(group).items():
            if name not in skip and isinstance(dset, h5py.Dataset):
                out[name] = side.value(dset[()], dset.dtype.kind == "S")
    return out


def _edge_part(dset: h5py.Dataset, part: str) -> np.ndarray:
    values = np.asarray(dset[()])
    if part == "w":
        return values.astype(np.float64)
    if values.dtype.kind == "f" and np.all(values == np.round(values)):
        return values.astype(np.int64)
    return values.astype(np.int64) if values.dtype.kind in "biu" else values


def assert_loom_identical(
    actual: str | os.PathLike,
    expected: str | os.PathLike,
    *,
    check_spec_version: bool = True,
    layers: bool = True,
    attrs: bool = True,
    graphs: bool = True,
    globals: bool = True,
    ignore_globals: Collection[str] = (),
    check_global_dtypes: bool = True,
) -> None:
    """Assert that two Loom files hold the same content, reading both with h5py.

    Compared, each only when its switch is on:

    * layers (``/matrix``, ``/layers/*``): dtype, shape and every value bit for bit, so
      NaN payloads and ``-0.0`` against ``0.0`` count as differences;
    * row and column attributes: strings as text, decoded by each file's spec version
      (strict variable-length UTF-8 in 3.0.0, fixed-length ASCII with XML character
      references before), so a 2.0.1 and a 3.0.0 file with the same text are identical;
      numbers by dtype, shape and bits;
    * graphs (``/row_graphs/*``, ``/col_graphs/*``, legacy ``row_edges``/``col_edges``):
      every edge, in order: ``a`` and ``b`` as int64, ``w`` as float64;
    * global attributes (``/attrs/*`` and root attributes), decoded; 1-element string
      arrays unwrapped; ``LOOM_SPEC_VERSION`` and the names in ``ignore_globals`` skipped;
    * the spec version (``check_spec_version``).

    Objects whose names contain ``.loomx-tmp-`` (unfinished writes) are ignored.  Storage
    (chunks, compression, where objects lie in the file) is not compared.

    Parameters
    ----------
    actual, expected
        Paths of the two Loom files.
    check_spec_version
        Whether the files' ``LOOM_SPEC_VERSION`` must be equal.
    layers, attrs, graphs, globals
        Which parts to compare.
    ignore_globals
        Global attribute names to skip, e.g. loompy's timestamps
        ``("CreationDate", "last_modified")``.
    check_global_dtypes
        If false, scalar numeric global attributes compare by value only (``np.uint8(1)``
        equals ``np.int64(1)``): loomx hands globals out as Python scalars, so their width
        does not survive a trip through a Dataset.

    Raises
    ------
    AssertionError
        At the first difference, naming the HDF5 path, what differs and, for arrays, the
        first differing index.

    Examples
    --------
    >>> import numpy as np
    >>> from loomx.testing import assert_loom_identical, write_loom_h5py
    >>> write_loom_h5py("a.loom", {"": np.eye(3)})  # doctest: +SKIP
    >>> write_loom_h5py("b.loom", {"": np.eye(3)}, version="2.0.1")  # doctest: +SKIP
    >>> assert_loom_identical("a.loom", "b.loom", check_spec_version=False)  # doctest: +SKIP
    """
    with h5py.File(actual, "r") as fa, h5py.File(expected, "r") as fe:
        a, e = _File(fa, os.fspath(actual)), _File(fe, os.fspath(expected))
        checks: list[Callable[[_File, _File], None]] = []
        if check_spec_version:
            checks.append(_check_version)
        if layers:
            checks.append(_check_layers)
        if attrs:
            checks.append(_check_attrs)
        if graphs:
            checks.append(_check_graphs)
        if globals:
            checks.append(lambda x, y: _check_globals(x, y, ignore_globals, check_global_dtypes))
        for check in checks:
            check(a, e)


def _check_version(a: _File, e: _File) -> None:
    if a.version != e.version:
        _fail(f"/{_spec.GLOBAL_ATTRS}/{_spec.VERSION_KEY}", "spec versions", a.version, e.version)


def _check_layers(a: _File, e: _File) -> None:
    mine, theirs = _layers(a), _layers(e)
    _same_names("layers (/matrix, /layers)", mine, theirs)
    for path, dset in theirs.items():
        _compare_dataset(path, mine[path], dset)


def _check_attrs(a: _File, e: _File) -> None:
    for space in (_spec.ROW_ATTRS, _spec.COL_ATTRS):
        mine, theirs = _members(a.f.get(space)), _members(e.f.get(space))
        _same_names(f"/{space}", mine, theirs)
        for name, dset in theirs.items():
            _compare_values(f"/{space}/{name}", _attribute(a, mine[name]), _attribute(e, dset))


def _check_graphs(a: _File, e: _File) -> None:
    mine, theirs = _graphs(a), _graphs(e)
    _same_names("graphs (/row_graphs, /col_graphs)", mine, theirs)
    for path, group in theirs.items():
        for part in ("a", "b", "w"):
            where = f"{path}/{part}"
            if (part in mine[path]) != (part in group):
                _fail(where, "presence", part in mine[path], part in group)
            if part not in group:
                continue
            x, y = _edge_part(mine[path][part], part), _edge_part(group[part], part)
            if x.shape != y.shape:
                _fail(where, "edge counts", x.shape, y.shape)
            _compare_values(where, x, y)


def _check_globals(a: _File, e: _File, ignore: Collection[str], dtypes: bool) -> None:
    mine, theirs = _globals(a, ignore), _globals(e, ignore)
    _same_names("global attributes", mine, theirs)
    for name, value in theirs.items():
        path = f"/{_spec.GLOBAL_ATTRS}/{name}"
        other = mine[name]
        if not dtypes and _scalar_number(value) and _scalar_number(other):
            x, y = other.item(), value.item()
            if x != y and not (x != x and y != y):  # NaN equals NaN here
                _fail(path, "values", other, value)
            continue
        _compare_values(path, other, value)


def _scalar_number(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "biuf"

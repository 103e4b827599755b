"""The one mapping between Loom objects and xarray names, dims and values.

Naming rule (reversible)
------------------------
* ``/matrix`` is the data variable ``matrix``; ``/layers/X`` is the data variable ``X``.
* ``/row_attrs/X`` and ``/col_attrs/X`` are coordinates ``X`` on the row or column dim.
* A Loom name that appears in more than one of ``layers``, ``row_attrs`` and ``col_attrs``,
  or that equals a dimension name or ``matrix``, or that already looks qualified, is
  *qualified* everywhere it appears: ``"{namespace}:{name}"``, e.g. ``row_attrs:X_LogCV`` and
  ``col_attrs:X_LogCV``.  The inverse splits at the first ``:`` when the prefix is a namespace.
* Graph ``/col_graphs/KNN`` is stored as side-variables that are always qualified:
  ``col_graphs:KNN`` (original vertex number, on the ``col`` dim) and ``col_graphs:KNN:a``,
  ``:b``, ``:w`` (the edge list, on the dim ``col_graphs:KNN:edge``).

Extra dimensions of an N-D attribute ``X`` are named ``X_dim_1``, ``X_dim_2``, ...

Strings
-------
Spec 3.0.0 stores variable-length UTF-8; it is decoded strictly, never HTML-unescaped.
Older files store fixed-length ASCII with XML character references (``&#233;``), decoded
by :func:`xml_unescape` (XML rules: numeric references and the five predefined entities;
:func:`html.unescape` would turn ``&#145;`` into ``‘`` by HTML's Windows-1252 rule).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import dask
import h5py
import numpy as np

from . import _spec
from .errors import LoomFormatError, LoomInvalidNameError

DEFAULT_DIMS: tuple[str, str] = ("row", "col")
SEPARATOR = ":"
NAMESPACES = (_spec.LAYERS, _spec.ROW_ATTRS, _spec.COL_ATTRS, _spec.ROW_GRAPHS, _spec.COL_GRAPHS)
GRAPH_PARTS = ("a", "b", "w")

STRING_DTYPE = h5py.string_dtype("utf-8")
"""The HDF5 dtype of 3.0.0 strings: variable-length UTF-8."""

BLOCK_BYTES = 16 * 2**20
"""Target raw size of one dask block of a layer, read or written (see :func:`block_bytes`).

16 MiB rather than dask's 128 MiB default: a block's NaN check, reductions and packing then
run in cache, and blocks stay below glibc's largest ``mmap`` threshold (32 MiB), so freed
blocks are reused instead of every new one paying page faults (measured in
``benchmarks/README.md``: per-row sums 1.4-2.0x faster than with 64 MiB blocks)."""


def block_bytes() -> int:
    """Raw bytes per dask block of a layer: :data:`BLOCK_BYTES`, or dask's
    ``array.chunk-size`` setting when that is smaller (``dask.config.set`` changes it)."""
    configured = dask.utils.parse_bytes(dask.config.get("array.chunk-size"))
    return int(min(BLOCK_BYTES, configured))


# --------------------------------------------------------------------------- names


def dataset_dims(ds: Any) -> tuple[str, str]:
    """The (row, col) dims of a Loom Dataset: ``ds.encoding["loom_dims"]``, or, when an
    xarray operation dropped the encoding, the dims of ``matrix``; else the defaults."""
    dims = ds.encoding.get("loom_dims")
    if dims is None and "matrix" in ds.data_vars and ds["matrix"].ndim == 2:
        dims = ds["matrix"].dims
    return tuple(dims or DEFAULT_DIMS)  # type: ignore[return-value]


def qualify(namespace: str, name: str) -> str:
    """``("row_attrs", "X")`` -> ``"row_attrs:X"``."""
    return f"{namespace}{SEPARATOR}{name}"


def split_qualified(var_name: str) -> tuple[str | None, str]:
    """Inverse of :func:`qualify`: ``"row_attrs:X"`` -> ``("row_attrs", "X")``.

    A name without a known namespace prefix gives ``(None, var_name)``.
    """
    prefix, sep, rest = str(var_name).partition(SEPARATOR)
    if sep and prefix in NAMESPACES and rest:
        return prefix, rest
    return None, str(var_name)


def check_link_name(name: str, *, path: str | None = None, h5path: str = "/") -> None:
    """Refuse a name that cannot be an HDF5 link (:class:`LoomInvalidNameError`)."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise LoomInvalidNameError(
            f"name {name!r} cannot be stored as an HDF5 link; expected a non-empty name "
            "without '/' (rename the variable)",
            path=path,
            h5path=h5path,
        )


def path_kind(h5path: str) -> str:
    """``"/matrix"`` and ``"/layers/X"`` -> ``"layer"``; ``"/row_attrs/X"`` -> ``"row_attrs"``."""
    if h5path == f"/{_spec.MATRIX}" or h5path.startswith(f"/{_spec.LAYERS}/"):
        return "layer"
    return h5path.split("/")[1]


def variable_paths(ds: Any, dims: Sequence[str], *, path: str | None = None) -> dict[str, str]:
    """The HDF5 path of every layer and attribute of ``ds``, by variable name.

    The inverse of the naming rule: ``matrix`` -> ``/matrix``; qualified names go to their
    namespace; other ``(row, col)`` (or ``(col, row)``) data variables are layers; other
    variables whose first dim is the row or column dim are attributes.  Graph
    side-variables and coordinates of extra dims are left out (graphs:
    :func:`parse_graph_var`).

    Raises
    ------
    LoomFormatError
        A data variable whose dims fit nowhere.
    LoomInvalidNameError
        A name that cannot be a link, or two variables mapping to one path.
    """
    dims = tuple(dims)
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for key, var in ds.variables.items():
        name = str(key)
        if parse_graph_var(name) is not None:
            continue
        space, raw = split_qualified(name)
        is_data = key in ds.data_vars
        if name == _spec.MATRIX and space is None:
            h5path = f"/{_spec.MATRIX}"
        elif space in (_spec.LAYERS, _spec.ROW_ATTRS, _spec.COL_ATTRS):
            h5path = f"/{space}/{raw}"
        elif var.ndim and var.dims[0] in dims:
            if is_data and sorted(var.dims) == sorted(dims):  # (col, row) is a layer too
                space = _spec.LAYERS
            else:
                space = _spec.ROW_ATTRS if var.dims[0] == dims[0] else _spec.COL_ATTRS
            h5path = f"/{space}/{raw}"
        elif is_data:
            raise LoomFormatError(
                f"data variable {name!r} has dims {var.dims}; expected {dims} or a first dim "
                f"in {dims} (drop it or use ds.attrs)",
                path=path,
                h5path="/",
            )
        else:
            continue  # coordinates of extra dims (e.g. field names of an embedding)
        check_link_name(raw, path=path, h5path=h5path)
        if h5path in seen:
            raise LoomInvalidNameError(
                f"variables {seen[h5path]!r} and {name!r} both map here; rename one",
                path=path,
                h5path=h5path,
            )
        out[name] = h5path
        seen[h5path] = name
    return out


def extra_dim_names(var_name: str, ndim: int) -> tuple[str, ...]:
    """Names of the trailing dims of an N-D attribute: ``X_dim_1``, ``X_dim_2``, ..."""
    return tuple(f"{var_name}_dim_{k}" for k in range(1, ndim))


def assign_names(
    layers: Iterable[str],
    row_attrs: Iterable[str],
    col_attrs: Iterable[str],
    dims: Sequence[str] = DEFAULT_DIMS,
) -> dict[tuple[str, str], str]:
    """Map ``(namespace, loom_name)`` to the xarray variable name, by the module's rule.

    ``/matrix`` is given as ``("layers", "")`` -> ``"matrix"`` when present in ``layers``.
    """
    spaces = {
        _spec.LAYERS: [n for n in layers if n != ""],
        _spec.ROW_ATTRS: list(row_attrs),
        _spec.COL_ATTRS: list(col_attrs),
    }
    counts = Counter(n for names in spaces.values() for n in set(names))
    all_raw = {n for names in spaces.values() for n in names}
    reserved = set(dims) | {_spec.MATRIX}
    reserved |= {f"{n}_dim_{k}" for n in all_raw for k in range(1, 4)}
    out: dict[tuple[str, str], str] = {(_spec.LAYERS, ""): _spec.MATRIX}
    for space, names in spaces.items():
        for name in names:
            clash = counts[name] > 1 or name in reserved or split_qualified(name)[0] is not None
            out[(space, name)] = qualify(space, name) if clash else name
    return out


def graph_var_names(namespace: str, graph: str) -> dict[str, str]:
    """Variable and dim names of graph side-variables.

    Returns keys ``"vertex"``, ``"edge"`` (the dim), ``"a"``, ``"b"``, ``"w"``.
    """
    base = qualify(namespace, graph)
    names = {"vertex": base, "edge": f"{base}{SEPARATOR}edge"}
    names.update({part: f"{base}{SEPARATOR}{part}" for part in GRAPH_PARTS})
    return names


def parse_graph_var(var_name: str) -> tuple[str, str, str] | None:
    """``"col_graphs:KNN:a"`` -> ``("col_graphs", "KNN", "a")``; ``"col_graphs:KNN"`` ->
    ``("col_graphs", "KNN", "vertex")``; anything else -> ``None``."""
    space, rest = split_qualified(var_name)
    if space not in (_spec.ROW_GRAPHS, _spec.COL_GRAPHS):
        return None
    graph, sep, part = rest.rpartition(SEPARATOR)
    if sep and part in (*GRAPH_PARTS, "edge"):
        return space, graph, part
    return space, rest, "vertex"


# --------------------------------------------------------------------------- strings

_XML_REFERENCE = re.compile(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|amp|lt|gt|quot|apos);")
_XML_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def _xml_reference(match: re.Match[str]) -> str:
    ref = match.group(1)
    if ref[0] != "#":
        return _XML_ENTITIES[ref]
    code = int(ref[2:], 16) if ref[1] in "xX" else int(ref[1:])
    return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else match.group(0)


def xml_unescape(text: str) -> str:
    """Decode XML character references: ``"caf&#233;"`` -> ``"café"``."""
    return _XML_REFERENCE.sub(_xml_reference, text) if "&" in text else text


def is_string_dtype(dtype: np.dtype) -> bool:
    """Whether an HDF5-backed dtype holds strings (vlen or fixed-length)."""
    dtype = np.dtype(dtype)
    return h5py.check_string_dtype(dtype) is not None or dtype.kind in "SU"


def decode_strings(raw: np.ndarray, *, fixed_length: bool, legacy: bool) -> np.ndarray:
    """Decode an array of raw HDF5 strings to an object array of ``str``.

    Parameters
    ----------
    raw
        Array of ``bytes`` (or ``str``) as h5py returns it.
    fixed_length
        True for fixed-length ``S`` strings.
    legacy
        True for files older than spec 3.0.0: fixed-length strings then hold ASCII with XML
        character references, which are unescaped.

    Raises
    ------
    UnicodeDecodeError
        When bytes are not valid UTF-8 (callers wrap this with the HDF5 path).
    """
    unescape = fixed_length and legacy
    flat = raw.ravel()
    out = np.empty(flat.shape, dtype=object)
    for i, item in enumerate(flat):
        text = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        out[i] = xml_unescape(text) if unescape else text
    return out.reshape(raw.shape)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def escape_legacy(text: str) -> bytes:
    """Text as pre-3.0.0 files store it: ASCII with XML character references."""
    return text.encode("ascii", "xmlcharrefreplace")


def encode_strings(values: np.ndarray, *, legacy: bool) -> np.ndarray:
    """Encode strings for writing: vlen UTF-8 (3.0.0) or escaped fixed-length ASCII (older)."""
    flat = np.asarray(values, dtype=object).ravel()
    texts = [_as_text(v) for v in flat]
    if legacy:
        encoded = [escape_legacy(t) for t in texts]
        width = max((len(e) for e in encoded), default=1) or 1
        return np.array(encoded, dtype=f"S{width}").reshape(np.shape(values))
    return np.array(texts, dtype=object).reshape(np.shape(values))


def decode_value(value: Any, *, legacy: bool, ascii_text: bool = False) -> Any:
    """Decode a global attribute value: decode bytes and strings, unwrap 1-element string
    arrays (LoomExperiment stores ``[b'text']``); numeric arrays keep their shape.

    In legacy files, bytes and ASCII-typed text (``ascii_text``) are XML-unescaped.
    """
    if isinstance(value, np.ndarray) and value.dtype.kind in "SOU":
        value = _spec.unwrap_scalar(value)
    if isinstance(value, str):
        return xml_unescape(value) if legacy and ascii_text else value
    if isinstance(value, bytes):
        text = value.decode("utf-8")
        return xml_unescape(text) if legacy else text
    if isinstance(value, np.ndarray) and (value.dtype.kind in "SO"):
        fixed = value.dtype.kind == "S"
        try:
            return decode_strings(value, fixed_length=fixed, legacy=legacy)
        except (UnicodeDecodeError, AttributeError):
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- compound


def compound_to_array(raw: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """A structured (compound) array of shape (n,) -> a 2-D (n, n_fields) array and field names.

    Fields are promoted to one common numeric dtype.  Non-numeric fields are not supported.
    """
    names = list(raw.dtype.names or ())
    dtypes = [raw.dtype.fields[n][0] for n in names]
    if any(d.kind not in "biuf" or d.shape for d in dtypes):
        raise TypeError("compound attribute with non-numeric or nested fields")
    common = np.result_type(*dtypes)
    out = np.empty((*raw.shape, len(names)), dtype=common)
    for k, name in enumerate(names):
        out[..., k] = raw[name]
    return out, names


def encode_attr_values(values: np.ndarray, *, legacy: bool) -> np.ndarray:
    """Normalise attribute values for writing: bool -> uint8, strings per spec version."""
    values = np.asarray(values)
    if values.dtype.kind == "b":
        return values.astype(np.uint8)
    if values.dtype.kind in "USO" or values.dtype.kind == "T":
        return encode_strings(values, legacy=legacy)
    return values


def encode_global(value: Any, *, legacy: bool) -> np.ndarray:
    """A global attribute as stored: a scalar vlen UTF-8 string (3.0.0) or escaped ASCII
    bytes (older); numbers and arrays as attribute values (:func:`encode_attr_values`).

    Raises
    ------
    TypeError
        A value of another type (callers add the HDF5 path).
    """
    value = value.decode("utf-8") if isinstance(value, bytes) else value
    if isinstance(value, str):
        return np.array(escape_legacy(value)) if legacy else np.array(value, dtype=STRING_DTYPE)
    if isinstance(value, bool | int | float | np.number | np.bool_ | list | tuple | np.ndarray):
        return encode_attr_values(np.asarray(value), legacy=legacy)
    raise TypeError(
        f"found a global attribute of type {type(value).__name__}; expected a str, number, "
        "bool or an array of those"
    )


# --------------------------------------------------------------------------- graphs


def whole_numbers(values: np.ndarray) -> bool:
    """Whether float graph vertices (files from the wild) are all whole numbers: the rule
    under which loomx accepts them as integer vertex indices."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return True
    return values.dtype.kind == "f" and bool(
        np.all(np.isfinite(values) & (values == np.round(values)))
    )

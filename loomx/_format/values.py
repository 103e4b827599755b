"""How Loom values are stored: strings per spec version (UTF-8 or XML-escaped ASCII),
compound attributes, global attributes and graph vertex numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from loomx._format import spec as _spec

__all__ = [
    "STRING_DTYPE",
    "array_to_compound",
    "compound_dtype",
    "compound_to_array",
    "decode_strings",
    "decode_value",
    "encode_attr_values",
    "encode_global",
    "encode_strings",
    "is_compound_request",
    "is_string_dtype",
    "whole_numbers",
    "xml_unescape",
]

STRING_DTYPE = h5py.string_dtype("utf-8")
"""The HDF5 dtype of 3.0.0 strings: variable-length UTF-8."""


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


COMPOUND = "compound"
"""The encoding ``dtype`` that asks for a compound attribute with one field per label of
the attribute's second dim, each field of the values' own dtype."""


def is_compound_request(dtype: Any) -> bool:
    """Whether an encoding ``dtype`` asks for a compound attribute: ``"compound"`` or a
    structured dtype (as :func:`loomx.open_loom` records a compound attribute's)."""
    if isinstance(dtype, str):
        return dtype == COMPOUND
    try:
        return dtype is not None and np.dtype(dtype).names is not None
    except TypeError:
        return False


def compound_dtype(wanted: Any, fields: Sequence[Any] | None, values_dtype: Any) -> np.dtype:
    """The compound dtype a 2-D attribute is written as: the rule every writer follows.

    Field names and their order are the labels of the attribute's second dim (the
    ``<name>_dim_1`` coordinate :func:`loomx.open_loom` makes), else the names of ``wanted``;
    each field keeps the dtype ``wanted`` gives it, else takes the values' dtype.

    >>> compound_dtype([("_X", "f8"), ("_Y", "f4")], ["_Y", "_X"], "f8").descr
    [('_Y', '<f4'), ('_X', '<f8')]

    Raises
    ------
    ValueError
        No field names, or names that are not distinct.
    """
    own = np.dtype(wanted) if wanted is not None and wanted != COMPOUND else None
    names = [str(f) for f in fields] if fields is not None else list(own.names if own else ())
    if not names or len(set(names)) != len(names) or any(not n for n in names):
        raise ValueError(
            f"found field names {names}; expected distinct, non-empty names (the labels of "
            "the attribute's second dim)"
        )
    known = own.fields if own is not None else {}
    return np.dtype([(n, known[n][0] if n in known else np.dtype(values_dtype)) for n in names])


def array_to_compound(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A 2-D ``(n, n_fields)`` array -> a structured ``(n,)`` array of ``dtype``, exactly.

    The inverse of :func:`compound_to_array`.

    Raises
    ------
    ValueError
        Values of another shape, non-numeric values, or a value its field's dtype does not
        hold exactly (never a silent change).
    """
    values = np.asarray(values)
    names = list(dtype.names or ())
    if values.ndim != 2 or values.shape[1] != len(names):
        raise ValueError(
            f"found values of shape {values.shape}; expected (n, {len(names)}) for the "
            f"fields {names}"
        )
    if values.dtype.kind not in "biuf":
        raise ValueError(f"found dtype {values.dtype}; a compound attribute holds numbers")
    out = np.empty(values.shape[0], dtype=dtype)
    for k, name in enumerate(names):
        column, field = values[:, k], dtype.fields[name][0]
        cast = column.astype(field)
        back = cast.astype(column.dtype)
        exact = np.array_equal(back, column, equal_nan=column.dtype.kind == "f")
        if field.kind == "f" and column.dtype.kind == "f":
            exact = exact and np.array_equal(np.signbit(back), np.signbit(column))
        if not exact:
            raise ValueError(
                f"field {name!r} is {field}; its values ({column.dtype}) do not all fit it "
                "exactly (cast them, or ask for another dtype through encoding)"
            )
        out[name] = cast
    return out


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

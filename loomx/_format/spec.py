"""The Loom file format as data: paths, versions and allowed dtypes.

Specification: https://linnarsson-lab.org/loompy/format/index.html (version 3.0.0; 2.0.1
is the previous version).  This module states the rules; it holds no I/O policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "AXIS_OF_ATTRS",
    "AXIS_OF_GRAPHS",
    "COL_ATTRS",
    "COL_GRAPHS",
    "GLOBAL_ATTRS",
    "LAYERS",
    "LAYER_DTYPES",
    "LEGACY_GRAPH_GROUPS",
    "LOOMPY_COMPRESSION_LEVEL",
    "LOOMPY_LAYER_CHUNKS",
    "LOOM_SPEC_VERSION",
    "MATRIX",
    "REQUIRED_GROUPS_3",
    "ROW_ATTRS",
    "ROW_GRAPHS",
    "VERSION_KEY",
    "is_layer_dtype",
    "parse_version",
    "read_version",
    "unwrap_scalar",
    "uses_vlen_utf8",
]

LOOM_SPEC_VERSION = "3.0.0"
"""The spec version loomx writes into new files."""

MATRIX = "matrix"
LAYERS = "layers"
ROW_ATTRS = "row_attrs"
COL_ATTRS = "col_attrs"
ROW_GRAPHS = "row_graphs"
COL_GRAPHS = "col_graphs"
GLOBAL_ATTRS = "attrs"
VERSION_KEY = "LOOM_SPEC_VERSION"

LEGACY_GRAPH_GROUPS = {ROW_GRAPHS: "row_edges", COL_GRAPHS: "col_edges"}
"""Groups that pre-2.0 writers (LoomR, SCope) used for graphs; read as graphs, never renamed."""

REQUIRED_GROUPS_3 = (GLOBAL_ATTRS, LAYERS, ROW_ATTRS, COL_ATTRS, ROW_GRAPHS, COL_GRAPHS)
"""Groups a 3.0.0 file written by loomx always has, even when empty."""

AXIS_OF_ATTRS = {ROW_ATTRS: 0, COL_ATTRS: 1}
AXIS_OF_GRAPHS = {ROW_GRAPHS: 0, COL_GRAPHS: 1}

LAYER_DTYPES = tuple(
    np.dtype(t)
    for t in (
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    )
)
"""The only dtypes the spec allows for ``/matrix`` and ``/layers/*``."""

LOOMPY_LAYER_CHUNKS = 64
"""loompy writes layers in (64, 64) chunks, gzip level 2, growable along columns."""
LOOMPY_COMPRESSION_LEVEL = 2


def is_layer_dtype(dtype: np.dtype) -> bool:
    """Whether ``dtype`` may be stored as a Loom layer."""
    return np.dtype(dtype) in LAYER_DTYPES


def parse_version(version: str) -> tuple[int, ...]:
    """``"3.0.0"`` -> ``(3, 0, 0)``; anything unparsable -> ``(0, 0, 0)``."""
    parts = []
    for piece in str(version).strip().split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            return (0, 0, 0)
        parts.append(int(digits))
    return tuple(parts) if parts else (0, 0, 0)


def uses_vlen_utf8(version: str) -> bool:
    """3.0.0 and later store strings as variable-length UTF-8; older ones as escaped ASCII."""
    return parse_version(version) >= (3, 0, 0)


def unwrap_scalar(value: Any) -> Any:
    """Unwrap 1-element arrays (LoomExperiment writes ``[b'2.0.1']``) to their element."""
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(()).item() if value.dtype.kind != "O" else value.reshape(())[()]
    return value


def version_from_raw(value: Any) -> str:
    """Normalise a raw ``LOOM_SPEC_VERSION`` value (bytes, str, 1-element array) to ``str``."""
    value = unwrap_scalar(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).strip()


def read_version(f: Any) -> tuple[str, str | None]:
    """The spec version of an open file and where it is stored.

    ``/attrs/LOOM_SPEC_VERSION`` (3.0.0), overridden by a root attribute of that name
    (older files); 1-element arrays are unwrapped.  Returns ``(version, location)`` with
    location ``"/attrs"``, ``"/"`` or ``None`` (no version: read as ``"0.0.0"``).
    """
    raw, location = None, None
    group = f.get(GLOBAL_ATTRS)
    if group is not None and hasattr(group, "keys") and VERSION_KEY in group:
        raw, location = group[VERSION_KEY][()], "/" + GLOBAL_ATTRS
    if VERSION_KEY in f.attrs:
        raw, location = f.attrs[VERSION_KEY], "/"
    if raw is None:
        return "0.0.0", None
    return version_from_raw(raw), location

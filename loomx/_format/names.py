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

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from loomx._format import spec as _spec
from loomx.errors import LoomFormatError, LoomInvalidNameError

__all__ = [
    "DEFAULT_DIMS",
    "GRAPH_PARTS",
    "assign_names",
    "check_link_name",
    "dataset_dims",
    "extra_dim_names",
    "graph_var_names",
    "parse_graph_var",
    "path_kind",
    "split_qualified",
    "variable_paths",
]

DEFAULT_DIMS: tuple[str, str] = ("row", "col")
SEPARATOR = ":"
NAMESPACES = (_spec.LAYERS, _spec.ROW_ATTRS, _spec.COL_ATTRS, _spec.ROW_GRAPHS, _spec.COL_GRAPHS)
GRAPH_PARTS = ("a", "b", "w")


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

"""What a Loom file holds, as data (for ``loomx info`` and its ``--json``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._format.graphs import graph_names
from loomx._hdf5.filesystem import is_url
from loomx._hdf5.remote import RemoteSource
from loomx._read.backend import open_loom
from loomx._read.store import LoomStore

__all__ = ["describe_file", "format_description", "shorten"]


def describe_file(path: str | os.PathLike[str], locking: bool | None = None) -> dict[str, Any]:
    """Shape, spec version, layers (dtype, chunks, compression, size on disk), attributes,
    graphs and global attributes of a Loom file, as plain JSON-able data.

    Reads metadata only (and the edge counts of graphs).  A commit a writer recorded but
    did not carry out is described as :func:`~loomx.open_loom` reads it: the storage facts
    of a layer it replaces come from the staged dataset.

    Examples
    --------
    >>> describe_file("example.loom")["shape"]  # doctest: +SKIP
    [500, 1200]
    """
    path = os.fspath(path)
    with open_loom(path, chunks=None, locking=locking) as ds:
        row_dim, col_dim = conv.dataset_dims(ds)
        paths = conv.variable_paths(ds, (row_dim, col_dim))
        out: dict[str, Any] = {
            "file": path,
            "file_bytes": RemoteSource(path).size if is_url(path) else os.path.getsize(path),
            "shape": [ds.sizes[row_dim], ds.sizes[col_dim]],
            "spec_version": ds.encoding.get("loom_spec_version"),
            "layers": {},
            "row_attrs": {},
            "col_attrs": {},
            "row_graphs": {},
            "col_graphs": {},
            "globals": {str(k): _jsonable(v) for k, v in ds.attrs.items()},
        }
        layer_paths = [p for p in paths.values() if conv.path_kind(p) == "layer"]
        stored = _bytes_on_disk(path, locking, layer_paths)
        for name, h5path in paths.items():
            kind = conv.path_kind(h5path)
            var = ds[name]
            item = {
                "path": h5path,
                "variable": name,
                "dtype": str(var.dtype),
                "shape": list(var.shape),
            }
            if kind == "layer":
                item.update(
                    chunks=_jsonable(var.encoding.get("chunksizes")),
                    compression=var.encoding.get("compression"),
                    compression_opts=_jsonable(var.encoding.get("compression_opts")),
                    bytes_on_disk=stored[h5path],
                    bytes_raw=int(np.prod(var.shape, dtype=np.int64)) * var.dtype.itemsize,
                )
                out["layers"]["" if h5path == f"/{_spec.MATRIX}" else name] = item
            else:
                out[kind][h5path.rsplit("/", 1)[1]] = item
        for space in (_spec.ROW_GRAPHS, _spec.COL_GRAPHS):
            for graph in graph_names(ds, space):
                names = conv.graph_var_names(space, graph)
                edges = ds.sizes.get(names["edge"], 0)
                out[space][graph] = {"edges": int(edges)}
    return out


def _bytes_on_disk(path: str, locking: bool | None, h5paths: list[str]) -> dict[str, int]:
    """``{h5path: bytes stored}`` of the datasets :func:`~loomx.open_loom` reads for
    ``h5paths``: while a recorded commit is not carried out, its staged objects (the
    pending-commit view of :meth:`LoomStore.resolve`), not the ones they replace."""
    store = LoomStore(path, locking=locking)
    try:
        store.read_layout()  # learns the pending commits, as open_loom's store does
        links = {h5path: store.resolve(h5path) for h5path in h5paths}
        with store.open() as f:
            return {h5path: int(f[link].id.get_storage_size()) for h5path, link in links.items()}
    finally:
        store.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, tuple):
        return list(value)
    return value


def format_description(info: dict[str, Any]) -> str:
    """``describe_file``'s result as the text ``loomx info`` prints."""
    rows, cols = info["shape"]
    lines = [f"{info['file']}: {rows} rows x {cols} columns, {_size(info['file_bytes'])}"]
    lines.append(f"  spec version: {info['spec_version']}")
    for name, layer in info["layers"].items():
        ratio = layer["bytes_raw"] / layer["bytes_on_disk"] if layer["bytes_on_disk"] else 0
        lines.append(
            f"  layer {name or 'matrix'}: {layer['dtype']}, HDF5 chunks "
            f"{tuple(layer['chunks']) if layer['chunks'] else None}, {layer['compression']}, "
            f"{_size(layer['bytes_on_disk'])} on disk ({ratio:.1f}x)"
        )
    for space in (_spec.ROW_ATTRS, _spec.COL_ATTRS):
        attrs = info[space]
        lines.append(f"  {space} ({len(attrs)}):" + ("" if attrs else " -"))
        names = {n: str(a.get("variable", n)) for n, a in attrs.items()}
        width = max(map(len, names.values()), default=0)
        for name, attr in attrs.items():
            shape = " x ".join(map(str, attr["shape"]))
            dtype = "string" if attr["dtype"] == "object" else attr["dtype"]
            lines.append(f"    {names[name]:<{width}}  {dtype:<8}  {shape}")
    for space in (_spec.ROW_GRAPHS, _spec.COL_GRAPHS):
        graphs = ", ".join(f"{n} ({g['edges']} edges)" for n, g in info[space].items())
        lines.append(f"  {space}: {graphs or '-'}")
    for key, value in info["globals"].items():
        lines.append(f"  attrs[{key!r}] = {shorten(str(value))}")
    return "\n".join(lines)


def shorten(text: str, width: int = 60) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis when longer.

    >>> shorten("a" * 70, 10)
    'aaaaaaa...'
    """
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"

"""A cloud-native chunk index of a Loom file: kerchunk references (zarr v2 layout).

:func:`to_kerchunk` records where every chunk of every layer lies in the Loom file (byte
offset and size), with the filters that decode it (deflate as ``zlib``, ``shuffle``,
``fletcher32``), in kerchunk's reference format (version 1).  With it, zarr and xarray read
the layers straight from the file's bytes, without HDF5::

    refs = loomx.to_kerchunk("s3://bucket/pbmc.loom")
    xr.open_dataset(refs, engine="kerchunk")  # or zarr through fsspec "reference://"

and :func:`loomx.open_loom` takes it (``chunk_index=refs``) to skip reading HDF5's chunk
index over the network (the B-tree nodes of a layer are spread over the whole file).

Layers are written at the top level under the names :func:`loomx.open_loom` gives them,
with dims ``("row", "col")`` (``_ARRAY_DIMENSIONS``) and their HDF5 path (``loom_path``).
Unallocated chunks have no key and read as the fill value.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._hdf5.chunks import ChunkIndex
from loomx._hdf5.filters import DEFLATE, FLETCHER32, SHUFFLE
from loomx._read.store import LoomStore
from loomx.errors import LoomFileError, LoomFormatError

__all__ = [
    "check_layers",
    "file_version",
    "indexes_from_references",
    "load_references",
    "to_kerchunk",
    "use_references",
]

_FORMAT_KEY = "loom_file_size"
_VERSION_KEY = "loom_file_version"
_PROTOCOL_KEY = "loom_file_protocol"


def _codec(code: int, values: tuple[int, ...], itemsize: int) -> dict[str, Any]:
    if code == DEFLATE:
        return {"id": "zlib", "level": int(values[0]) if values else 4}
    if code == SHUFFLE:
        return {"id": "shuffle", "elementsize": int(values[0]) if values else itemsize}
    return {"id": "fletcher32"}


def _filter(codec: dict[str, Any], where: str) -> tuple[int, tuple[int, ...]]:
    kind = codec.get("id")
    if kind == "zlib":
        return (DEFLATE, (int(codec.get("level", 4)),))
    if kind == "shuffle":
        return (SHUFFLE, (int(codec["elementsize"]),))
    if kind == "fletcher32":
        return (FLETCHER32, ())
    raise LoomFormatError(
        f"reference index names codec {codec!r}; expected zlib, shuffle or fletcher32 "
        "(the filters of an HDF5 Loom file)",
        path=where,
    )


def _fill_json(value: Any) -> Any:
    """The zarr ``fill_value``: ``None`` for 0 (zarr then reads missing chunks as 0, and
    xarray does not take every 0 for a missing value, as it would a ``_FillValue``)."""
    value = np.asarray(value)[()]
    if value == 0 and not np.signbit(value):
        return None
    if isinstance(value, np.floating):
        if np.isnan(value):
            return "NaN"
        if np.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return float(value)
    return int(value)


def to_kerchunk(
    path_or_url: Any,
    *,
    url: str | None = None,
    storage_options: dict[str, Any] | None = None,
    dims: Sequence[str] = conv.DEFAULT_DIMS,
    locking: bool | None = None,
) -> dict[str, Any]:
    """Kerchunk references to every layer of a Loom file (a cloud-native chunk index).

    Parameters
    ----------
    path_or_url
        The Loom file: a local path or a URL (see :func:`loomx.open_loom`).
    url
        The location written into the references (where readers will fetch the bytes);
        default ``path_or_url`` (a local path made absolute).
    storage_options
        fsspec options for reading a URL.
    dims
        Names of the row and column dims recorded for xarray.
    locking
        HDF5 file locking for a local file.

    Returns
    -------
    dict
        ``{"version": 1, "refs": {...}}``: zarr v2 metadata (``.zgroup``, ``NAME/.zarray``,
        ``NAME/.zattrs``) and one ``"NAME/i.j": [url, offset, size]`` per stored chunk.
        Save it with ``json.dump``.

    Raises
    ------
    LoomFormatError
        A layer is stored in a way zarr cannot decode (HDF5 filters other than deflate,
        shuffle and fletcher32, filters skipped for some chunks, unusual types).
    LoomFileError
        The file has an unfinished write (run :func:`loomx.recover` on it first).

    Examples
    --------
    >>> refs = loomx.to_kerchunk("pbmc.loom", url="s3://bucket/pbmc.loom")  # doctest: +SKIP
    >>> json.dump(refs, open("pbmc.json", "w"))  # doctest: +SKIP
    >>> xr.open_dataset(refs, engine="kerchunk")  # doctest: +SKIP
    """
    store = LoomStore(path_or_url, locking=locking, storage_options=storage_options)
    try:
        layout = store.read_layout()
        if layout.pending or layout.patches:
            raise LoomFileError(
                "has an unfinished write (a pending commit in the file); expected a file at rest: "
                "run loomx.recover on it, then make the references",
                path=store.path,
            )
        target = url
        if target is None:
            target = store.path if store.remote is not None else os.path.abspath(store.path)
        size, version, protocol = file_version(store)
        names = conv.assign_names(layout.layers, layout.row_attrs, layout.col_attrs, dims)
        stamp = {_FORMAT_KEY: size, _VERSION_KEY: version, _PROTOCOL_KEY: protocol}
        refs: dict[str, Any] = {
            ".zgroup": json.dumps({"zarr_format": 2}),
            ".zattrs": json.dumps({**stamp, "loom_spec_version": layout.version}),
        }
        for layer, info in layout.layers.items():
            with store.open() as h5file:
                index = ChunkIndex.from_dataset(h5file[info.h5path])
            name = names[(_spec.LAYERS, layer)]
            refs.update(_layer_refs(index, name, info.h5path, target, list(dims), store.path))
        return {"version": 1, "refs": refs}
    finally:
        store.close()


def file_version(store: LoomStore) -> tuple[int, str | None, str]:
    """``(size, version, protocol)`` of a store's file: the ETag or modification time of a
    remote file and how it is reached, or a local file's modification time (ns)."""
    if store.remote is None:
        st = os.stat(store.path)
        return st.st_size, str(st.st_mtime_ns), "file"
    size, version = store.remote.version or store.remote.check_version()
    return int(size), version, _protocol(store.remote)


def _protocol(remote: Any) -> str:
    if remote.fileobj is not None:
        return "fileobj"
    fs, _ = remote._filesystem()
    found = fs.protocol
    return str(found[0] if isinstance(found, (tuple, list)) else found)


def _layer_refs(
    index: ChunkIndex | None, name: str, h5path: str, url: str, dims: list[str], where: str
) -> dict[str, Any]:
    if index is None or (index.masks != 0).any():
        raise LoomFormatError(
            "stored in a way zarr cannot decode (HDF5 filters other than deflate, shuffle and "
            "fletcher32, filters skipped for some chunks, or an unusual type); expected a "
            "layer loompy or loomx writes",
            path=where,
            h5path=h5path,
        )
    meta = {
        "zarr_format": 2,
        "shape": list(index.shape),
        "chunks": list(index.chunks),
        "dtype": index.dtype.str,
        "fill_value": _fill_json(index.fill_value),
        "order": "C",
        "compressor": None,
        "filters": [_codec(c, v, index.dtype.itemsize) for c, v in index.filters] or None,
    }
    out: dict[str, Any] = {
        f"{name}/.zarray": json.dumps(meta),
        f"{name}/.zattrs": json.dumps({"_ARRAY_DIMENSIONS": dims, "loom_path": h5path}),
    }
    for cell in zip(*np.nonzero(index.offsets >= 0), strict=True):
        key = ".".join(str(int(i)) for i in cell)
        out[f"{name}/{key}"] = [url, int(index.offsets[cell]), int(index.sizes[cell])]
    return out


def load_references(refs: Any, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``refs`` mapping of a reference index given as a dict or a JSON path/URL."""
    if isinstance(refs, (str, os.PathLike)):
        import fsspec

        with fsspec.open(os.fspath(refs), "rt", **(storage_options or {})) as fh:
            refs = json.load(fh)
    if not isinstance(refs, dict):
        raise TypeError(f"chunk_index must be a dict or a JSON path, found {type(refs).__name__}")
    return refs.get("refs", refs) if refs.get("version") == 1 else refs


def _meta(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, (str, bytes)) else dict(value)


def indexes_from_references(refs: dict[str, Any], where: str) -> dict[str, ChunkIndex]:
    """One :class:`~loomx._hdf5.chunks.ChunkIndex` per layer of a reference index, by HDF5 path."""
    out: dict[str, ChunkIndex] = {}
    by_name: dict[str, list[tuple[tuple[int, ...], int, int]]] = {}
    for key, value in refs.items():
        name, _, tail = key.rpartition("/")
        if name and not tail.startswith(".") and isinstance(value, list) and len(value) == 3:
            cell = tuple(int(i) for i in tail.split("."))
            by_name.setdefault(name, []).append((cell, int(value[1]), int(value[2])))
    for key, value in refs.items():
        if not key.endswith("/.zarray"):
            continue
        name = key[: -len("/.zarray")]
        attrs = _meta(refs.get(f"{name}/.zattrs", "{}"))
        if "loom_path" not in attrs:
            continue
        meta = _meta(value)
        shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
        dtype = np.dtype(meta["dtype"])
        if meta.get("compressor") is not None:
            raise LoomFormatError(
                f"reference index of {name!r} has a compressor; expected filters only "
                "(as loomx.to_kerchunk writes them)",
                path=where,
            )
        filters = tuple(_filter(c, where) for c in meta.get("filters") or ())
        grid = tuple(math.ceil(n / c) for n, c in zip(shape, chunks, strict=True))
        offsets = np.full(grid, -1, np.int64)
        sizes = np.zeros(grid, np.int64)
        for cell, offset, size in by_name.get(name, ()):
            offsets[cell], sizes[cell] = offset, size
        fill = meta.get("fill_value")
        fill = 0 if fill is None else float(fill) if isinstance(fill, str) else fill
        out[attrs["loom_path"]] = ChunkIndex(
            shape, dtype, chunks, fill, filters, offsets, sizes, np.zeros(grid, np.uint32)
        )
    return out


def use_references(store: Any, layout: Any, refs: Any) -> None:
    """Hand the chunk indexes of a reference index to a remote store whose layout was read:
    its layers are then read without HDF5's chunk index.  Checks that the index describes
    this file (size, layers' shapes, dtypes and chunks)."""
    if store.remote is None:
        raise ValueError(
            "chunk_index is for remote files (URLs, file objects); a local file's chunk "
            "index is read from disk quickly"
        )
    found = load_references(refs, store.remote.storage_options)
    recorded = _meta(found.get(".zattrs", "{}")).get(_FORMAT_KEY)
    if recorded is not None and int(recorded) != store.remote.size:
        raise LoomFileError(
            f"the reference index was made from a file of {recorded} bytes, this file has "
            f"{store.remote.size}; expected the index of this file (make it again with "
            "loomx.to_kerchunk)",
            path=store.path,
        )
    if layout.pending or layout.patches:
        return  # an unfinished write: read through HDF5's own chunk index
    indexes = indexes_from_references(found, store.path)
    check_layers(store, layout, indexes)
    store.remote.chunk_indexes = indexes


def check_layers(store: Any, layout: Any, indexes: dict[str, ChunkIndex]) -> None:
    """Raise :class:`LoomFormatError` unless each layer's index has its shape, dtype and
    chunks."""
    for info in layout.layers.values():
        index = indexes.get(info.h5path)
        if index is None:
            continue
        if (index.shape, index.dtype, index.chunks) != (
            tuple(info.shape),
            info.dtype,
            tuple(info.chunks or ()) or index.chunks,
        ):
            raise LoomFormatError(
                f"reference index describes shape {index.shape}, dtype {index.dtype}, chunks "
                f"{index.chunks}; the file has {info.shape}, {info.dtype}, {info.chunks}",
                path=store.path,
                h5path=info.h5path,
            )

"""The chunk-index sidecar: a Loom file's chunk index saved beside it, found when the
file is opened by URL.

:func:`write_sidecar` (``loomx index FILE``) writes ``FILE.kerchunk.json``: the kerchunk
references of :func:`loomx.to_kerchunk` (zarr and xarray read the layers with them), led
by a compact copy of each layer's index (offsets, sizes and filter masks, delta-coded,
deflated, base64) and the file's size, version (ETag or modification time) and how it was
reached (``file``, ``http``, ``s3``, ...).  The compact part comes first, with its length,
so :func:`use_sidecar` reads it with one ranged request of the sidecar's head and never
parses the references (a million-chunk layer's references are 50 MB of JSON).

:func:`use_sidecar` uses the sidecar of a remote file when it matches the file: the same
size, and the same version when reached the same way; a sidecar made from a local copy
and uploaded with the file is checked against the last chunk of its largest layer (the
B-tree path to it: a few requests).  One that does not match is refused with a
:class:`~loomx.errors.LoomFormatWarning`, and the file's own chunk index is read.  A plain
kerchunk JSON there (without the compact part) is read whole.

Examples
--------
>>> write_sidecar("pbmc.loom")  # doctest: +SKIP
'pbmc.loom.kerchunk.json'
>>> ds = loomx.open_loom("https://example.org/pbmc.loom")  # finds it  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import json
import os
import warnings
import zlib
from typing import Any

import numpy as np

from loomx._hdf5.chunks import ChunkIndex
from loomx._hdf5.lookup import resolve
from loomx._read.references import (
    check_layers,
    file_version,
    indexes_from_references,
    to_kerchunk,
)
from loomx.errors import LoomFileError, LoomFormatError, LoomFormatWarning

__all__ = ["SIDECAR_SUFFIX", "use_sidecar", "write_sidecar"]

SIDECAR_SUFFIX = ".kerchunk.json"
"""The sidecar of ``FILE`` is ``FILE`` + this suffix, beside it."""
_LEAD = '{"version":1,"loomx_index_bytes":"'
_DIGITS = 12
_HEAD = len(_LEAD) + _DIGITS + len('","loomx_index":')
_FIRST_REQUEST = 1 << 20


def _pack(values: np.ndarray) -> str:
    flat = values.astype(np.int64).ravel()
    deltas = np.diff(flat, prepend=np.int64(0)).astype("<i8")
    return base64.b64encode(zlib.compress(deltas.tobytes(), 6)).decode("ascii")


def _unpack(text: str, shape: tuple[int, ...]) -> np.ndarray:
    deltas = np.frombuffer(zlib.decompress(base64.b64decode(text)), "<i8")
    if deltas.size != int(np.prod(shape)):
        raise ValueError(f"{deltas.size} cells for a grid of {shape}")
    return np.cumsum(deltas).reshape(shape)


def _compact(index: ChunkIndex) -> dict[str, Any]:
    return {
        "shape": list(index.shape),
        "chunks": list(index.chunks),
        "dtype": index.dtype.str,
        "fill_value": index.fill_value.item(),
        "filters": [[code, list(values)] for code, values in index.filters],
        "offsets": _pack(index.offsets),
        "sizes": _pack(index.sizes),
        "masks": _pack(index.masks),
    }


def _index_of(entry: dict[str, Any]) -> ChunkIndex:
    shape, chunks = tuple(entry["shape"]), tuple(entry["chunks"])
    grid = tuple(-(-n // c) for n, c in zip(shape, chunks, strict=True))
    filters = tuple((int(code), tuple(int(v) for v in values)) for code, values in entry["filters"])
    return ChunkIndex(
        shape,
        np.dtype(entry["dtype"]),
        chunks,
        entry["fill_value"],
        filters,
        _unpack(entry["offsets"], grid),
        _unpack(entry["sizes"], grid),
        _unpack(entry["masks"], grid).astype(np.uint32),
    )


def write_sidecar(
    path_or_url: Any,
    output: str | os.PathLike[str] | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    locking: bool | None = None,
) -> str:
    """Save the chunk index of a Loom file beside it, where :func:`loomx.open_loom` finds
    it, or at ``output``.

    Parameters
    ----------
    path_or_url
        The Loom file (local path or URL).
    output
        Where to write; default ``path_or_url`` + :data:`SIDECAR_SUFFIX` (a local file
        only: a URL needs ``output``, then upload it beside the file).
    storage_options, locking
        As for :func:`loomx.to_kerchunk`.

    Returns
    -------
    str
        The path written.

    Examples
    --------
    >>> write_sidecar("pbmc.loom")  # doctest: +SKIP
    'pbmc.loom.kerchunk.json'
    """
    if output is None:
        if not isinstance(path_or_url, (str, os.PathLike)) or "://" in os.fspath(path_or_url):
            raise ValueError(
                f"{path_or_url}: give the output path of the index of a remote file (then "
                f"upload it beside the file, named as the file + {SIDECAR_SUFFIX!r})"
            )
        output = os.fspath(path_or_url) + SIDECAR_SUFFIX
    refs = to_kerchunk(path_or_url, storage_options=storage_options, locking=locking)
    stamp = json.loads(refs["refs"][".zattrs"])
    indexes = indexes_from_references(refs["refs"], os.fspath(output))
    compact = json.dumps(
        {"stamp": stamp, "layers": {h5path: _compact(i) for h5path, i in indexes.items()}},
        separators=(",", ":"),
    )
    target = os.fspath(output)
    temporary = f"{target}.partial-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as fh:
        fh.write(f'{_LEAD}{len(compact):0{_DIGITS}d}","loomx_index":{compact},"refs":')
        json.dump(refs["refs"], fh, separators=(",", ":"))
        fh.write("}")
    os.replace(temporary, target)
    return target


def _read_sidecar(store: Any) -> tuple[dict[str, Any], dict[str, ChunkIndex]] | None:
    """The stamp and chunk indexes of the sidecar beside a remote file (one request for
    the compact part, or the whole file for plain kerchunk JSON); None where there is none."""
    remote = store.remote
    if remote.fileobj is not None:
        return None
    fs, path = remote._filesystem()
    where = path + SIDECAR_SUFFIX
    try:
        data = fs.cat_file(where, start=0, end=_FIRST_REQUEST)
        if data.startswith(_LEAD.encode()):
            length = int(data[len(_LEAD) : len(_LEAD) + _DIGITS])
            if len(data) < _HEAD + length:
                data += fs.cat_file(where, start=len(data), end=_HEAD + length)
            found = json.loads(data[_HEAD : _HEAD + length])
            indexes = {h5path: _index_of(entry) for h5path, entry in found["layers"].items()}
            return found["stamp"], indexes
        if len(data) == _FIRST_REQUEST:
            data += fs.cat_file(where, start=_FIRST_REQUEST)
        refs = json.loads(data)
        refs = refs.get("refs", refs) if refs.get("version") == 1 else refs
        return json.loads(refs.get(".zattrs", "{}")), indexes_from_references(refs, where)
    except (FileNotFoundError, PermissionError):
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zlib.error) as err:
        warnings.warn(
            f"{store.path}: cannot read its chunk-index sidecar ({type(err).__name__}: {err}); "
            "reading the file's own chunk index",
            LoomFormatWarning,
            stacklevel=4,
        )
        return None


def _mismatch(store: Any, stamp: dict[str, Any], indexes: dict[str, ChunkIndex]) -> str:
    """Why a sidecar does not describe this version of the file ("" when it does)."""
    size, version, protocol = file_version(store)
    if stamp.get("loom_file_size") != size:
        return (
            f"it was made from a file of {stamp.get('loom_file_size')} bytes, this one has {size}"
        )
    if stamp.get("loom_file_protocol") == protocol:
        if stamp.get("loom_file_version") != version:
            return (
                f"it was made from version {stamp.get('loom_file_version')!r} of the file, "
                f"this is version {version!r}"
            )
        return ""
    largest = sorted(indexes.items(), key=lambda item: -item[1].offsets.size)[:1]
    with store.open() as h5file:  # made elsewhere (a local copy): one chunk of the largest
        for h5path, given in largest:
            stored = np.argwhere(given.offsets >= 0)
            own = ChunkIndex.from_dataset(h5file[h5path], lazy=True)
            if own is None or not len(stored):
                continue
            cell = tuple(int(i) for i in stored[-1])
            box = tuple(slice(i, i + 1) for i in cell)
            resolve(own, h5file[h5path].id, box, store.remote, small_grid=0)  # the walk
            if (own.offsets[cell], own.sizes[cell]) != (given.offsets[cell], given.sizes[cell]):
                return f"its chunk {cell} of {h5path} is not where the file has it"
    return ""


def use_sidecar(store: Any, layout: Any) -> None:
    """Hand the chunk indexes of a remote file's sidecar to its store (whose layout was
    read) when there is one and it matches the file; warn and do nothing when it does not."""
    if store.remote is None or layout.pending or layout.patches:
        return
    found = _read_sidecar(store)
    if found is None:
        return
    stamp, indexes = found
    try:
        check_layers(store, layout, indexes)
        why = _mismatch(store, stamp, indexes)
    except (LoomFormatError, LoomFileError) as err:
        why = str(err)
    if why:
        warnings.warn(
            f"{store.path}: its chunk-index sidecar ({SIDECAR_SUFFIX}) does not match the "
            f"file ({why}); reading the file's own chunk index. Make it again with "
            "`loomx index`",
            LoomFormatWarning,
            stacklevel=3,
        )
        return
    store.remote.chunk_indexes = indexes

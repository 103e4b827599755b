"""How layers, attributes and graphs are stored: the one place that creates them.

Storage is chosen as xarray's netCDF writers choose it: a variable's ``encoding``
(``chunksizes`` or ``chunks``, ``compression``, ``compression_opts``, ``shuffle``,
``fletcher32``, ``dtype``), as :func:`loomx.open_loom` records it, is kept; the
``encoding=`` argument of :func:`loomx.to_loom` overrides it per variable, with the same keys
and errors as :meth:`xarray.Dataset.to_netcdf`; what neither says comes from the writer's
defaults (loompy's: (64, 64) chunks, gzip level 2).  Every writer (new files, write-back,
append, combine) creates its datasets here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._format import values as _values
from loomx._hdf5.codecs import deflate_level
from loomx._read import chunking as _chunking
from loomx.errors import LoomFormatError

__all__ = [
    "LOOMPY_STORAGE",
    "Storage",
    "check_encoding_names",
    "copy_columns",
    "create_attr",
    "create_graph",
    "create_layer",
    "create_layer_like",
    "grows_along",
    "make_storage",
    "raw_copy",
    "storage_of",
    "storage_of_dataset",
]

VALID_ENCODINGS = frozenset(
    {"chunksizes", "chunks", "compression", "compression_opts", "shuffle", "fletcher32", "dtype"}
)
"""Encoding keys the Loom writer uses (``chunks`` is an alias of ``chunksizes``)."""

_COMPRESSIONS = (None, "gzip", "lzf")


@dataclasses.dataclass(frozen=True)
class Storage:
    """HDF5 storage of one dataset.

    Attributes
    ----------
    chunks
        Chunk shape (clipped to the data's shape when created), or None for h5py's choice.
    compression, compression_opts
        ``None``, ``"gzip"`` (level 0-9) or ``"lzf"``.
    shuffle, fletcher32
        HDF5's shuffle and checksum filters.
    """

    chunks: tuple[int, ...] | None = (_spec.LOOMPY_LAYER_CHUNKS, _spec.LOOMPY_LAYER_CHUNKS)
    compression: str | None = "gzip"
    compression_opts: int | None = _spec.LOOMPY_COMPRESSION_LEVEL
    shuffle: bool = False
    fletcher32: bool = False

    @property
    def deflate_level(self) -> int | None:
        """The deflate level when chunks can be compressed outside HDF5 (gzip alone, as
        :mod:`loomx._hdf5.codecs` packs them), else None (through h5py's filters)."""
        if self.shuffle or self.fletcher32:
            return None
        return deflate_level(self.compression, self.compression_opts)

    def fitted(self, shape: tuple[int, ...]) -> Storage:
        """This storage with its chunks clipped to ``shape`` (as datasets are created)."""
        if self.chunks is None or len(self.chunks) != len(shape):
            return self
        chunks = tuple(max(1, min(int(c), int(s))) for c, s in zip(self.chunks, shape, strict=True))
        return dataclasses.replace(self, chunks=chunks)

    def h5py_kwargs(self, shape: tuple[int, ...]) -> dict[str, Any]:
        """Keyword arguments for :meth:`h5py.Group.create_dataset` of ``shape``."""
        if not shape or 0 in shape:
            return {}
        chunks = self.fitted(shape).chunks
        kwargs: dict[str, Any] = {"chunks": chunks if chunks is not None else True}
        if self.compression is not None:
            kwargs["compression"] = self.compression
            if self.compression == "gzip":
                kwargs["compression_opts"] = self.compression_opts
        if self.shuffle:
            kwargs["shuffle"] = True
        if self.fletcher32:
            kwargs["fletcher32"] = True
        return kwargs


LOOMPY_STORAGE = Storage()
"""loompy's storage of layers: (64, 64) chunks, gzip level 2."""


def storage_of_dataset(dset: h5py.Dataset) -> Storage:
    """The storage of an existing dataset (to create others like it)."""
    return Storage(
        chunks=dset.chunks,
        compression=dset.compression,
        compression_opts=dset.compression_opts if dset.compression == "gzip" else None,
        shuffle=bool(dset.shuffle),
        fletcher32=bool(dset.fletcher32),
    )


def check_encoding_names(
    encoding: Mapping[str, Mapping[str, Any]] | None, names: set[str], path: str
) -> dict[str, dict[str, Any]]:
    """Check the ``encoding=`` argument of a writer: known variables, known keys.

    Raises
    ------
    LoomFormatError
        (a ``ValueError``) for a variable not in the Dataset or a key the writer does not
        know, with the same wording as :meth:`xarray.Dataset.to_netcdf`.
    """
    if encoding is None:
        return {}
    if not isinstance(encoding, Mapping):
        raise TypeError(f"encoding must be a dict of dicts; got {type(encoding).__name__}")
    missing = sorted(str(k) for k in encoding if str(k) not in names)
    if missing:
        raise LoomFormatError(
            f"unexpected encoding for variables not in the dataset: {missing}", path=path
        )
    out = {}
    for name, params in encoding.items():
        invalid = sorted(str(k) for k in params if k not in VALID_ENCODINGS)
        if invalid:
            raise LoomFormatError(
                f"unexpected encoding parameters for 'loom' backend: {invalid!r}. Valid "
                f"encodings are: {set(VALID_ENCODINGS)!r}",
                path=path,
                h5path=str(name),
            )
        out[str(name)] = dict(params)
    return out


def storage_of(
    var_encoding: Mapping[str, Any],
    explicit: Mapping[str, Any] | None,
    default: Storage,
    data_dtype: np.dtype,
    *,
    path: str,
    h5path: str,
    ndim: int,
) -> tuple[Storage, np.dtype]:
    """The storage and on-disk dtype of one variable.

    ``explicit`` (from ``encoding=``) overrides ``var_encoding`` (the variable's own,
    as read), which overrides ``default``.  A dtype from the variable's own encoding is
    kept when every value survives the cast (a safe cast), or between floats (float64
    results of a float32 layer go back as float32); an integer that would wrap keeps its
    own dtype.  An explicit dtype is applied as asked.
    """
    merged = {k: var_encoding[k] for k in VALID_ENCODINGS if k in var_encoding}
    if "chunks" in merged:
        merged.setdefault("chunksizes", merged.pop("chunks"))
    own_chunks = merged.get("chunksizes")
    if own_chunks is not None and len(tuple(own_chunks)) != ndim:
        del merged["chunksizes"]  # read from data of another shape (as xarray drops them)
    given = dict(explicit or {})
    if "chunks" in given:
        given["chunksizes"] = given.pop("chunks")
    merged.update(given)
    chunks = merged.get("chunksizes", default.chunks)
    compression = merged.get("compression", default.compression)
    if "compression_opts" in merged:
        opts = merged["compression_opts"]
    else:
        opts = default.compression_opts if compression == default.compression else None
    storage = make_storage(
        chunks,
        compression,
        opts,
        shuffle=bool(merged.get("shuffle", default.shuffle)),
        fletcher32=bool(merged.get("fletcher32", default.fletcher32)),
        ndim=ndim,
        path=path,
        h5path=h5path,
    )
    dtype = np.dtype(data_dtype)
    wanted = merged.get("dtype")
    if _values.is_compound_request(wanted):
        wanted = None  # the values already are compound (see loomx._write.plan.attr_values)
    if wanted is not None:
        wanted = np.dtype(wanted)
        floats = dtype.kind == wanted.kind == "f"
        if "dtype" in given or floats or np.can_cast(dtype, wanted, "safe"):
            dtype = wanted
    return storage, dtype


def make_storage(
    chunks: Any,
    compression: Any,
    compression_opts: Any,
    *,
    shuffle: bool = False,
    fletcher32: bool = False,
    ndim: int,
    path: str,
    h5path: str | None = None,
) -> Storage:
    """A :class:`Storage` from user-given settings, refused (:class:`LoomFormatError`, a
    ``ValueError``) where h5py would refuse them, before anything is written."""
    return Storage(
        chunks=_check_chunks(chunks, ndim, path, h5path),
        compression=_check_compression(compression, path, h5path),
        compression_opts=_check_opts(compression, compression_opts, path, h5path),
        shuffle=shuffle,
        fletcher32=fletcher32,
    )


def _check_chunks(chunks: Any, ndim: int, path: str, h5path: str | None) -> tuple[int, ...] | None:
    if chunks is None or chunks is True:
        return None
    chunks = tuple(chunks) if isinstance(chunks, list | tuple) else (chunks,)
    if len(chunks) != ndim or not all(isinstance(c, int | np.integer) and c > 0 for c in chunks):
        raise LoomFormatError(
            f"chunksizes must be {ndim} positive ints; got {chunks!r}", path=path, h5path=h5path
        )
    return tuple(int(c) for c in chunks)


def _check_compression(compression: Any, path: str, h5path: str | None) -> str | None:
    if compression not in _COMPRESSIONS:
        raise LoomFormatError(
            f"compression must be None, 'gzip' or 'lzf'; got {compression!r}",
            path=path,
            h5path=h5path,
        )
    return compression


def _check_opts(compression: str | None, opts: Any, path: str, h5path: str | None) -> int | None:
    if compression != "gzip":
        return None
    if opts is None:
        return None  # h5py's default level
    if not (isinstance(opts, int | np.integer) and 0 <= opts <= 9):
        raise LoomFormatError(
            f"gzip compression_opts must be an int from 0 to 9; got {opts!r}",
            path=path,
            h5path=h5path,
        )
    return int(opts)


# --------------------------------------------------------------------------- create


def create_layer(
    parent: h5py.Group, name: str, shape: tuple[int, int], dtype: np.dtype, storage: Storage
) -> h5py.Dataset:
    """A new ``shape`` layer, growable along columns like loompy's."""
    n, m = shape
    kwargs = storage.h5py_kwargs((n, max(m, 1)))
    return parent.create_dataset(name, shape=shape, dtype=dtype, maxshape=(n, None), **kwargs)


def create_layer_like(
    parent: h5py.Group, name: str, template: h5py.Dataset, width: int
) -> h5py.Dataset:
    """A new ``(n, width)`` layer with ``template``'s storage (chunks, filters, fill
    value), growable along columns; loompy's storage when ``template`` is contiguous."""
    n = template.shape[0]
    if template.chunks is None:
        return create_layer(parent, name, (n, width), template.dtype, LOOMPY_STORAGE)
    space = h5py.h5s.create_simple((n, width), (n, h5py.h5s.UNLIMITED))
    dcpl = template.id.get_create_plist()
    dsid = h5py.h5d.create(parent.id, name.encode(), template.id.get_type(), space, dcpl=dcpl)
    return h5py.Dataset(dsid)


ATTR_CHUNK_ROWS = 4096
"""Rows per HDF5 chunk of an attribute (a growable one keeps them as it grows)."""


def create_attr(parent: h5py.Group, name: str, values: np.ndarray, storage: Storage) -> None:
    """A row, column or global attribute of encoded ``values`` (see :mod:`loomx._format.values`)."""
    dtype = _values.STRING_DTYPE if values.dtype.kind == "O" else values.dtype
    kwargs: dict[str, Any] = {}
    if values.ndim >= 1 and values.size > 0 and storage.compression is not None:
        kwargs = storage.h5py_kwargs(values.shape)
        if storage.chunks is None or len(storage.chunks) != values.ndim:
            kwargs["chunks"] = (ATTR_CHUNK_ROWS, *values.shape[1:])
        kwargs["maxshape"] = (None,) * values.ndim  # growable: append adds in place
    parent.create_dataset(name, data=values, dtype=dtype, **kwargs)


def create_graph(parent: h5py.Group, name: str, edges: Mapping[str, np.ndarray]) -> h5py.Group:
    """A graph group with its ``a``, ``b``, ``w`` edge lists."""
    group = parent.create_group(name)
    for part in conv.GRAPH_PARTS:
        group.create_dataset(part, data=edges[part])
    return group


# --------------------------------------------------------------------------- copy


def grows_along(dset: h5py.Dataset, axis: int) -> bool:
    """Whether ``dset`` can grow along ``axis`` in place: chunked, unlimited there."""
    return dset.chunks is not None and dset.maxshape[axis] is None


def _storage_key(dset: h5py.Dataset) -> tuple:
    fill = np.asarray(dset.fillvalue).tobytes()
    return (
        dset.dtype,
        dset.chunks,
        dset.compression,
        dset.compression_opts,
        dset.shuffle,
        dset.fletcher32,
        dset.scaleoffset,
        fill,
    )


def raw_copy(src: h5py.Dataset, dst: h5py.Dataset, col0: int) -> bool:
    """Copy every stored chunk of ``src`` as it is into ``dst`` at column ``col0``.

    Only when the storage is identical and ``col0`` falls on a chunk edge; returns whether
    it copied.  Chunks ``src`` never stored stay unallocated (read as the same fill value).
    """
    if _storage_key(src) != _storage_key(dst) or src.chunks is None or col0 % src.chunks[1]:
        return False
    offsets: list[tuple[int, ...]] = []
    src.id.chunk_iter(lambda info: offsets.append(info.chunk_offset))
    for row, col in offsets:
        mask, raw = src.id.read_direct_chunk((row, col))
        dst.id.write_direct_chunk((row, col + col0), raw, mask)
    return True


def copy_columns(src: h5py.Dataset, dst: h5py.Dataset, col0: int) -> None:
    """Copy ``src`` into ``dst`` at column ``col0``: raw chunks, else in column bands."""
    if raw_copy(src, dst, col0):
        return
    n, m = src.shape
    step = _chunking.band_width(n, src.dtype.itemsize, (dst.chunks or (1, 64))[1])
    for c in range(0, m, step):
        stop = min(c + step, m)
        dst[:, col0 + c : col0 + stop] = src[:, c:stop]

"""xarray backend for Loom files: ``xr.open_dataset(path, engine="loom")``.

The entrypoint builds a Dataset whose layers, attributes and graph edge lists are lazy
backend arrays: opening reads metadata only.  Attributes are read whole and decoded on
first use and then kept by their backend array.  Each layer's
``encoding["preferred_chunks"]`` is a chunking that is a whole multiple of its HDF5 chunks
and large enough to keep task counts low, so ``chunks={}`` gives good dask chunks.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import dask.array as da
import numpy as np
import xarray as xr
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core import indexing

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._format import values as _values
from loomx._hdf5 import chunks as _chunks
from loomx._hdf5.filesystem import is_remote
from loomx._hdf5.probe import probe_file
from loomx._read.chunking import default_chunks, resolve_chunks
from loomx._read.layer import as_layer_array
from loomx._read.layout import H5_ERRORS, AttrInfo, DatasetInfo, LoomLayout
from loomx._read.pending import Patch
from loomx._read.references import use_references
from loomx._read.sidecar import use_sidecar
from loomx._read.store import LoomStore
from loomx.errors import LoomFileError, LoomFormatError, LoomxError

__all__ = [
    "LoomBackendArray",
    "LoomBackendEntrypoint",
    "chunk_layers",
    "open_loom",
    "unchanged_source",
]


class LoomBackendArray(BackendArray):
    """Lazy array over one HDF5 dataset of a Loom file.

    Holds only the picklable :class:`LoomStore` and the HDF5 path.  Slices are read through
    the fast chunk reader when the dataset's filters allow it, otherwise through h5py.  A
    vector index reads each needed run of HDF5 chunks once and selects in memory.

    ``whole_number_cast`` declares an integer dtype for a float dataset (graph vertices in
    files from the wild): values are checked to be whole numbers when read.
    """

    def __init__(
        self,
        store: LoomStore,
        info: DatasetInfo,
        whole_number_cast: np.dtype | None = None,
    ):
        self.store = store
        self.info = info
        self.shape = info.shape
        self.cast = whole_number_cast
        self.dtype = np.dtype(whole_number_cast if whole_number_cast is not None else info.dtype)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER_1VECTOR, self._raw_getitem
        )

    def _raw_getitem(self, key: tuple) -> np.ndarray:
        slices: list[slice] = []
        post: list[Any] = []
        for axis, k in enumerate(key):
            if isinstance(k, slice):
                start, stop, step = k.indices(self.shape[axis])
                if step < 0:
                    start, stop = stop + 1, start + 1
                slices.append(slice(start, max(stop, start)))
                post.append(slice(None) if step == 1 else slice(None, None, step))
            elif isinstance(k, (int, np.integer)):
                slices.append(slice(int(k), int(k) + 1))
                post.append(0)
            else:
                index = np.asarray(k)
                if index.size == 0:
                    slices.append(slice(0, 0))
                    post.append(slice(None))
                    continue
                lo, hi = int(index.min()), int(index.max()) + 1
                slices.append(slice(lo, hi))
                post.append(index - lo)
        vectors = [axis for axis, p in enumerate(post) if isinstance(p, np.ndarray)]
        if len(vectors) == 1 and len(self.shape) == 2:  # picked rows or columns
            axis = vectors[0]
            block = self._read_box(slices, (axis, post[axis] + slices[axis].start))
            post[axis] = slice(None)
            return self._cast(block[tuple(post)])
        block = self._read_runs(slices, post)
        return self._cast(block[tuple(post)])

    def _read_runs(self, slices: list[slice], post: list[Any]) -> np.ndarray:
        """Read the bounding box, skipping chunk runs no vector index needs."""
        chunks = self.info.chunks
        vector_axes = [ax for ax, p in enumerate(post) if isinstance(p, np.ndarray)]
        if chunks is None or not vector_axes:
            return self._read_box(slices)
        axis = vector_axes[0]
        lo = slices[axis].start
        width = chunks[axis]
        needed = np.unique((post[axis] + lo) // width)
        if len(needed) * width >= slices[axis].stop - slices[axis].start:
            return self._read_box(slices)
        shape = [s.stop - s.start for s in slices]
        out = np.zeros(shape, dtype=self.info.dtype)
        breaks = np.flatnonzero(np.diff(needed) != 1) + 1
        for run in np.split(needed, breaks):
            start = max(int(run[0]) * width, lo)
            stop = min((int(run[-1]) + 1) * width, slices[axis].stop)
            sub = list(slices)
            sub[axis] = slice(start, stop)
            dest = [slice(None)] * len(shape)
            dest[axis] = slice(start - lo, stop - lo)
            out[tuple(dest)] = self._read_box(sub)
        return out

    def _read_box(
        self, slices: list[slice], picks: tuple[int, np.ndarray] | None = None
    ) -> np.ndarray:
        """``slices`` of the dataset; with ``picks`` (axis, positions) those positions
        along that axis instead of its slice."""
        try:
            patches = self.store.patches_of(self.info.h5path)
            h5path = self.store.resolve(self.info.h5path)
            with self.store.open() as h5file:
                self.store.check_unchanged(h5file, self.info, h5path)
            if picks is None:
                return self._read_patched(h5path, slices, patches)
            if patches:
                box = list(_chunks.box_of_picks(tuple(slices), picks))
                block = self._read_patched(h5path, box, patches)
                return _chunks.take_picks(block, picks)
            return _chunks.read_through_handle(
                self.store.open,
                h5path,
                tuple(slices),
                self.store.path,
                picks=picks,
                remote=self.store.remote,
            )
        except LoomxError as err:
            if err.h5path is not None:
                raise
            path = self.store.path if err.path is None else err.path
            raise type(err)(err.message, path=path, h5path=self.info.h5path) from err
        except H5_ERRORS as err:
            if isinstance(err, MemoryError):
                nbytes = np.prod([s.stop - s.start for s in slices]) * self.info.dtype.itemsize
                found = f"{int(nbytes)} bytes do not fit in memory ({err}); read a smaller "
                found += "region, or check the declared shape"
            else:
                found = f"{type(err).__name__}: {err}; the file may be truncated or corrupt"
            raise LoomFileError(
                f"cannot read {slices}: {found}", path=self.store.path, h5path=self.info.h5path
            ) from err

    def _read_patched(self, h5path: str, slices: list[slice], patches: list[Patch]) -> np.ndarray:
        """Read ``slices`` of ``h5path``; where a pending region-write patch covers them,
        from the patch (the layer's own chunks there may be half rewritten)."""
        for k, patch in enumerate(patches):
            staged, origin = patch.h5path, patch.origin
            with self.store.open() as h5file:
                extent = h5file[staged].shape
            inner = [
                slice(max(s.start, o), min(s.stop, o + n))
                for s, o, n in zip(slices, origin, extent, strict=True)
            ]
            if any(i.stop <= i.start for i in inner):
                continue
            out = np.empty([s.stop - s.start for s in slices], dtype=self.info.dtype)
            source = tuple(
                slice(i.start - o, i.stop - o) for i, o in zip(inner, origin, strict=True)
            )
            dest = [
                slice(i.start - s.start, i.stop - s.start)
                for i, s in zip(inner, slices, strict=True)
            ]
            out[tuple(dest)] = _chunks.read_through_handle(
                self.store.open, staged, source, self.store.path, remote=self.store.remote
            )
            rest = patches[k + 1 :]
            for axis in range(len(slices)):  # the parts outside the patch, one axis at a time
                outer = [*inner[:axis], slices[axis], *slices[axis + 1 :]]
                for lo, hi in (
                    (slices[axis].start, inner[axis].start),
                    (inner[axis].stop, slices[axis].stop),
                ):
                    if hi > lo:
                        part = [*outer[:axis], slice(lo, hi), *outer[axis + 1 :]]
                        where = [
                            slice(p.start - s.start, p.stop - s.start)
                            for p, s in zip(part, slices, strict=True)
                        ]
                        out[tuple(where)] = self._read_patched(h5path, part, rest)
            return out
        return _chunks.read_through_handle(
            self.store.open, h5path, tuple(slices), self.store.path, remote=self.store.remote
        )

    def _cast(self, values: np.ndarray) -> np.ndarray:
        if self.cast is None:
            return values
        if values.size and not _values.whole_numbers(values):
            raise LoomFormatError(
                f"graph vertices stored as "
                f"{self.info.dtype} include values that are not whole numbers; expected "
                "integer vertex indices",
                path=self.store.path,
                h5path=self.info.h5path,
            )
        return values.astype(self.cast)


class AttrBackendArray(BackendArray):
    """Lazy row or column attribute: read whole and decoded on first use, then kept, so
    each attribute is read at most once per opened Dataset, whatever views are taken."""

    def __init__(self, store: LoomStore, attr: AttrInfo):
        self.store = store
        self.attr = attr
        self.shape = attr.shape
        self.dtype = attr.dtype
        self._values: np.ndarray | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store, "attr": self.attr}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["store"], state["attr"])  # type: ignore[misc]

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._raw
        )

    @property
    def loaded(self) -> bool:
        """Whether the values were read (and handed out, so possibly changed in place)."""
        return self._values is not None

    def values(self) -> np.ndarray:
        """The whole decoded attribute, read on the first call only."""
        with self._lock:
            if self._values is None:
                self._values = self.store.read_attr(self.attr)
            return self._values

    def _raw(self, key: tuple) -> np.ndarray:
        return self.values()[key]


class _VertexIds(BackendArray):
    """Lazy ``arange(n)``: the original vertex number of each row or column of a graph."""

    def __init__(self, n: int):
        self.shape = (n,)
        self.dtype = np.dtype(np.int64)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._raw
        )

    def _raw(self, key: tuple) -> np.ndarray:
        return np.arange(self.shape[0], dtype=np.int64)[key]


_WRAPPERS = tuple(
    getattr(indexing, name)
    for name in ("MemoryCachedArray", "CopyOnWriteArray", "ImplicitToExplicitIndexingAdapter")
    if hasattr(indexing, name)
)


def _whole_backend(data: Any) -> LoomBackendArray | AttrBackendArray | None:
    """The loomx backend array that a variable's lazy ``data`` reads whole, or None.

    Looks through xarray's lazy-indexing wrappers; a ``LazilyIndexedArray`` must select
    everything.  In-memory data, a part of a dataset, and wrappers this does not know give
    None (should xarray's wrappers change, callers take their slower path, never a wrong one).
    """
    for _ in range(8):
        if isinstance(data, LoomBackendArray | AttrBackendArray):
            return data
        if isinstance(data, indexing.LazilyIndexedArray):
            shape, key = data.array.shape, data.key.tuple
            if len(key) != len(shape) or not all(
                isinstance(k, slice) and k.indices(n) == (0, n, 1)
                for k, n in zip(key, shape, strict=True)
            ):
                return None
        elif not isinstance(data, _WRAPPERS):
            return None
        data = data.array
    return None


def unchanged_source(var: xr.Variable) -> tuple[str, str] | None:
    """``(file, HDF5 path)`` of the dataset ``var`` still reads whole and unmodified, or None.

    Two kinds of variables are recognised without reading them: dask arrays that still have
    the name :func:`open_loom` gave them (``encoding["loom_dask_name"]``; every operation
    on a dask array gives a new name), and lazily indexed arrays (``chunks=None``, attribute
    coordinates) that select everything of a loomx backend array and were never loaded (an
    attribute whose values were read may have been changed in place).  Anything else gives
    None, and writers compare values with the disk instead (slower, never wrong).
    """
    data = getattr(var, "_data", None)
    backend: LoomBackendArray | AttrBackendArray | None = None
    if isinstance(data, da.Array):
        if data.name != var.encoding.get("loom_dask_name"):
            return None
    else:
        backend = _whole_backend(data)
        if backend is None or (isinstance(backend, AttrBackendArray) and backend.loaded):
            return None
    source, h5path = var.encoding.get("source"), var.encoding.get("loom_path")
    if not source or not h5path:
        return None
    if backend is not None:
        info = backend.info if isinstance(backend, LoomBackendArray) else backend.attr.info
        if info.h5path != h5path or backend.store.path != source:
            return None
    return str(source), str(h5path)


def build_dataset(
    store: LoomStore,
    layout: LoomLayout,
    dims: Sequence[str] = conv.DEFAULT_DIMS,
    drop_variables: Iterable[str] | None = None,
) -> xr.Dataset:
    """Turn a :class:`LoomLayout` into a lazy :class:`xarray.Dataset` (no data read)."""
    row_dim, col_dim = _check_dims(dims)
    names = conv.assign_names(layout.layers, layout.row_attrs, layout.col_attrs, dims)
    drop = set(drop_variables or ())
    data_vars: dict[str, xr.Variable] = {}
    coords: dict[str, xr.Variable] = {}
    for layer, info in layout.layers.items():
        name = names[(_spec.LAYERS, layer)]
        if name in drop:
            continue
        lazy = indexing.LazilyIndexedArray(LoomBackendArray(store, info))
        encoding = info.encoding(layout.path)
        chunks = default_chunks(info.shape, info.dtype, info.chunks)
        encoding["preferred_chunks"] = dict(zip((row_dim, col_dim), chunks, strict=True))
        data_vars[name] = xr.Variable((row_dim, col_dim), lazy, encoding=encoding)
    for space, dim in ((_spec.ROW_ATTRS, row_dim), (_spec.COL_ATTRS, col_dim)):
        for attr, item in getattr(layout, space).items():
            name = names[(space, attr)]
            if name in drop:
                continue
            extra = conv.extra_dim_names(name, len(item.shape))
            encoding = item.info.encoding(layout.path)
            if item.compound_fields is not None:
                encoding["loom_compound_fields"] = list(item.compound_fields)
                coords[extra[0]] = xr.Variable(
                    extra[0], np.array(item.compound_fields, dtype=object)
                )
            lazy = indexing.LazilyIndexedArray(AttrBackendArray(store, item))
            coords[name] = xr.Variable((dim, *extra), lazy, encoding=encoding)
    for space, dim in ((_spec.ROW_GRAPHS, row_dim), (_spec.COL_GRAPHS, col_dim)):
        n = layout.shape[0 if space == _spec.ROW_GRAPHS else 1]
        for graph, ginfo in getattr(layout, space).items():
            gnames = conv.graph_var_names(space, graph)
            if gnames["vertex"] in drop:
                continue
            coords[gnames["vertex"]] = xr.Variable(
                dim,
                indexing.LazilyIndexedArray(_VertexIds(n)),
                encoding={
                    "source": layout.path,
                    "loom_path": ginfo.h5path,
                    "loom_n_vertices": n,
                },
            )
            for part in conv.GRAPH_PARTS:
                info = getattr(ginfo, part)
                cast = np.dtype(np.int64) if part != "w" and info.dtype.kind == "f" else None
                backend_array = LoomBackendArray(store, info, whole_number_cast=cast)
                coords[gnames[part]] = xr.Variable(
                    gnames["edge"],
                    indexing.LazilyIndexedArray(backend_array),
                    encoding=info.encoding(layout.path),
                )
    ds = xr.Dataset(data_vars, coords=coords, attrs=dict(layout.global_attrs))
    ds.encoding.update(
        {
            "source": layout.path,
            "loom_spec_version": layout.version,
            "loom_dims": (row_dim, col_dim),
            "loom_global_attrs_location": layout.global_attrs_location,
            "loom_locking": store.locking,
        }
    )
    return ds


def _check_dims(dims: Sequence[str]) -> tuple[str, str]:
    dims = tuple(dims)
    if len(dims) != 2 or dims[0] == dims[1] or not all(isinstance(d, str) for d in dims):
        raise ValueError(f"dims must be two different names, found {dims!r}")
    return dims[0], dims[1]


_NO_INDEX_PASS = (
    {"create_default_indexes": False}
    if "create_default_indexes" in inspect.signature(xr.open_dataset).parameters
    else {}
)
"""``xr.open_dataset`` arguments that skip its default-index pass (where xarray has the argument).

:func:`build_dataset`'s ``xr.Dataset`` already gives every dimension coordinate its default
index; xarray's own pass builds a ``DataArray`` per coordinate, each scanning every
variable, to find none missing (0.4 s for 1000 attributes).
"""


def open_loom(
    path: Any,
    *,
    chunks: int | str | dict[str, Any] | None = "auto",
    dims: Sequence[str] = conv.DEFAULT_DIMS,
    mode: str = "r",
    locking: bool | None = None,
    allow_filter_plugins: bool = False,
    storage_options: dict[str, Any] | None = None,
    chunk_index: Any = None,
    follow_external: bool = False,
    untrusted: bool = False,
) -> xr.Dataset:
    """Open a Loom file as a lazy :class:`xarray.Dataset`.

    Opening reads metadata only (never layer, attribute or graph data) and never writes
    to the file.

    Parameters
    ----------
    path
        The ``.loom`` file: a local path, a URL (``https://...``, ``s3://bucket/key``, any
        fsspec URL) or an open binary file object.  Remote files are read-only; reads
        fetch only the byte ranges they need (see :mod:`loomx._hdf5.remote`).
    chunks
        ``"auto"`` or ``{}`` (default): dask chunks that are whole multiples of each layer's
        HDF5 chunks, about :data:`~loomx._read.chunking.BLOCK_BYTES` (16 MiB) each.
        ``None``: no dask; layers are lazily indexed arrays.  An int (``-1`` for whole
        dims) or a dict ``{dim: size}`` chunks layers like :meth:`xarray.Dataset.chunk`;
        dims left out get the default.
    dims
        Names of the row and column dims, ``("row", "col")`` by default.
    mode
        ``"r"`` (default) or ``"r+"``.  ``"r+"`` holds the file writable, so no other
        process can open it: use it only with threads in one process (dask's processes
        scheduler and ``distributed`` workers need ``"r"``; :func:`loomx.to_loom` does
        not need ``"r+"`` to write back).
    locking
        HDF5 file locking; pass ``False`` on filesystems without it.
    allow_filter_plugins
        Datasets compressed with HDF5 filter plugins (Blosc, Zstandard, Bitshuffle, ...:
        code HDF5 loads from disk) are refused by default with a
        :class:`~loomx.errors.LoomFormatError`; ``True`` reads them (with the plugins
        installed, e.g. ``import hdf5plugin``).
    storage_options
        fsspec options for a URL: credentials, ``client_kwargs={"endpoint_url": ...}``.
    chunk_index
        A reference index of this file made by :func:`loomx.to_kerchunk` (the dict, or
        the path or URL of its JSON): remote reads then take every layer's chunk offsets
        from it instead of reading HDF5's chunk index over the network.  Without it, a
        remote file's sidecar (``FILE.kerchunk.json`` beside it, written by
        ``loomx index FILE``) is used when it matches the file.
    follow_external
        Layers, attributes and graphs stored in other files (external links, datasets with
        external raw storage, virtual datasets) are refused by default with a
        :class:`~loomx.errors.LoomFormatError` naming them: a file stays inside itself.
        ``True`` follows them, for reading only (writers still refuse such files); only
        for files you trust, since they can point anywhere on the machine.
    untrusted
        ``True`` reads all of the file's metadata in a child process with a time and a
        memory limit before this process opens it (:func:`loomx._hdf5.probe.probe_file`):
        a file that makes HDF5 hang or crash gives a :class:`~loomx.errors.LoomFileError`
        naming the object being read.  Local files only.

    Returns
    -------
    xarray.Dataset
        Layers are data variables (``/matrix`` is ``matrix``), row and column attributes
        are coordinates (each read once, on first use, then held in memory), global
        attributes are ``ds.attrs``; graphs are available through ``ds.loom.row_graphs``
        and ``ds.loom.col_graphs``.

    Examples
    --------
    >>> ds = loomx.open_loom("pbmc.loom", dims=("gene", "cell"))  # doctest: +SKIP
    >>> ds["matrix"].sum("cell").compute()  # doctest: +SKIP
    >>> s3 = loomx.open_loom("s3://bkt/pbmc.loom", storage_options={"anon": True})  # doctest: +SKIP
    >>> linked = loomx.open_loom("atlas.loom", follow_external=True)  # doctest: +SKIP
    """
    given = locals()  # this signature is the one list of the backend's options
    options = {name: given[name] for name in _OPTIONS}
    ds = xr.open_dataset(
        path, engine=LoomBackendEntrypoint, chunks=None, cache=True, **_NO_INDEX_PASS, **options
    )
    if chunks is None:
        return ds
    return chunk_layers(ds, chunks)


_OPTIONS = {
    name: parameter.default
    for name, parameter in inspect.signature(open_loom).parameters.items()
    if name not in ("path", "chunks")
}
"""The backend's options and their defaults: :func:`open_loom`'s keywords but ``chunks``
(which xarray's ``open_dataset`` handles itself)."""
_STORE_OPTIONS = tuple(n for n in inspect.signature(LoomStore).parameters if n in _OPTIONS)
"""The options :class:`LoomStore` takes."""


def _options(given: dict[str, Any]) -> dict[str, Any]:
    """``given`` options checked against :data:`_OPTIONS`, defaults filled in."""
    unknown = sorted(set(given) - set(_OPTIONS))
    if unknown:
        raise TypeError(
            f"engine='loom' got unexpected arguments {unknown}; it takes {sorted(_OPTIONS)} "
            "(see loomx.open_loom)"
        )
    return {**_OPTIONS, **given}


class LoomBackendEntrypoint(BackendEntrypoint):
    """Open Loom files with ``xr.open_dataset(path, engine="loom")``.

    Takes the options of :func:`open_loom` (all but ``chunks``, which is xarray's own) and
    ``drop_variables``.

    Examples
    --------
    >>> ds = xr.open_dataset("pbmc.loom", engine="loom", chunks={})  # doctest: +SKIP
    """

    description = "Open Loom (.loom) single-cell HDF5 files as lazy Datasets"
    url = "https://linnarsson-lab.org/loompy/format/index.html"
    open_dataset_parameters: ClassVar[tuple[str, ...]] = (
        "filename_or_obj",
        "drop_variables",
        *_OPTIONS,
    )

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        **options: Any,
    ) -> xr.Dataset:
        options = _options(options)
        if options["untrusted"]:
            if is_remote(filename_or_obj):
                raise LoomFileError(
                    "untrusted=True checks local files; download the file first",
                    path=str(filename_or_obj),
                )
            probe_file(filename_or_obj)
        if not isinstance(filename_or_obj, (str, os.PathLike)) and not is_remote(filename_or_obj):
            raise TypeError(
                "engine='loom' opens paths, URLs and binary file objects, found "
                f"{type(filename_or_obj).__name__}"
            )
        if options["mode"] not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', found {options['mode']!r}")
        if isinstance(drop_variables, str):
            drop_variables = [drop_variables]
        store = LoomStore(filename_or_obj, **{name: options[name] for name in _STORE_OPTIONS})
        try:
            layout = store.read_layout()
            if options["chunk_index"] is not None:
                use_references(store, layout, options["chunk_index"])
            else:
                use_sidecar(store, layout)
            dims = tuple(options["dims"])
            ds = build_dataset(store, layout, dims=dims, drop_variables=drop_variables)
        except BaseException:
            store.close()
            raise
        ds.set_close(store.close)
        return ds

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        if not isinstance(filename_or_obj, (str, os.PathLike)):
            return False
        return os.fspath(filename_or_obj).endswith(".loom")


def chunk_layers(ds: xr.Dataset, chunks: int | str | dict[str, Any]) -> xr.Dataset:
    """Give every layer of ``ds`` dask chunks; graphs and attributes stay as they are.

    ``"auto"`` and ``{}`` use each layer's ``encoding["preferred_chunks"]``.
    """
    chunked = {}
    for name in ds.data_vars:
        var = ds.variables[name]  # not ds[name]: a DataArray scans every variable
        preferred = var.encoding.get("preferred_chunks")
        if preferred is None or var.ndim != 2:
            continue
        sizes = resolve_chunks(chunks, var.dims, preferred, var.shape)
        chunked[name] = var.chunk(sizes)
        backend = _whole_backend(var._data)
        source = backend if isinstance(backend, LoomBackendArray) else None
        chunked[name].data = as_layer_array(chunked[name].data, source)
        # the writer's proof that a layer is unchanged since open: dask names change with
        # every operation on the array (see loomx._write.plan.is_unchanged)
        chunked[name].encoding["loom_dask_name"] = chunked[name].data.name
    out = ds.assign(chunked)
    out.encoding = dict(ds.encoding)
    out.set_close(ds._close)
    return out

"""xarray backend for Loom files: ``xr.open_dataset(path, engine="loom")``.

The entrypoint builds a Dataset whose layers, attributes and graph edge lists are lazy
backend arrays (:mod:`loomx._read.lazy_arrays`): opening reads metadata only.  Attributes are
read whole and decoded on first use and then kept by their backend array.  Each layer's
``encoding["preferred_chunks"]`` is a chunking that is a whole multiple of its HDF5 chunks
and large enough to keep task counts low, so ``chunks={}`` gives good dask chunks.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import xarray as xr
from xarray.backends import BackendEntrypoint
from xarray.core import indexing

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._hdf5.filesystem import is_remote
from loomx._hdf5.probe import probe_file
from loomx._read.chunking import default_chunks, resolve_chunks
from loomx._read.layer import as_layer_array
from loomx._read.layout import LoomLayout
from loomx._read.lazy_arrays import AttrBackendArray, LoomBackendArray, VertexIds, whole_backend
from loomx._read.references import use_references
from loomx._read.sidecar import use_sidecar
from loomx._read.store import LoomStore
from loomx.errors import LoomFileError

__all__ = [
    "LoomBackendEntrypoint",
    "chunk_layers",
    "open_loom",
]


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
                indexing.LazilyIndexedArray(VertexIds(n)),
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
        backend = whole_backend(var._data)
        source = backend if isinstance(backend, LoomBackendArray) else None
        chunked[name].data = as_layer_array(chunked[name].data, source)
        # the writer's proof that a layer is unchanged since open: dask names change with
        # every operation on the array (see loomx._write.plan.is_unchanged)
        chunked[name].encoding["loom_dask_name"] = chunked[name].data.name
    out = ds.assign(chunked)
    out.encoding = dict(ds.encoding)
    out.set_close(ds._close)
    return out

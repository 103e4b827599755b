"""The lazy backend arrays of a Loom Dataset: layers and graph edge lists
(:class:`LoomBackendArray`), row and column attributes (:class:`AttrBackendArray`) and
graph vertex numbers (:class:`VertexIds`), and how a writer recognises a variable that still
reads a dataset whole and unmodified (:func:`unchanged_source`).

A layer's reads are checked once per opening of the file's handle to still find the objects
the Dataset was opened with (:meth:`loomx._read.store.LoomStore.open_unchanged`), in the
same pin of the handle that reads the chunks.

Examples
--------
>>> ds = loomx.open_loom("pbmc.loom", chunks=None)  # doctest: +SKIP
>>> unchanged_source(ds["matrix"].variable)  # doctest: +SKIP
('pbmc.loom', '/matrix')
"""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from loomx._format import values as _values
from loomx._hdf5 import chunks as _chunks
from loomx._read.layout import H5_ERRORS, AttrInfo, DatasetInfo
from loomx._read.pending import Patch
from loomx._read.store import LoomStore
from loomx.errors import LoomFileError, LoomFormatError, LoomxError

__all__ = [
    "AttrBackendArray",
    "LoomBackendArray",
    "VertexIds",
    "unchanged_source",
    "whole_backend",
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
            if patches:
                with self.store.open_unchanged(self.info, h5path):
                    pass
                box = list(_chunks.box_of_picks(tuple(slices), picks))
                block = self._read_patched(h5path, box, patches)
                return _chunks.take_picks(block, picks)
            return _chunks.read_through_handle(  # checked in the open that reads
                partial(self.store.open_unchanged, self.info, h5path),
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


class VertexIds(BackendArray):
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


def whole_backend(data: Any) -> LoomBackendArray | AttrBackendArray | None:
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
        backend = whole_backend(data)
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

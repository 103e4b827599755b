"""LoomStore: a picklable recipe for one Loom file, and the metadata it holds.

The store never keeps an open handle across pickling: handles live in loomx's per-process
handle manager (:class:`loomx._hdf5.files.CachedFile`) and are reopened lazily in every
process (threads, processes, ``dask.distributed`` workers).  Reading the layout touches metadata and
attributes only, never layer data.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np
from xarray.backends.locks import HDF5_LOCK

from loomx._hdf5.files import CachedFile
from loomx._hdf5.filesystem import is_remote, refuse_remote
from loomx._hdf5.remote import RemoteSource
from loomx._read.layout import (
    AttrInfo,
    DatasetInfo,
    LoomLayout,
    generation_of,
    h5_errors,
    object_address,
)
from loomx._read.layout_reader import LayoutReader
from loomx._read.pending import Patch
from loomx.errors import LoomFileError

__all__ = [
    "LoomStore",
]


class LoomStore:
    """Picklable handle recipe for a Loom file.

    Parameters
    ----------
    path
        Path of the ``.loom`` file, or a remote file (a URL or an open binary file object,
        read-only, see :mod:`loomx._hdf5.remote`).
    mode
        ``"r"`` (default) or ``"r+"`` (local files only).
    locking
        Passed to :class:`h5py.File`; ``False`` for filesystems without HDF5 file locking.
    allow_filter_plugins
        Read datasets whose HDF5 filters are plugins (code HDF5 loads from disk); by
        default such datasets are refused when the layout is read.
    storage_options
        fsspec options for a URL (credentials, endpoint, ...).
    follow_external
        Follow external links and read datasets with external raw storage or virtual
        datasets (data in other files); by default they are refused.
    """

    def __init__(
        self,
        path: Any,
        *,
        mode: str = "r",
        locking: bool | None = None,
        allow_filter_plugins: bool = False,
        storage_options: dict[str, Any] | None = None,
        follow_external: bool = False,
    ):
        self.allow_filter_plugins = allow_filter_plugins
        self.follow_external = follow_external
        self.mode = mode
        self.locking = locking
        self.lock = HDF5_LOCK
        self.remote: RemoteSource | None = None
        self.handle: CachedFile
        if is_remote(path):
            if mode != "r":
                refuse_remote(path, f"open in mode {mode!r}")
            self.remote = RemoteSource(path, storage_options)
            self.path = self.remote.name
            self.handle = CachedFile(self.remote)
        else:
            self.path = os.fspath(path)
            self.handle = CachedFile(self.path, mode, locking)
        self.pending: dict[str, str] = {}  # objects of a commit not yet carried out
        self.identity: tuple[str, int, int] | None = None  # (host, device, inode) read
        self.patches: dict[str, list[Patch]] = {}  # region writes, appended columns
        self.checked: dict[tuple[Any, ...], int] = {}  # see open_unchanged

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["checked"] = {}  # openings are numbered per process
        return state

    def __repr__(self) -> str:
        return f"LoomStore({self.path!r}, mode={self.mode!r})"

    @contextlib.contextmanager
    def open(self) -> Iterator[h5py.File]:
        """Context manager giving the (cached) open :class:`h5py.File`, under the HDF5 lock."""
        with self.lock, self.handle.acquire() as h5file:
            yield h5file

    @contextlib.contextmanager
    def open_unchanged(self, info: DatasetInfo, h5path: str) -> Iterator[h5py.File]:
        """:meth:`open`, with the file checked to hold the object ``info`` was read from
        (:meth:`check_unchanged`, read through the link ``h5path``).

        The check runs once per opening of the handle: a read-only handle this process
        keeps open reads the same file and objects until it is closed, released before a
        write here, or evicted, and the next read reopens it and checks again (another
        process cannot write the file while HDF5's lock is held; without locking, an open
        handle would not see another process's changes to the metadata, checked or not).
        A handle on a file this process holds writable (a writer's view) is checked at
        every read.
        """
        with self.lock, self.handle.acquire_opening() as (h5file, opening):
            key = (info.h5path, h5path, info.address, info.generation)
            if opening is None or self.checked.get(key) != opening:
                self.check_unchanged(h5file, info, h5path)
                if opening is not None:
                    self.checked[key] = opening
            yield h5file

    def close(self) -> None:
        """Close this process's cached handle (it is reopened on next use)."""
        self.handle.close()

    def resolve(self, h5path: str) -> str:
        """The link through which to read ``h5path`` now.

        While a commit found by :meth:`read_layout` is not carried out, its objects are
        read through their temporary links; once a writer has finished it, by their names.
        """
        for final, link in self.pending.items():
            if h5path == final or h5path.startswith(final + "/"):
                candidate = link + h5path[len(final) :]
                with self.open() as h5file, h5_errors(self.path, h5path, "look up the object"):
                    return candidate if candidate in h5file else h5path
        return h5path

    def read_attr(self, attr: AttrInfo) -> np.ndarray:
        """Read and decode one whole row or column attribute (with the values of pending
        patches, see :mod:`loomx._read.pending`)."""
        h5path = self.resolve(attr.info.h5path)
        patches = self.patches_of(attr.info.h5path)
        with self.open() as h5file, h5_errors(self.path, attr.info.h5path, "read the attribute"):
            self.check_unchanged(h5file, attr.info, h5path)
            raw = h5file[h5path][()]
            for patch in patches:
                values = h5file[patch.h5path][()]
                if patch.extent is not None and patch.extent[0] > len(raw):
                    grown = np.empty(patch.extent, dtype=raw.dtype)
                    grown[: len(raw)] = raw
                    raw = grown
                raw[patch.origin[0] : patch.origin[0] + len(values)] = values
            return attr.decode(raw, self.path)

    def check_unchanged(self, h5file: h5py.File, info: DatasetInfo, h5path: str) -> None:
        """Raise :class:`LoomFileError` when the file no longer holds the object ``info``
        was read from (a write replaced it, or replaced the whole file, since the layout
        was read): a Dataset opened before a write never mixes old and new data."""
        here = _identity(h5file)
        same_file = self.identity is None or here is None or here[0] != self.identity[0]
        same_file = same_file or here == self.identity  # inodes compare on one host only
        same_object = info.address is None or object_address(h5file, h5path) == info.address
        obj = h5file.get(h5path) if same_file and same_object else None
        rewritten = isinstance(obj, h5py.Dataset) and generation_of(obj) != info.generation
        if same_file and same_object and not rewritten:
            return
        what = "the file was replaced" if not same_file else "a write replaced this object"
        what = "a region write changed its values in place" if rewritten else what
        raise LoomFileError(
            f"changed since it was opened ({what}); expected the object the Dataset was "
            "opened with. Open the file again to read the new content",
            path=self.path,
            h5path=info.h5path,
        )

    def read_layout(self) -> LoomLayout:
        """Read and check the metadata (never layer, attribute or graph data)."""
        where = ["/"]  # the object being read, for errors
        with self.open() as h5file, h5_errors(self.path, where, "read the file's layout"):
            reader = LayoutReader(h5file, self.path, where)
            reader.allow_filter_plugins = self.allow_filter_plugins
            reader.follow_external = self.follow_external
            layout = reader.read()
            self.identity = _identity(h5file)
        self.pending = layout.pending
        self.patches = layout.patches
        return layout

    def patches_of(self, h5path: str) -> list[Patch]:
        """The patches recorded for ``h5path`` and not yet copied in (see
        :mod:`loomx._read.pending`)."""
        found = self.patches.get(h5path)
        if not found:
            return []
        with self.open() as h5file:
            return [patch for patch in found if patch.h5path in h5file]


def _identity(h5file: h5py.File) -> tuple[str, int, int] | None:
    """(host, device, inode) of the file an open handle reads, if it has a descriptor."""
    try:
        fd = h5file.id.get_vfd_handle()
        st = os.fstat(fd) if isinstance(fd, int) else None
    except (OSError, ValueError, RuntimeError, TypeError):
        return None
    return None if st is None else (socket.gethostname(), st.st_dev, st.st_ino)

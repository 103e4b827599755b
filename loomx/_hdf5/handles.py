"""The per-process handle manager: every HDF5 handle and raw file descriptor loomx reads
through, local or remote, in one place.

- **HDF5 read handles** (:func:`pinned`), by the key of their recipe
  (:class:`loomx._hdf5.files.CachedFile`): opened on first use, at most
  :data:`MAX_OPEN_FILES` kept (the least recently used are closed), and *pinned* while a
  read uses them: closing or evicting a pinned handle only marks it, and the last read
  using it closes it.  :func:`release_handles` closes this process's handles on a local
  file before a writer opens it ``r+`` (HDF5 refuses that while the process holds it
  read-only); a handle a read is using is never closed under it.  Every opening of a
  read-only handle has a number of its own (:func:`pinned_opening`): what a reader
  checked through one opening holds until the handle is closed, released or evicted
  (nothing here writes through a read-only handle, and a writer here opens the file only
  after releasing them).
- **Raw descriptors** (:func:`descriptor`) the chunk reader reads chunk bytes with
  (``pread``), shared by the reads of one file version; a descriptor closes when the last
  reader holding it lets it go.
- **Chunk indexes** (:data:`CHUNK_INDEXES`) of the datasets read, by file version.

One fork hook resets all of it in a forked child (the parent's handles, and locks other
threads may have held at the fork, belong to the parent), with the rollback layer's
registry of writers (:func:`loomx._hdf5.rollback.forget_writers`).

Examples
--------
>>> with pinned("key", lambda: h5py.File("pbmc.loom", "r"), "pbmc.loom") as f:  # doctest: +SKIP
...     f["matrix"][0, :5]
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import h5py

from loomx._hdf5.filesystem import same_file
from loomx._hdf5.lru import LRUCache
from loomx._hdf5.rollback import forget_writers
from loomx.errors import LoomWriteError

__all__ = [
    "CHUNK_INDEXES",
    "FileHandle",
    "close",
    "descriptor",
    "forget_descriptor",
    "locking_in_use",
    "pinned",
    "pinned_opening",
    "release_handles",
    "released",
]

MAX_OPEN_FILES = 128
"""HDF5 handles kept open per process (xarray's ``file_cache_maxsize`` default)."""

_OPENINGS = itertools.count(1)
"""Numbers of the openings of read-only handles (never reused; a forked child goes on
counting from the parent's number)."""


@dataclass(eq=False)
class _Entry:
    file: h5py.File
    path: str | None  # the local file; None for a remote one (never written here)
    locking: bool | None = None
    pins: int = 0
    retired: bool = False  # out of the registry; the last read using it closes it
    opening: int | None = None  # None: the file is writable here (a writer's view)

    def __post_init__(self) -> None:
        if self.file.mode == "r":  # "r+" also for a read handle on a writer's open file
            self.opening = next(_OPENINGS)


def _retire(entry: _Entry) -> None:
    """Close ``entry`` now, or when the last read using it ends (called holding _LOCK)."""
    if entry.pins:
        entry.retired = True
        _RETIRED.append(entry)
    else:
        _close_quietly(entry.file)


def _close_quietly(handle: h5py.File) -> None:
    with contextlib.suppress(Exception):
        handle.close()


_LOCK = threading.RLock()
_OPEN: LRUCache[_Entry] = LRUCache(MAX_OPEN_FILES, on_evict=_retire)
"""This process's open HDF5 read handles, by recipe key."""
_RETIRED: list[_Entry] = []
"""Handles closed or evicted while a read was using them: closed when it ends."""


@contextlib.contextmanager
def pinned(
    key: Hashable,
    open_file: Callable[[], h5py.File],
    path: str | None = None,
    locking: bool | None = None,
) -> Iterator[h5py.File]:
    """The open HDF5 handle of ``key``, opened with ``open_file()`` if this process has
    none (or it was closed); not closed while the block runs.  (:func:`pinned_opening`
    with the handle only.)

    Parameters
    ----------
    key
        The recipe's key: every copy of one recipe in this process shares one handle.
    open_file
        Opens the file (through the one opener, :func:`loomx._hdf5.files.open_h5`).
    path
        The local file (:func:`release_handles` closes its handles before a write);
        None for a remote file.
    locking
        The HDF5 locking the handle was opened with (:func:`locking_in_use`).
    """
    with pinned_opening(key, open_file, path, locking) as (h5file, _):
        yield h5file


@contextlib.contextmanager
def pinned_opening(
    key: Hashable,
    open_file: Callable[[], h5py.File],
    path: str | None = None,
    locking: bool | None = None,
) -> Iterator[tuple[h5py.File, int | None]]:
    """:func:`pinned`'s handle and the number of its opening: two reads given the same
    number read through one opening of a read-only handle, never closed or reopened in
    between.  The number is None for a handle on a file this process holds writable (a
    writer's view, ``"r+"``): what it holds may change under it at any time.

    Examples
    --------
    >>> with pinned_opening("key", lambda: h5py.File("pbmc.loom", "r")) as (f, n):  # doctest: +SKIP
    ...     n
    1
    """
    with _LOCK:
        entry = _OPEN.peek(key)
        if entry is None or not entry.file.id.valid:
            entry = _OPEN.put(key, _Entry(open_file(), path, locking))
        entry.pins += 1
    try:
        yield entry.file, entry.opening
    finally:
        with _LOCK:
            entry.pins -= 1
            if entry.retired and not entry.pins:
                _RETIRED.remove(entry)
                _close_quietly(entry.file)


def close(key: Hashable) -> None:
    """Close this process's handle of ``key`` (after the reads using it have finished);
    the next :func:`pinned` of ``key`` reopens it."""
    with _LOCK:
        entry = _OPEN.pop(key)
        if entry is not None:
            _retire(entry)


def release_handles(path: str) -> int:
    """Close every handle this process's registry holds on the local file ``path``.

    Their recipes reopen the file on their next read.  A handle a read is using right
    now cannot be taken away: that raises :class:`~loomx.errors.LoomWriteError`.

    Returns
    -------
    int
        The number of handles closed.

    Examples
    --------
    >>> release_handles("pbmc.loom")  # doctest: +SKIP
    1
    """
    with _LOCK:
        mine = [(key, e) for key, e in _OPEN.items() if same_file(e.path, path)]
        busy = [e for _, e in mine if e.pins] + [e for e in _RETIRED if same_file(e.path, path)]
        if busy:
            raise LoomWriteError(
                "a read of this file is in progress in this process; write after the "
                "computation has finished",
                path=path,
            )
        for key, entry in mine:
            _OPEN.pop(key)
            _close_quietly(entry.file)
    return len(mine)


@contextlib.contextmanager
def released(path: str) -> Iterator[None]:
    """Release this process's handles on ``path`` (:func:`release_handles`) and open
    none on any file until the block ends: a writer opens ``path`` inside it."""
    with _LOCK:
        release_handles(path)
        yield


def locking_in_use(path: str) -> bool | None:
    """The locking setting of the handles loomx holds open on ``path`` here, if any (a
    writer must open the file with the same one)."""
    with _LOCK:
        entries = [e for _, e in _OPEN.items()] + _RETIRED
        for entry in entries:
            if same_file(entry.path, path):
                return entry.locking
    return None


@atexit.register
def _close_all() -> None:
    """Close the handles before the interpreter tears down what they read (a remote
    handle's file object)."""
    with _LOCK:
        entries = [e for _, e in _OPEN.items()] + _RETIRED
        _OPEN.clear()
        _RETIRED.clear()
    for entry in entries:
        _close_quietly(entry.file)


# --------------------------------------------------------------------------- descriptors


class FileHandle:
    """One open read-only file descriptor (no HDF5 lock on it), closed when the last
    reader holding it lets it go; never closed by a forked child."""

    __slots__ = ("fd", "path", "pid")

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.path = path
        self.pid = os.getpid()

    def __del__(self) -> None:
        if os.getpid() == self.pid:
            with contextlib.suppress(OSError):
                os.close(self.fd)


_DESCRIPTORS: LRUCache[FileHandle] = LRUCache()


def descriptor(key: Hashable, path: str) -> FileHandle:
    """The shared descriptor of ``key`` (a file version), opening ``path`` on a miss."""
    return _DESCRIPTORS.get(key, lambda: FileHandle(path))


def forget_descriptor(key: Hashable) -> None:
    """Stop sharing the descriptor of ``key`` (its path now names another file)."""
    _DESCRIPTORS.pop(key)


CHUNK_INDEXES: LRUCache[Any] = LRUCache()
"""Chunk indexes (:class:`loomx._hdf5.chunks.ChunkIndex`, or None for a dataset read by
h5py) by file version and dataset, local and remote."""


# --------------------------------------------------------------------------- fork


def _after_fork_in_child() -> None:
    """A forked child starts with a manager of its own: it forgets the parent's handles,
    descriptors and writers without closing them (it keeps the chunk indexes), and takes
    new locks."""
    global _LOCK
    _LOCK = threading.RLock()
    _OPEN.reset()
    _RETIRED.clear()
    _DESCRIPTORS.reset()
    CHUNK_INDEXES.reset(keep_values=True)  # data, valid in the child
    forget_writers()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

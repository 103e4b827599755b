"""Files as files: the one opener of HDF5 files, loomx's registry of open handles, fsync,
temporary names and moving finished files into place.

Every HDF5 file loomx reads, and every new file it writes, is opened by :func:`open_h5`,
which carries the ``locking`` setting: HDF5 refuses two handles on one file with
different settings, and a filesystem without file locking (NFS, Lustre) needs
``locking=False`` on every open.  Existing files written in place (write-back, append,
region writes, delete, recovery) are opened by :func:`open_for_writing`, through the
rollback journal below HDF5 (``_rollback``), which takes HDF5's lock itself.

Read handles are cached per process in a registry owned by loomx (:class:`CachedFile`):
a writer releases this process's handles on its target with :func:`release_handles`
before it opens it ``r+``, and a handle a read is using at that moment is never closed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import h5py

from loomx._hdf5.filesystem import is_url, open_error, refuse_remote, same_file
from loomx._hdf5.remote import RemoteSource
from loomx._hdf5.rollback import check_readable, open_journaled, shared_reader
from loomx.errors import LoomFileError, LoomFileNotFoundError, LoomWriteError

WriteOpener = Callable[[str, str], h5py.File]
_write_opener: WriteOpener | None = None
"""Opens files for writing instead of h5py's default driver (see :func:`write_opener`)."""


@contextlib.contextmanager
def write_opener(opener: WriteOpener) -> Iterator[None]:
    """Within the block, :func:`open_h5` opens files in modes ``"r+"`` and ``"w"`` with
    ``opener(path, mode)``: a test harness records a writer's file operations this way
    (:mod:`loomx.testing.powerloss`; :func:`open_for_writing` has its own hook,
    ``_rollback.use_disk``).  Not thread-safe; for tests."""
    global _write_opener
    previous, _write_opener = _write_opener, opener
    try:
        yield
    finally:
        _write_opener = previous


def open_h5(path: str, mode: str = "r", locking: bool | None = None) -> h5py.File:
    """Open ``path`` with h5py, turning h5py's errors into :mod:`loomx.errors`.

    Parameters
    ----------
    path
        The file.
    mode
        ``"r"``, ``"r+"`` (existing files) or ``"w"`` (a new file: loomx writes only
        temporary files this way and renames them into place when complete).
    locking
        HDF5 file locking (``None``: HDF5's default, ``False`` for filesystems without it).
    """
    if mode not in ("r", "r+", "w"):
        raise ValueError(f"mode must be 'r', 'r+' or 'w'; found {mode!r}")
    if is_url(path):
        if mode != "r":
            refuse_remote(path, f"open in mode {mode!r}")
        return RemoteSource(path).open_h5()
    kwargs: dict[str, Any] = {} if locking is None else {"locking": locking}
    if _write_opener is not None and mode != "r" and (mode == "w" or os.path.isfile(path)):
        return _write_opener(path, mode)
    if mode == "w":
        try:
            return h5py.File(path, "w", **kwargs)
        except OSError as err:
            raise LoomWriteError(f"cannot create: {err}", path=path) from err
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise LoomFileError("a directory; expected a Loom (HDF5) file", path=path)
        raise LoomFileNotFoundError("no such file; expected a Loom (HDF5) file", path=path)
    if mode == "r":
        shared = shared_reader(path)  # this process writes it: share the writer's view
        if shared is not None:
            return shared
        check_readable(path, locking)
    try:
        return h5py.File(path, mode, **kwargs)
    except OSError as err:
        raise open_error(path, mode, locking, err) from err


# --------------------------------------------------------------------------- handle registry


@dataclass
class _Entry:
    file: h5py.File
    path: str
    locking: bool | None = None
    pins: int = 0
    closing: bool = False


_REGISTRY: dict[str, _Entry] = {}
"""This process's open read handles, by :class:`CachedFile` key."""
_REGISTRY_LOCK = threading.RLock()


def _after_fork_in_child() -> None:
    """A forked child starts with a registry of its own (the parent's handles and a lock
    another thread may have held belong to the parent)."""
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.RLock()
    _REGISTRY.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class CachedFile:
    """A picklable recipe for one read handle, opened lazily once per process.

    The handle lives in loomx's registry of open handles, so that a writer can release it
    (:func:`release_handles`); the next use reopens it.  Pickles as the recipe with its
    key, so the copies a process receives (dask tasks, workers) share one handle there.

    Parameters
    ----------
    path, mode, locking
        As for :func:`open_h5` (``"r"`` or ``"r+"``).
    """

    def __init__(
        self, path: str, mode: str = "r", locking: bool | None = None, key: str | None = None
    ) -> None:
        self.path = os.path.abspath(path)  # workers may run in another folder
        self.mode = mode
        self.locking = locking
        self.key = key or uuid.uuid4().hex

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "mode": self.mode, "locking": self.locking, "key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        """What it pickles as, for :func:`dask.base.tokenize` (faster than pickling)."""
        return (type(self).__name__, self.path, self.mode, self.locking, self.key)

    @contextlib.contextmanager
    def acquire(self) -> Iterator[h5py.File]:
        """The open file, reopened if it was released; it is not closed while in use."""
        with _REGISTRY_LOCK:
            entry = _REGISTRY.get(self.key)
            if entry is None or entry.closing or not entry.file.id.valid:
                handle = open_h5(self.path, self.mode, self.locking)
                entry = _Entry(handle, self.path, self.locking)
                _REGISTRY[self.key] = entry
            entry.pins += 1
        try:
            yield entry.file
        finally:
            with _REGISTRY_LOCK:
                entry.pins -= 1
                if entry.closing and not entry.pins:
                    entry.file.close()

    def close(self) -> None:
        """Close this process's handle (after the reads using it have finished)."""
        with _REGISTRY_LOCK:
            entry = _REGISTRY.pop(self.key, None)
            if entry is None:
                return
            if entry.pins:
                entry.closing = True
            else:
                entry.file.close()


def release_handles(path: str) -> int:
    """Close every handle loomx's registry holds on ``path`` in this process.

    Their recipes reopen the file on their next read.  A handle a read is using right
    now cannot be taken away: that raises :class:`~loomx.errors.LoomWriteError`.

    Returns
    -------
    int
        The number of handles closed.
    """
    with _REGISTRY_LOCK:
        mine = [key for key, entry in _REGISTRY.items() if same_file(entry.path, path)]
        if any(_REGISTRY[key].pins for key in mine):
            raise LoomWriteError(
                "a read of this file is in progress in this process; write after the "
                "computation has finished",
                path=path,
            )
        for key in mine:
            _REGISTRY.pop(key).file.close()
    return len(mine)


def open_for_writing(
    path: str, locking: bool | None = None, client: Any = None, mode: str = "r+"
) -> h5py.File:
    """Open the existing file ``path`` ``r+`` after releasing this process's (and
    ``client``'s workers') cached read handles on it; no read here reopens it meanwhile.

    The file is held locked and written through a rollback journal (``_rollback``): a
    crash at any moment, inside HDF5's flushes too, leaves the old bytes recoverable, and
    closing the file commits.  A journal an interrupted writer left is restored first.
    ``mode="r"`` holds the writer's lock without writing.
    """
    if is_url(path):
        refuse_remote(path, "open for writing")
    if not os.path.isfile(path):
        raise LoomFileNotFoundError("no such file; expected an existing Loom file", path=path)
    if client is not None:
        client.run(release_handles, path)
    with _REGISTRY_LOCK:
        release_handles(path)
        return open_journaled(path, locking, mode)


def locking_in_use(path: str) -> bool | None:
    """The locking setting of the handles loomx holds open on ``path`` here, if any (a
    writer must open the file with the same one)."""
    with _REGISTRY_LOCK:
        for entry in _REGISTRY.values():
            if same_file(entry.path, path):
                return entry.locking
    return None

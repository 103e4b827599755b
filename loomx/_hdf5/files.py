"""The one opener of HDF5 files (:func:`open_h5`, :func:`open_for_writing`) and the
picklable recipe of a read handle (:class:`CachedFile`).

Every HDF5 file loomx reads, and every new file it writes, is opened by :func:`open_h5`,
which carries the ``locking`` setting: HDF5 refuses two handles on one file with
different settings, and a filesystem without file locking (NFS, Lustre) needs
``locking=False`` on every open.  Existing files written in place (write-back, append,
region writes, delete, recovery) are opened by :func:`open_for_writing`, through the
rollback journal below HDF5 (:mod:`loomx._hdf5.rollback`), which takes HDF5's lock
itself.

Read handles, local and remote, are picklable recipes (:class:`CachedFile`) whose
handles live in loomx's handle manager (:mod:`loomx._hdf5.handles`): a writer releases
this process's handles on its target with :func:`release_handles` before it opens it
``r+``, and a handle a read is using at that moment is never closed.
(:func:`release_handles` and :func:`locking_in_use` are the manager's, named here for the
writers that open files.)
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import h5py

from loomx._hdf5 import handles as _handles
from loomx._hdf5.filesystem import is_url, open_error, refuse_remote
from loomx._hdf5.handles import locking_in_use, release_handles
from loomx._hdf5.journal import check_readable
from loomx._hdf5.remote import RemoteSource
from loomx._hdf5.rollback import open_journaled, shared_reader
from loomx.errors import LoomFileError, LoomFileNotFoundError, LoomWriteError

__all__ = [
    "CachedFile",
    "locking_in_use",
    "open_for_writing",
    "open_h5",
    "release_handles",
    "write_opener",
]

WriteOpener = Callable[[str, str], h5py.File]
_write_opener: WriteOpener | None = None
"""Opens files for writing instead of h5py's default driver (see :func:`write_opener`)."""


@contextlib.contextmanager
def write_opener(opener: WriteOpener) -> Iterator[None]:
    """Within the block, :func:`open_h5` opens files in modes ``"r+"`` and ``"w"`` with
    ``opener(path, mode)``: a test harness records a writer's file operations this way
    (:mod:`loomx.testing.powerloss`; :func:`open_for_writing` has its own hook,
    ``loomx._hdf5.journal.use_disk``).  Not thread-safe; for tests."""
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


# --------------------------------------------------------------------------- read handles


class CachedFile:
    """A picklable recipe for one read handle, local or remote, opened lazily once per
    process through :func:`open_h5` (the remote file's :class:`RemoteSource`).

    The handle lives in loomx's handle manager (:mod:`loomx._hdf5.handles`), so that a
    writer can release it (:func:`release_handles`); the next use reopens it.  Pickles as
    the recipe with its key, so the copies a process receives (dask tasks, workers) share
    one handle there.

    Parameters
    ----------
    target
        The local file's path, or a :class:`RemoteSource`.
    mode, locking
        As for :func:`open_h5` (``"r"`` or ``"r+"``; a remote file is read-only).
    key
        Shared by the copies of one recipe (default: a new one).

    Examples
    --------
    >>> handle = CachedFile("pbmc.loom")  # doctest: +SKIP
    >>> with handle.acquire() as f:  # doctest: +SKIP
    ...     f["matrix"].shape
    (32738, 2700)
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | RemoteSource,
        mode: str = "r",
        locking: bool | None = None,
        key: str | None = None,
    ) -> None:
        self.source = target if isinstance(target, RemoteSource) else None
        if self.source is not None:
            if mode != "r":  # callers refuse writes to remote files first (refuse_remote)
                raise ValueError(f"remote files open in mode 'r' only; found {mode!r}")
            self.path = self.source.name
        else:
            self.path = os.path.abspath(os.fspath(target))  # workers may run elsewhere
        self.mode = mode
        self.locking = locking
        self.key = key or uuid.uuid4().hex

    def __getstate__(self) -> dict[str, Any]:
        target = self.source if self.source is not None else self.path
        return {"target": target, "mode": self.mode, "locking": self.locking, "key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        """What it pickles as, for :func:`dask.base.tokenize` (faster than pickling)."""
        return (type(self).__name__, self.path, self.mode, self.locking, self.key)

    def _open(self) -> h5py.File:
        if self.source is not None:
            return self.source.open_h5()
        return open_h5(self.path, self.mode, self.locking)

    def acquire(self) -> contextlib.AbstractContextManager[h5py.File]:
        """The open file, reopened if it was released; it is not closed while in use."""
        local = None if self.source is not None else self.path
        return _handles.pinned(self.key, self._open, local, self.locking)

    def acquire_opening(self) -> contextlib.AbstractContextManager[tuple[h5py.File, int | None]]:
        """:meth:`acquire`'s file and the number of its opening
        (:func:`loomx._hdf5.handles.pinned_opening`)."""
        local = None if self.source is not None else self.path
        return _handles.pinned_opening(self.key, self._open, local, self.locking)

    def close(self) -> None:
        """Close this process's handle (after the reads using it have finished)."""
        _handles.close(self.key)


def open_for_writing(
    path: str, locking: bool | None = None, client: Any = None, mode: str = "r+"
) -> h5py.File:
    """Open the existing file ``path`` ``r+`` after releasing this process's (and
    ``client``'s workers') cached read handles on it; no read here reopens it meanwhile.

    The file is held locked and written through a rollback journal (``rollback``): a
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
    with _handles.released(path):
        return open_journaled(path, locking, mode)

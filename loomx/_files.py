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
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import h5py

from ._spec import TEMPORARY_TAG
from .errors import LoomFileError, LoomFileNotFoundError, LoomWriteError, LoomxError

__all__ = [
    "HDF5_SIGNATURE",
    "CachedFile",
    "fsync",
    "is_url",
    "locking_enforced",
    "locking_in_use",
    "move_into_place",
    "open_error",
    "open_for_writing",
    "open_h5",
    "owner_alive",
    "release_handles",
    "same_file",
    "temp_path",
    "temporary_file",
    "write_opener",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# --------------------------------------------------------------------------- opening

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL (``scheme://...``) other than ``file://``: a remote file,
    read through :mod:`loomx.remote`."""
    match = _URL.match(path)
    return match is not None and match.group(1).lower() not in ("file", "local")


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
        from .remote import RemoteSource, refuse_remote

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
        from ._rollback import check_readable, shared_reader

        shared = shared_reader(path)  # this process writes it: share the writer's view
        if shared is not None:
            return shared
        check_readable(path, locking)
    try:
        return h5py.File(path, mode, **kwargs)
    except OSError as err:
        raise open_error(path, mode, locking, err) from err


def open_error(path: str, mode: str, locking: bool | None, err: OSError) -> LoomxError:
    """The loomx error for h5py's ``err`` on opening ``path`` in ``mode``."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head != HDF5_SIGNATURE and head and HDF5_SIGNATURE.startswith(head):
        return LoomFileError(
            f"truncated or corrupt: {len(head)} bytes, the start of the HDF5 signature "
            "and nothing else (expected a Loom (HDF5) file)",
            path=path,
        )
    if head != HDF5_SIGNATURE:
        return LoomFileError(
            f"not an HDF5 file (found first bytes {head!r}, expected the HDF5 "
            f"signature {HDF5_SIGNATURE!r}); a Loom file is an HDF5 file",
            path=path,
        )
    if "locking flag values don't match" in str(err):
        return LoomFileError(
            f"already open in this process with another locking setting (asked for "
            f"locking={locking!r}); HDF5 needs the same setting for every handle of a "
            "file: pass the locking the file was opened with, or close the other Dataset",
            path=path,
        )
    if mode == "r+" and "unable to lock file" in str(err):
        return LoomWriteError(
            "cannot open for writing: another process has this file open (HDF5 file "
            f"lock held: {err}). Close it there (loomx Datasets, h5py, loompy) or wait "
            "for its write to finish, then retry; locking=False removes this check, "
            "not the danger of writing a file others read",
            path=path,
        )
    if "unable to lock file" in str(err):
        return LoomFileError(
            "cannot open for reading: another process is writing this file (HDF5 file "
            f"lock held: {err}); retry when its write has finished",
            path=path,
        )
    if mode == "r+":
        return LoomWriteError(
            f"cannot open for writing ({err}); close other handles on this file "
            "(h5py.File, loompy, other processes) and retry",
            path=path,
        )
    return LoomFileError(
        f"cannot open as HDF5 in mode {mode!r}: {err}. The file may be truncated or "
        "corrupt, or locked by a writer (pass locking=False only on filesystems without "
        "file locking)",
        path=path,
    )


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
        from .remote import refuse_remote

        refuse_remote(path, "open for writing")
    if not os.path.isfile(path):
        raise LoomFileNotFoundError("no such file; expected an existing Loom file", path=path)
    if client is not None:
        client.run(release_handles, path)
    with _REGISTRY_LOCK:
        release_handles(path)
        from ._rollback import open_journaled

        return open_journaled(path, locking, mode)


def locking_in_use(path: str) -> bool | None:
    """The locking setting of the handles loomx holds open on ``path`` here, if any (a
    writer must open the file with the same one)."""
    with _REGISTRY_LOCK:
        for entry in _REGISTRY.values():
            if same_file(entry.path, path):
                return entry.locking
    return None


# --------------------------------------------------------------------------- files


def fsync(path: str) -> None:
    """Flush the operating system's buffers of ``path`` (a file or a folder) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def same_file(a: str | os.PathLike[str] | None, b: str) -> bool:
    """Whether ``a`` names the file ``b`` (False for no name)."""
    if not a:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def owner_alive(token: str) -> bool:
    """Whether the process whose pid starts ``token`` (``"{pid}-..."``) still runs here."""
    pid = token.split("-", 1)[0]
    if not pid.isdigit() or not 0 < int(pid) < 1 << 31:  # no such process id: no owner
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def locking_enforced(locking: bool | None = None) -> bool:
    """Whether HDF5 file locking is on for an open with ``locking`` (the default): then a
    file open ``r+`` here is open nowhere else."""
    if locking is not None:
        return bool(locking)
    setting = os.environ.get("HDF5_USE_FILE_LOCKING", "").strip().upper()
    return setting not in ("FALSE", "0", "BEST_EFFORT", "BEST-EFFORT")


def temp_path(path: str, kind: str) -> str:
    """A new temporary file name next to ``path``; removes those of writers that are gone."""
    if is_url(path):
        from .remote import refuse_remote

        refuse_remote(path, "write")
    folder, base = os.path.split(os.path.abspath(path))
    prefix = f".{base}{TEMPORARY_TAG}"
    for stale in os.listdir(folder):
        if stale.startswith(prefix) and not owner_alive(stale[len(prefix) :]):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, stale))
    return os.path.join(folder, f"{prefix}{os.getpid()}-{kind}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def temporary_file(path: str, kind: str, what: str) -> Iterator[str]:
    """A new temporary file name next to ``path``, removed at the end whatever happens.

    An ``OSError`` in the body becomes a :class:`~loomx.errors.LoomWriteError` saying that
    ``what`` failed; loomx's own errors pass as they are.
    """
    tmp = temp_path(path, kind)
    try:
        yield tmp
    except LoomxError:
        raise
    except OSError as exc:
        raise LoomWriteError(f"{what} failed: {exc}", path=path) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def move_into_place(tmp: str, path: str) -> None:
    """Rename the finished file ``tmp`` to ``path`` durably (fsynced before and after),
    keeping the permissions of a file it replaces."""
    if os.path.exists(path):
        shutil.copymode(path, tmp)
    fsync(tmp)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fsync(os.path.dirname(os.path.abspath(path)))

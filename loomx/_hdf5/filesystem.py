"""Files on disk: URLs told from paths, the HDF5 signature and what a failed open means,
fsync, temporary names (and whether their owner is alive), moving files into place.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

from loomx.errors import LoomFileError, LoomWriteError, LoomxError

__all__ = [
    "TEMPORARY_TAG",
    "display_name",
    "fsync",
    "hdf5_locking",
    "is_fsspec_file",
    "is_remote",
    "is_url",
    "locking_enforced",
    "move_into_place",
    "open_error",
    "owner_alive",
    "refuse_remote",
    "same_file",
    "signature_error",
    "temporary_file",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# --------------------------------------------------------------------------- opening

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL (``scheme://...``) other than ``file://``: a remote file,
    read through :mod:`loomx._hdf5.remote`."""
    match = _URL.match(path)
    return match is not None and match.group(1).lower() not in ("file", "local")


def is_remote(path_or_file: Any) -> bool:
    """Whether ``open_loom`` reads this through :class:`RemoteSource`: a URL other than
    ``file://``, or an open binary file object."""
    if isinstance(path_or_file, (str, os.PathLike)):
        return is_url(os.fspath(path_or_file))
    return hasattr(path_or_file, "read") and hasattr(path_or_file, "seek")


def refuse_remote(path: Any, what: str) -> None:
    """Raise :class:`LoomWriteError` when ``path`` is a remote file: loomx writes local
    files only (a write-back needs an atomic rename and HDF5 locking)."""
    if is_remote(path):
        raise LoomWriteError(
            f"cannot {what}: remote files are read-only in loomx (found a "
            f"{'URL' if isinstance(path, (str, os.PathLike)) else 'file object'}, expected "
            "a local path). Write to a local file and upload it",
            path=display_name(path),
        )


def is_fsspec_file(obj: Any) -> bool:
    return getattr(obj, "fs", None) is not None and isinstance(getattr(obj, "path", None), str)


def display_name(path_or_file: Any) -> str:
    if isinstance(path_or_file, (str, os.PathLike)):
        return os.fspath(path_or_file)
    if is_fsspec_file(path_or_file):
        return str(path_or_file.fs.unstrip_protocol(path_or_file.path))
    name = getattr(path_or_file, "name", None)
    return str(name) if isinstance(name, str) else f"<{type(path_or_file).__name__}>"


def signature_error(head: bytes, name: str) -> LoomFileError | None:
    """The error for a file whose first bytes are ``head`` when they are not the HDF5
    signature (a truncated file, or another format), else None."""
    if head == HDF5_SIGNATURE:
        return None
    if head and HDF5_SIGNATURE.startswith(head):
        return LoomFileError(
            f"truncated or corrupt: {len(head)} bytes, the start of the HDF5 signature "
            "and nothing else (expected a Loom (HDF5) file)",
            path=name,
        )
    return LoomFileError(
        f"not an HDF5 file (found first bytes {head!r}, expected the HDF5 "
        f"signature {HDF5_SIGNATURE!r}); a Loom file is an HDF5 file",
        path=name,
    )


def open_error(path: str, mode: str, locking: bool | None, err: OSError) -> LoomxError:
    """The loomx error for h5py's ``err`` on opening ``path`` in ``mode``."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    not_hdf5 = signature_error(head, path)
    if not_hdf5 is not None:
        return not_hdf5
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


def hdf5_locking(locking: bool | None = None) -> str:
    """How HDF5 locks a file it opens with ``locking``: ``"on"``, ``"off"`` or
    ``"best-effort"`` (locks where the filesystem has them).  ``None`` follows
    ``HDF5_USE_FILE_LOCKING`` as HDF5 reads it: the exact strings ``FALSE`` or ``0`` turn it
    off, ``BEST_EFFORT`` makes it best effort, anything else (``false``, `` FALSE ``)
    leaves it on; ``True`` and ``False`` override it.

    Examples
    --------
    >>> hdf5_locking(False)
    'off'
    """
    if locking is not None:
        return "on" if locking else "off"
    setting = os.environ.get("HDF5_USE_FILE_LOCKING", "")
    if setting in ("FALSE", "0"):  # HDF5 compares these exactly (H5F__parse_file_lock_env_var)
        return "off"
    if setting == "BEST_EFFORT":
        return "best-effort"
    return "on"


def locking_enforced(locking: bool | None = None) -> bool:
    """Whether HDF5 file locking is on for an open with ``locking`` (the default): then a
    file open ``r+`` here is open nowhere else."""
    return hdf5_locking(locking) == "on"


def temp_path(path: str, kind: str) -> str:
    """A new temporary file name next to ``path``; removes those of writers that are gone."""
    if is_url(path):
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


TEMPORARY_TAG = ".loomx-tmp-"
"""Marks objects and files a loomx writer has not finished; readers skip such names."""

"""What a command checks before it computes: sources (paths and URLs) and where results go.

A command that would fail at its end (a read-only or locked file, an output folder that
does not exist, a URL it cannot write back to) is refused here instead, before any data is
read, with what to do.  Only the standard library is imported: the checks run before the
scientific stack is loaded.

Examples
--------
>>> source_path("file:///data/pbmc.loom")
'/data/pbmc.loom'
>>> is_url("s3://bucket/pbmc.loom")
True
"""

from __future__ import annotations

import errno
import os
import re
import urllib.parse
import urllib.request

from loomx.errors import LoomFileError, LoomFileNotFoundError, LoomNameError, LoomWriteError

__all__ = [
    "check_column_attribute",
    "check_in_place",
    "check_output",
    "is_url",
    "loom_source",
    "source_path",
]

_OTHER_FORMATS = {".h5ad": "an AnnData (.h5ad) file", ".h5": "a 10x (.h5) file"}

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")


def is_url(path: str) -> bool:
    """Whether ``path`` names a remote file (``https://``, ``s3://``, any fsspec URL)."""
    match = _URL.match(os.fspath(path))
    return match is not None and match.group(1).lower() != "file"


def source_path(path: str) -> str:
    """``path`` as the readers take it: ``file://`` URLs become local paths; other URLs and
    local paths are returned as they are."""
    path = os.fspath(path)
    if path[:7].lower() == "file://":
        parsed = urllib.parse.urlparse(path)
        if parsed.netloc not in ("", "localhost"):
            raise LoomFileNotFoundError(
                f"file URL on another host ({parsed.netloc}); expected file:///path", path=path
            )
        return urllib.request.url2pathname(parsed.path)
    return path


def loom_source(path: str) -> str:
    """:func:`source_path` of a file that must be Loom: other formats that ``loomx
    convert`` reads are refused with the command that converts them."""
    path = source_path(path)
    stem, suffix = os.path.splitext(path.rstrip("/"))
    kind = _OTHER_FORMATS.get(suffix.lower())
    if kind is not None:
        name = os.path.basename(stem)
        raise LoomFileError(
            f"is {kind}, not Loom; convert it first: loomx convert {path} {name}.loom",
            path=path,
        )
    return path


def check_column_attribute(path: str, name: str, option: str = "--by") -> None:
    """Refuse a column attribute ``name`` that the file does not have, naming those it has
    (reads the file's metadata only)."""
    from loomx._format import names as conv
    from loomx._read.backend import open_loom

    with open_loom(path, chunks=None) as ds:
        col = conv.dataset_dims(ds)[1]
        found = [str(n) for n, v in ds.variables.items() if v.dims == (col,)]
    if name not in found:
        raise LoomNameError(
            f"no column attribute {name!r}; the column attributes are "
            f"{', '.join(sorted(found)) or '(none)'}; choose one with {option}",
            path=path,
        )


def check_output(output: str, source: str | None = None) -> None:
    """Refuse an output whose folder is missing or not writable, or that is ``source``."""
    if is_url(output):
        raise LoomWriteError(
            "results are written to local files only; give a local path and upload it",
            path=output,
        )
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise LoomWriteError(
            f"the folder {folder} does not exist; create it (mkdir -p) or write elsewhere",
            path=output,
        )
    if not os.access(folder, os.W_OK):
        raise LoomWriteError(f"the folder {folder} is not writable; write elsewhere", path=output)
    if os.path.isdir(output):
        raise LoomWriteError("is a directory; expected a file name", path=output)
    local = source is not None and not is_url(source) and os.path.exists(source)
    if local and os.path.exists(output) and os.path.samefile(str(source), output):
        raise LoomWriteError("the output is the input; write elsewhere", path=output)


def check_in_place(path: str, option: str = "-o OUT.loom") -> None:
    """Refuse to write into ``path`` when the write would fail: a URL, a read-only mount, an
    immutable or unwritable file, an unwritable folder, a file another process holds open.

    ``option`` is what the message offers instead (the command's output option).
    """
    if is_url(path):
        raise LoomWriteError(
            f"remote files are read-only; give {option} to write the results to a local file",
            path=path,
        )
    if not os.path.isfile(path):
        return  # the reader says what is wrong with it
    try:
        fd = os.open(path, os.O_WRONLY)  # opening changes nothing; it finds what writing would
    except OSError as exc:
        raise LoomWriteError(_unwritable(exc, option), path=path) from None
    try:
        _check_unlocked(fd, path, option)
    finally:
        os.close(fd)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.access(folder, os.W_OK):
        raise LoomWriteError(
            f"its folder {folder} is not writable (a write needs a temporary file there); "
            f"give {option}",
            path=path,
        )


def _unwritable(exc: OSError, option: str) -> str:
    if exc.errno == errno.EROFS:
        return f"on a read-only filesystem; give {option} to write the results elsewhere"
    if exc.errno == errno.EPERM:
        return f"the file is immutable (chattr +i); give {option}, or chattr -i it"
    if exc.errno == errno.EACCES:
        return f"the file is not writable (permissions); give {option}, or chmod u+w it"
    return f"cannot be written ({exc.strerror}); give {option}"


def _check_unlocked(fd: int, path: str, option: str) -> None:
    """Refuse a file another process holds open through HDF5 (which ``flock``s it)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise LoomWriteError(
                f"another process has the file open; close it (or wait) or give {option}",
                path=path,
            ) from None
        return  # a filesystem without locks: the writer decides
    fcntl.flock(fd, fcntl.LOCK_UN)

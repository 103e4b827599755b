"""What the command line says when a command fails: one line, what happened and what to do.

Internal temporary file names never show (a write's temporary ``.x.loom.loomx-tmp-...``
reads as ``x.loom``); operating-system errors are said in words with the usual remedy; a
missing optional package names the extra that installs it.  Standard library only.

Examples
--------
>>> describe(OSError(30, "Read-only file system", "/d/.x.loom.loomx-tmp-9-spool-1"))
'/d/x.loom: read-only file system; give -o OUT.loom to write the results elsewhere'
>>> describe(ModuleNotFoundError("No module named 'anndata'", name="anndata"))
"this needs the optional package anndata: pip install 'loomx[anndata]'"
"""

from __future__ import annotations

import errno
import re

from loomx.errors import LoomxError

__all__ = ["EXTRAS", "describe", "without_temporary_names"]

EXTRAS = {
    "anndata": "anndata",
    "fsspec": "remote",
    "aiohttp": "remote",
    "s3fs": "remote",
    "distributed": "distributed",
    "isal": "fast",
}
"""Optional top-level packages -> the ``loomx[extra]`` that installs them."""

_TEMPORARY = re.compile(r"(?<![^\s'\"/(])\.([^/\s'\"]+?)\.loomx-tmp-[^/\s'\":,;)]*")

_OS_ERRORS = {
    errno.EROFS: "read-only file system; give -o OUT.loom to write the results elsewhere",
    errno.EACCES: "permission denied; check the file's permissions or write elsewhere (-o)",
    errno.EPERM: "operation not permitted (an immutable file?); write elsewhere (-o)",
    errno.ENOENT: "no such file or directory; check the path",
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EISDIR: "is a directory; expected a file",
    errno.ENOTDIR: "a part of the path is not a directory; check the path",
}


def without_temporary_names(text: str) -> str:
    """``text`` with loomx's temporary file names replaced by the files they become."""
    return _TEMPORARY.sub(r"\1", text)


def describe(err: BaseException) -> str:
    """One line about ``err``: what happened and what to do (no ``loomx:`` prefix)."""
    if isinstance(err, ModuleNotFoundError) and err.name:
        top = err.name.split(".")[0]
        extra = EXTRAS.get(top)
        install = f"pip install 'loomx[{extra}]'" if extra else f"pip install {top}"
        return f"this needs the optional package {top}: {install}"
    if isinstance(err, LoomxError):
        text = str(err)
    elif isinstance(err, OSError) and err.errno in _OS_ERRORS:
        where = err.filename if err.filename is not None else ""
        text = f"{where}: {_OS_ERRORS[err.errno]}" if where else _OS_ERRORS[err.errno]
    elif isinstance(err, (OSError, ValueError, KeyError, ImportError)):
        text = f"{_plain(err)} ({type(err).__name__})"
    else:  # a bug: still one line, with what to report
        text = f"unexpected {type(err).__name__}: {_plain(err)} (please report this)"
    return " ".join(without_temporary_names(text).split())


def _plain(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err) or type(err).__name__

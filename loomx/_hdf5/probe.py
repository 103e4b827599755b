"""Opening an untrusted file in a child process first (``open_loom(path, untrusted=True)``).

HDF5 is C code: a damaged file can make it loop forever (a global heap with a zero-sized
free-space object) or crash the process (a damaged link table).  :func:`probe_file` runs
the part of HDF5 that reads metadata in a child process with a time limit and a memory
limit (``RLIMIT_AS``): the child opens the file, walks every group and dataset by its
links (soft and external links are named, not followed), reads every attribute, decodes
every variable-length string dataset and attribute, and reads each chunked dataset's chunk
index.  It reports each object before it touches it, through a pipe, so that a hang, a
crash or an error becomes a :class:`~loomx.errors.LoomFileError` naming the file and the
object being read.  The calling process opens the file only after the child finished.

Layer data are not read (the kernels check what they decode, see
:mod:`loomx._hdf5.kernels`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

__all__ = ["PROBE_MEMORY", "PROBE_SECONDS", "is_hdf5", "probe_file", "walk"]

PROBE_SECONDS = 60.0
"""The default time limit of the child process (``LOOMX_PROBE_SECONDS`` overrides it)."""
PROBE_MEMORY = 4 << 30
"""The default address-space limit of the child process, in bytes."""


def _report(out: Any, what: str) -> None:
    out.write(what + "\n")
    out.flush()


def walk(path: str, out: Any) -> None:
    """Touch every object, attribute, string and chunk index of ``path`` with h5py,
    writing each object's HDF5 path to ``out`` before touching it (the child's work)."""
    import h5py
    import numpy as np

    def strings(value: Any) -> None:
        for item in np.asarray(value, dtype=object).ravel():
            if isinstance(item, bytes):
                item.decode("utf-8", errors="strict")

    def attributes(obj: Any, where: str) -> None:
        for name in obj.attrs:
            _report(out, f"{where} (attribute {name})")
            value = obj.attrs[name]
            if np.asarray(value).dtype.kind in "OS":
                strings(value)

    def dataset(dset: Any, where: str) -> None:
        attributes(dset, where)
        if h5py.check_string_dtype(dset.dtype) is not None or dset.dtype.kind == "O":
            _report(out, f"{where} (strings)")
            strings(dset[()])
        if dset.chunks is not None:
            _report(out, f"{where} (chunk index)")
            chunks: list[int] = []
            dset.id.chunk_iter(lambda info: chunks.append(info.size))

    seen: set[Any] = set()
    with h5py.File(path, "r") as f:
        _report(out, "/")
        attributes(f, "/")
        stack = [(f, "")]
        while stack:
            group, base = stack.pop()
            _report(out, base or "/")
            for name in list(group):
                where = f"{base}/{name}"
                _report(out, where)
                link = group.get(name, getlink=True)
                if not isinstance(link, h5py.HardLink):
                    continue
                obj = group[name]
                key = h5py.h5o.get_info(obj.id).addr  # hard links may form cycles
                if key in seen:
                    continue
                seen.add(key)
                if isinstance(obj, h5py.Group):
                    attributes(obj, where)
                    stack.append((obj, where))
                elif isinstance(obj, h5py.Dataset):
                    dataset(obj, where)
    _report(out, "DONE")


_CHILD = "import runpy, sys; runpy.run_path(sys.argv[1])['walk'](sys.argv[2], sys.stdout)"


def _limits(memory: int) -> None:  # pragma: no cover - runs in the child
    import resource

    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        memory = min(memory, hard)  # a limited parent: never more than it has
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def probe_file(
    path: str | os.PathLike[str],
    *,
    timeout: float | None = None,
    memory: int = PROBE_MEMORY,
) -> float:
    """Read every object's metadata of ``path`` in a child process first; return the
    seconds it took.

    Raises
    ------
    LoomFileError
        The child hung past ``timeout`` seconds, crashed, ran out of ``memory`` bytes or
        failed; the error names the object it was reading.

    Examples
    --------
    >>> probe_file("download.loom")  # doctest: +SKIP
    0.21
    """
    # loomx is imported here, not at the top: the child runs this file without the package
    # (python, h5py and numpy only: it starts in a fraction of loomx's import time)
    from loomx.errors import LoomFileError, LoomFileNotFoundError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LoomFileNotFoundError("no such file", path=path)
    if timeout is None:
        timeout = float(os.environ.get("LOOMX_PROBE_SECONDS", PROBE_SECONDS))
    start = time.perf_counter()
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": os.environ.get("HDF5_USE_FILE_LOCKING", "FALSE")}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, __file__, path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        preexec_fn=(lambda: _limits(memory)) if os.name == "posix" else None,
    )
    try:
        out, err = child.communicate(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        hung = True
    lines = out.splitlines()
    if not hung and child.returncode == 0 and lines and lines[-1] == "DONE":
        return time.perf_counter() - start
    last = lines[-1] if lines else "the file itself (opening it)"
    if hung:
        what = f"HDF5 did not finish within {timeout:g} s (a hang on damaged metadata)"
    elif child.returncode < 0:
        what = f"HDF5 crashed the process reading it (signal {-child.returncode})"
    elif "MemoryError" in err:
        what = f"reading it needed more than {memory >> 20} MiB"
    else:
        tail = err.strip().splitlines()[-1] if err.strip() else f"exit {child.returncode}"
        what = f"HDF5 failed reading it ({tail})"
    raise LoomFileError(
        f"refused as untrusted input: {what}, at {last}; the file was not opened in this "
        "process (open_loom(..., untrusted=False) or --trusted skips this check)",
        path=path,
        h5path=last.split(" (")[0] if last.startswith("/") else None,
    )


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file with the HDF5 signature (at 0 or after a user block)."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as fh:
        for at in (0, 512, 1024, 2048):
            fh.seek(at)
            if fh.read(8) == _SIGNATURE:
                return True
    return False

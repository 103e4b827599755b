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

The children are forked from a probe server (:func:`serve`), a process started once per
calling process that has imported h5py and numpy (but not loomx) and never opens a file
itself: a probe costs two forks and the walk, not an interpreter's start.  The server
forks one supervising child per probe, which forks the walking child, enforces the time
limit and answers how it ended.

Layer data are not read (the kernels check what they decode, see
:mod:`loomx._hdf5.kernels`).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from typing import Any

__all__ = ["PROBE_MEMORY", "PROBE_SECONDS", "is_hdf5", "probe_file", "walk"]

PROBE_SECONDS = 60.0
"""The default time limit of the child process (``LOOMX_PROBE_SECONDS`` overrides it)."""
PROBE_MEMORY = 4 << 30
"""The default memory limit of the child process: the address space it may add to what
it has mapped when it starts, in bytes."""


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


_SERVE = "import runpy, sys; runpy.run_path(sys.argv[1])['serve'](sys.argv[2])"


def _limit(memory: int) -> None:  # pragma: no cover - runs in the child
    """Cap the child's address space at what it has mapped now plus ``memory`` bytes."""
    import resource

    with open("/proc/self/statm") as fh:
        mapped = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = mapped + memory
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)  # a limited parent: never more than it has
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _walk_child(path: str, memory: int, fd: int) -> None:  # pragma: no cover - in the child
    """The forked child: limits, then :func:`walk`; an exception is reported as ERROR."""
    code = 1
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        out = os.fdopen(fd, "w")
        _limit(memory)
        try:
            walk(path, out)
            code = 0
        except BaseException as err:
            message = f"{type(err).__name__}: {err}".replace("\n", " ")[:500]
            _report(out, f"ERROR {message}")
    finally:
        os._exit(code)


def _supervise(conn: Any) -> None:  # pragma: no cover - runs in the server's child
    """One probe: fork the walking child, read its reports until it ends or its time is
    up (then kill it), and answer ``conn`` with how it ended."""
    import json
    import select
    import signal

    request = json.loads(conn.makefile("r").readline())
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        conn.close()
        _walk_child(request["path"], request["memory"], write_fd)
    os.close(write_fd)
    deadline = start + request["timeout"]
    data = b""
    hung = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([read_fd], [], [], left)[0]:
            hung = True
            os.kill(pid, signal.SIGKILL)
            break
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        data = data[-4096:] + chunk  # the last reports are the ones that matter
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    lines = data.decode("utf-8", "replace").splitlines()
    error = lines.pop()[6:] if lines and lines[-1].startswith("ERROR ") else ""
    answer = {
        "hung": hung,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) and not hung else 0,
        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1,
        "last": lines[-1] if lines else "",
        "error": error,
        "seconds": time.monotonic() - start,
    }
    with contextlib.suppress(OSError):  # the asking process may be gone
        conn.sendall((json.dumps(answer) + "\n").encode())


def serve(address: str) -> None:  # pragma: no cover - the server process
    """The probe server: listen on the Unix socket ``address`` and fork one child per
    connection (which forks the walking child); end when standard input closes.

    h5py and numpy are imported once here, so a probe costs two forks, not an
    interpreter's start.  The server itself never opens a file with HDF5.
    """
    import select
    import signal
    import socket

    import h5py  # noqa: F401  (imported before forking: the children start warm)
    import numpy  # noqa: F401

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # it ends with its parent's pipe
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        while True:
            ready = select.select([listener, sys.stdin], [], [], 5.0)[0]
            while True:  # reap finished supervisors
                try:
                    if os.waitpid(-1, os.WNOHANG)[0] == 0:
                        break
                except ChildProcessError:
                    break
            if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
                return
            if listener in ready:
                conn = listener.accept()[0]
                if os.fork() == 0:
                    try:
                        listener.close()
                        _supervise(conn)
                    finally:
                        os._exit(0)
                conn.close()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(address)


class _Server:
    """The probe server of this process, started on first use.

    Processes forked from this one share it (they connect to its socket); one that
    cannot reach it starts its own.
    """

    def __init__(self) -> None:
        self.address = ""
        self.proc: subprocess.Popen[str] | None = None
        self.lock = threading.Lock()

    def connect(self) -> Any:
        import socket

        with self.lock:
            for attempt in (0, 1):
                if self.address:
                    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        conn.connect(self.address)
                        return conn
                    except OSError:
                        conn.close()
                        if attempt:
                            raise
                self._start()
        raise AssertionError("unreachable")  # pragma: no cover

    def _start(self) -> None:
        folder = tempfile.mkdtemp(prefix="loomx-probe-")
        address = os.path.join(folder, "probe.sock")
        env = {
            **os.environ,
            "HDF5_USE_FILE_LOCKING": os.environ.get("HDF5_USE_FILE_LOCKING", "FALSE"),
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE, __file__, address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        if proc.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
            proc.kill()
            proc.wait()
            raise OSError(f"the probe server did not start (exit {proc.returncode})")
        self.proc, self.address = proc, address
        weakref.finalize(self, _stop, proc, folder)

    def reset_after_fork(self) -> None:
        self.lock = threading.Lock()  # a lock held by another thread at fork stays held


def _stop(proc: subprocess.Popen[str], folder: str) -> None:
    with contextlib.suppress(OSError):
        proc.stdin.close()  # type: ignore[union-attr]
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)
    with contextlib.suppress(OSError):
        os.rmdir(folder)


_SERVER = _Server()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_SERVER.reset_after_fork)


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
    # loomx is imported here, not at the top: the probe server runs this file without the
    # package (python, h5py and numpy only)
    from loomx.errors import LoomFileError, LoomFileNotFoundError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LoomFileNotFoundError("no such file", path=path)
    if timeout is None:
        timeout = float(os.environ.get("LOOMX_PROBE_SECONDS", PROBE_SECONDS))
    conn = _SERVER.connect()
    try:
        request = {"path": os.path.abspath(path), "timeout": timeout, "memory": memory}
        conn.sendall((json.dumps(request) + "\n").encode())
        conn.settimeout(timeout + 60.0)  # the server kills the child at ``timeout``
        try:
            answer = json.loads(conn.makefile("r").readline() or "null")
        except (OSError, ValueError):
            answer = None
    finally:
        conn.close()
    if answer is None:
        answer = {"hung": False, "signal": 0, "code": -1, "last": "", "error": "no answer"}
    if not any((answer["hung"], answer["signal"], answer["code"])) and answer["last"] == "DONE":
        return float(answer["seconds"])
    last = answer["last"] or "the file itself (opening it)"
    if answer["hung"]:
        what = f"HDF5 did not finish within {timeout:g} s (a hang on damaged metadata)"
    elif answer["signal"]:
        what = f"HDF5 crashed the process reading it (signal {answer['signal']})"
    elif answer["error"].startswith("MemoryError"):
        what = f"reading it needed more than {memory >> 20} MiB"
    else:
        what = f"HDF5 failed reading it ({answer['error'] or 'exit ' + str(answer['code'])})"
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

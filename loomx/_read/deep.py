"""The deep check (``loomx validate --deep``): everything :func:`validate_loom` checks, plus
every chunk of every layer read, every string decoded, in a child process.

Reading a chunk through HDF5's filter pipeline verifies its checksum: the fletcher32 filter
compares the stored checksum, and deflate (gzip) its own Adler-32 at the end of the stream;
a damaged chunk fails to read.  A block of chunks that fails is read again chunk by chunk,
so that every damaged chunk is listed with its HDF5 path and position.  Every string dataset
and every string attribute (of every object) is decoded as strict UTF-8.  Graph vertices
and attribute lengths are those of :func:`validate_loom`, which runs in the same child.

The child process (``python -m loomx._read.deep``) has a memory limit and reports its
progress; a crash (a signal) or no progress for ``timeout`` seconds becomes a problem naming
the object being read when it happened, and the calling process never opens the file.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import h5py
import numpy as np

from loomx._format import spec as _spec
from loomx._read.validate import Problem, validate_loom

__all__ = ["BLOCK_BYTES", "deep_problems", "validate_deep"]

BLOCK_BYTES = 32 << 20
"""About how many bytes of a layer one read covers (a whole number of chunks)."""

DEEP_MEMORY = 8 << 30
"""The child's address-space limit, in bytes."""


def _layers(f: h5py.File) -> list[h5py.Dataset]:
    """``/matrix`` and every layer that is a hard-linked 2-D number dataset with stored
    data (a declared layer with no chunk written reads as its fill value: nothing to check)."""
    found = []
    for group, names in (("/", [_spec.MATRIX]), (f"/{_spec.LAYERS}", None)):
        parent = f.get(group)
        if not isinstance(parent, h5py.Group):
            continue
        for name in names if names is not None else list(parent):
            link = parent.get(name, getlink=True)
            obj = parent.get(name) if isinstance(link, h5py.HardLink) else None
            layer = isinstance(obj, h5py.Dataset) and obj.ndim == 2 and obj.dtype.kind in "iufb"
            if layer and obj.id.get_storage_size() > 0:  # else only the fill value: no data
                found.append(obj)
    return found


def _blocks(dset: h5py.Dataset) -> Iterator[tuple[slice, slice]]:
    """Chunk-aligned blocks of about :data:`BLOCK_BYTES` covering ``dset``."""
    rows, cols = dset.shape
    step_r, step_c = dset.chunks or (1, max(cols, 1))
    width = max(1, BLOCK_BYTES // max(1, step_r * step_c * dset.dtype.itemsize))
    block_c = step_c * width if dset.chunks else cols
    if block_c >= cols:  # a whole band of chunk rows: take several bands at once
        bands = max(1, BLOCK_BYTES // max(1, step_r * max(cols, 1) * dset.dtype.itemsize))
        step_r, block_c = step_r * bands, max(cols, 1)
    for r in range(0, rows, step_r):
        for c in range(0, cols, block_c):
            yield slice(r, min(r + step_r, rows)), slice(c, min(c + block_c, cols))


def _read_chunks(dset: h5py.Dataset, rows: slice, cols: slice) -> list[Problem]:
    """Read the block; if it fails, each chunk in it, listing every one that fails."""
    try:
        dset[rows, cols]
        return []
    except (OSError, ValueError, RuntimeError) as err:
        if dset.chunks is None:
            where = f"rows {rows.start}:{rows.stop}"
            return [Problem(dset.name, f"{where} unreadable ({err}); expected stored values")]
    problems = []
    step_r, step_c = dset.chunks
    for r in range(rows.start, rows.stop, step_r):
        for c in range(cols.start, cols.stop, step_c):
            try:
                dset[r : r + step_r, c : c + step_c]
            except (OSError, ValueError, RuntimeError) as err:
                message = f"chunk at ({r}, {c}) unreadable ({err}); its checksum or "
                message += "compressed stream is damaged"
                problems.append(Problem(dset.name, message))
    return problems


def _strings(f: h5py.File, at: Callable[[str], None]) -> list[Problem]:
    """Decode every string dataset and string attribute of every object as strict UTF-8."""
    problems: list[Problem] = []

    def check(where: str, value: Any) -> None:
        for i, item in enumerate(np.asarray(value, dtype=object).ravel()):
            try:
                if isinstance(item, bytes):
                    item.decode("utf-8", errors="strict")
                elif isinstance(item, str):  # h5py decodes attributes with surrogateescape
                    item.encode("utf-8", errors="strict")
            except UnicodeError as err:
                problems.append(Problem(where, f"string {i} is not UTF-8 ({err.reason})"))
                return

    def visit(name: str, obj: Any) -> None:
        where = f"/{name}" if name else "/"
        for key in obj.attrs:
            at(f"{where} (attribute {key})")
            value = obj.attrs[key]
            if np.asarray(value).dtype.kind in "OSU":
                check(f"{where}/@{key}", value)
        if isinstance(obj, h5py.Dataset) and (
            h5py.check_string_dtype(obj.dtype) is not None or obj.dtype.kind == "O"
        ):
            at(where)
            check(where, obj[()])

    visit("", f)
    f.visititems(visit)  # hard links only, each object once
    return problems


def deep_problems(
    path: str, *, conventions: bool = False, report: Callable[[dict[str, Any]], None]
) -> list[Problem]:
    """The deep check in this process (the child's work): ``report`` gets
    ``{"at": h5path}`` before each object, ``{"problem": [h5path, message, level]}`` for
    each problem when found, and ``{"done": i, "total": n}`` after each block."""
    problems: list[Problem] = []

    def add(found: list[Problem]) -> None:
        for problem in found:
            report({"problem": [problem.h5path, problem.message, problem.level]})
        problems.extend(found)

    add(validate_loom(path, conventions=conventions, locking=False))
    with h5py.File(path, "r", locking=False) as f:
        add(_strings(f, lambda where: report({"at": where})))
        work = [(dset, block) for dset in _layers(f) for block in _blocks(dset)]
        report({"done": 0, "total": len(work)})
        for i, (dset, (rows, cols)) in enumerate(work, 1):
            report({"at": f"{dset.name} (rows {rows.start}:{rows.stop})"})
            add(_read_chunks(dset, rows, cols))
            report({"done": i, "total": len(work)})
    return problems


def _limit(memory: int) -> None:  # pragma: no cover - runs in the child
    import resource

    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        memory = min(memory, hard)
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def validate_deep(
    path: str | os.PathLike[str],
    *,
    conventions: bool = False,
    progress: Callable[[int, int], None] | None = None,
    timeout: float | None = None,
    memory: int = DEEP_MEMORY,
) -> list[Problem]:
    """Every problem of :func:`validate_loom`, plus every unreadable chunk (damaged
    checksum or compressed stream) and undecodable string, found in a child process.

    Parameters
    ----------
    path
        A local Loom file.
    conventions
        Also check loompy's conventions (as :func:`validate_loom`).
    progress
        Called with (blocks read, blocks in all) as the layers are read.
    timeout
        Seconds without progress after which the child counts as hung (default:
        ``LOOMX_PROBE_SECONDS`` or 60).
    memory
        The child's address-space limit in bytes.

    Examples
    --------
    >>> for problem in validate_deep("download.loom"):  # doctest: +SKIP
    ...     print(problem)
    /matrix: chunk at (64, 128) unreadable (...); its checksum or compressed stream is damaged
    """
    from loomx.errors import LoomFileNotFoundError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LoomFileNotFoundError("no such file", path=path)
    if timeout is None:
        timeout = float(os.environ.get("LOOMX_PROBE_SECONDS", 60.0))
    child = subprocess.Popen(
        [sys.executable, "-m", "loomx._read.deep", path, "1" if conventions else "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: _limit(memory),
    )
    problems, last, hung = [], "the file itself (opening it)", False
    buffer = b""
    assert child.stdout is not None
    while True:
        if not select.select([child.stdout], [], [], timeout)[0]:
            hung = True
            child.kill()
            break
        data = os.read(child.stdout.fileno(), 1 << 16)
        if not data:
            break
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "at" in message:
                last = message["at"]
            elif "problem" in message:
                problems.append(Problem(*message["problem"]))
            elif progress is not None:
                progress(message["done"], message["total"])
    err = child.communicate()[1].decode("utf-8", "replace").strip()
    where = last.split(" (")[0] if last.startswith("/") else "/"
    if hung:
        problems.append(
            Problem(where, f"HDF5 made no progress within {timeout:g} s reading {last}")
        )
    elif child.returncode < 0:
        problems.append(Problem(where, f"HDF5 crashed (signal {-child.returncode}) reading {last}"))
    elif child.returncode != 0:
        tail = err.splitlines()[-1] if err else f"exit {child.returncode}"
        problems.append(Problem(where, f"reading {last} failed ({tail})"))
    return problems


def _main(path: str, conventions: bool) -> None:  # pragma: no cover - the child
    def report(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    deep_problems(path, conventions=conventions, report=report)


if __name__ == "__main__":  # pragma: no cover
    _main(sys.argv[1], sys.argv[2] == "1")

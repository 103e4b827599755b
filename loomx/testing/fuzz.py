"""Mutation fuzzing of the read path: damaged copies of valid Loom files must give loomx
errors, never a crash, a hang or another exception.

A :class:`Fuzzer` starts one worker process (``python -m loomx.testing.fuzz``) that imports
loomx once, warms it up on the valid files, and then forks one child per case: the child
writes the mutated file, reads everything in it through the public API
(:func:`read_everything`) under an alarm and a memory limit, and reports how it ended.
Forking a warm process keeps a case to a few milliseconds, so thousands are affordable,
and a case that hangs or crashes kills only its child.

Examples
--------
>>> with Fuzzer(["a.loom"]) as fuzzer:  # doctest: +SKIP
...     report = fuzzer.run(range(2000))
>>> report.findings  # doctest: +SKIP
[]
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "KNOWN_HANG",
    "FuzzReport",
    "Fuzzer",
    "fuzz_kernels",
    "mutate",
    "read_everything",
    "read_untrusted",
    "recover_and_read",
]

SIGNATURES = (b"\x89HDF", b"OHDR", b"TREE", b"HEAP", b"SNOD", b"GCOL", b"FRHP", b"BTHD")
"""Where HDF5 metadata starts (superblock, object headers, B-trees, heaps)."""

KNOWN_HANG = "hang in HDF5's global heap"

INTERESTING_WORDS = (
    b"\xff" * 8,
    b"\x00" * 8,
    (1 << 40).to_bytes(8, "little"),
    (1 << 31).to_bytes(8, "little"),
    (1 << 63).to_bytes(8, "little"),
    (7).to_bytes(8, "little"),
)


def read_everything(path: str) -> None:
    """Open ``path`` with :func:`loomx.open_loom` and read every layer, attribute, global
    attribute and graph in it (what a user of the file could touch)."""
    import loomx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with loomx.open_loom(path, chunks=None) as ds:
            for var in ds.variables.values():
                var.values  # noqa: B018
            dict(ds.attrs)
            for graphs in (ds.loom.row_graphs, ds.loom.col_graphs):
                for name in graphs:
                    graphs[name].data  # noqa: B018


def read_untrusted(path: str) -> None:
    """:func:`read_everything` of a file opened with ``untrusted=True`` (its metadata read
    in a child process first, see :mod:`loomx._hdf5.probe`)."""
    import loomx

    loomx.open_loom(path, chunks=None, untrusted=True).close()
    read_everything(path)


def global_heap_ranges(data: bytes) -> list[tuple[int, int]]:
    """``(start, stop)`` of every HDF5 global heap collection in ``data`` (where variable-
    length strings live)."""
    out = []
    start = data.find(b"GCOL")
    while start >= 0:
        size = int.from_bytes(data[start + 8 : start + 16], "little")
        out.append((start, start + max(size, 16)))
        start = data.find(b"GCOL", start + 1)
    return out


def inside_global_heap(original: bytes, mutated: bytes) -> bool:
    """Whether ``mutated`` changed a byte of a global heap collection of ``original``
    (HDF5 itself can loop forever on such damage: see :class:`FuzzReport`)."""
    if len(mutated) != len(original):
        return False
    changed = [i for i in range(len(original)) if original[i] != mutated[i]]
    ranges = global_heap_ranges(original)
    return any(a <= i < b for i in changed for a, b in ranges)


def recover_and_read(path: str) -> None:
    """:func:`loomx.recover` the file (it finishes or removes what a writer left), then
    :func:`read_everything`."""
    import loomx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loomx.recover(path)
    read_everything(path)


def _metadata_offsets(data: bytes) -> list[int]:
    out = []
    for sig in SIGNATURES:
        start = data.find(sig)
        while start >= 0:
            out.append(start)
            start = data.find(sig, start + 1)
    return out or [0]


def mutate(data: bytes, rng: random.Random, anchors: Sequence[int] | None = None) -> bytes:
    """A damaged copy of ``data``: bit flips (mostly in HDF5 metadata), overwritten 8-byte
    words (addresses and lengths), truncation, zeroed or duplicated ranges.

    Parameters
    ----------
    data
        The bytes of a valid file.
    rng
        The source of randomness (a seeded :class:`random.Random` repeats a case).
    anchors
        Offsets where HDF5 metadata starts (default: found by signature).
    """
    anchors = _metadata_offsets(data) if anchors is None else anchors
    for _ in range(8):  # a mutation that changes nothing (zeros over zeros) is redrawn
        out = _mutate_once(data, rng, anchors)
        if out != data:
            break
    return out


def _mutate_once(data: bytes, rng: random.Random, anchors: Sequence[int]) -> bytes:
    buf = bytearray(data)

    def near_metadata() -> int:
        if rng.random() < 0.3:
            return rng.randrange(len(buf))
        return min(len(buf) - 1, rng.choice(anchors) + int(rng.expovariate(1 / 64)))

    kind = rng.choice(["flip", "flip", "word", "truncate", "zero", "splice"])
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            buf[near_metadata()] ^= 1 << rng.randrange(8)
    elif kind == "word":
        at = near_metadata() & ~7
        buf[at : at + 8] = rng.choice(INTERESTING_WORDS)
    elif kind == "truncate":
        del buf[rng.randrange(len(buf)) :]
    elif kind == "zero":
        at, n = near_metadata(), rng.randint(1, 256)
        buf[at : at + n] = bytes(len(buf[at : at + n]))
    else:
        src, dst, n = near_metadata(), near_metadata(), rng.randint(1, 64)
        piece = bytes(buf[src : src + n])
        buf[dst : dst + len(piece)] = piece
    return bytes(buf[: len(data)])


@dataclass
class FuzzReport:
    """Outcome counts of a fuzz run and the cases that ended badly.

    ``outcomes`` counts ``"ok"``, ``"LoomFileError"``, ... per case; each finding is a
    dict with the case number, the valid file it started from, how it ended and the
    mutated bytes' file (kept for replay).  ``known`` holds the hangs inside HDF5's
    global heap: the HDF5 library (2.0) loops forever on a global heap collection whose
    free-space object has size 0, in C code that loomx cannot interrupt.
    """

    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    findings: list[dict[str, Any]] = field(default_factory=list)
    known: list[dict[str, Any]] = field(default_factory=list)


class Fuzzer:
    """A worker process that fuzzes the read path of loomx over mutations of ``files``.

    Parameters
    ----------
    files
        Valid Loom files to mutate (case ``i`` starts from ``files[i % len(files)]``).
    timeout
        Seconds a case may take before it counts as a hang.
    keep
        Folder where mutated files of findings are kept (default: a temporary folder).
    reader
        ``"module:function"`` taking the path of a mutated file: the read under test
        (default :func:`read_everything`; :func:`recover_and_read` fuzzes recovery too).
    """

    def __init__(
        self,
        files: Sequence[str],
        timeout: float = 20.0,
        keep: str | None = None,
        reader: str = "loomx.testing.fuzz:read_everything",
    ):
        self.files = [os.fspath(f) for f in files]
        self.timeout = timeout
        self.keep = keep or tempfile.mkdtemp(prefix="loomx-fuzz-")
        command = ["-m", "loomx.testing.fuzz", str(timeout), self.keep, reader, *self.files]
        self.proc = subprocess.Popen(
            [sys.executable, *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __enter__(self) -> Fuzzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker process."""
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=60)

    def run(self, seeds: Iterable[int]) -> FuzzReport:
        """Run the cases ``seeds`` (each seed repeats the same mutation) and report."""
        report = FuzzReport()
        for seed in seeds:
            self.proc.stdin.write(f"{seed}\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError(f"the fuzz worker died (exit status {self.proc.wait()})")
            result = json.loads(line)
            report.cases += 1
            report.outcomes[result["outcome"]] += 1
            if result["outcome"] == KNOWN_HANG:
                report.known.append(result)
            elif result["finding"]:
                report.findings.append(result)
        return report


# --------------------------------------------------------------------------- kernels

_CHUNK = (4, 6)  # rows, items of 4 bytes: 24 bytes a row, 96 a chunk
_GRID = (3, 2)


def _kernel_case(rng: random.Random) -> tuple[list[Any], str]:
    """Arguments of ``loomx._hdf5.kernels.decode_chunks`` for a 3 x 2 grid of int32
    chunks stored shuffled, deflated and checksummed, with one mutation; and its name."""
    import zlib

    import numpy as np

    from loomx._hdf5.pydecode import fletcher32

    rows, items = _CHUNK
    row_bytes = items * 4
    values = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 50, (12, 12), np.int32)
    stored = []
    for gr in range(_GRID[0]):
        for gc in range(_GRID[1]):
            raw = values[gr * rows : (gr + 1) * rows, gc * items : (gc + 1) * items].tobytes()
            body = zlib.compress(np.frombuffer(raw, np.uint8).reshape(-1, 4).T.tobytes())
            check = fletcher32(np.frombuffer(body, np.uint8))
            stored.append(body + check.to_bytes(4, "little"))
    n = len(stored)
    starts = np.cumsum([0] + [len(c) for c in stored[:-1]]).astype(np.int64)
    lengths = np.array([len(c) for c in stored], np.int64)
    masks = np.zeros(n, np.int64)
    codes = np.array([2, 1, 3], np.int64)  # shuffle, deflate, fletcher32: the write order
    params = np.array([4, 0, 0], np.int64)
    gr, gc = np.divmod(np.arange(n), _GRID[1])
    z = np.zeros(n, np.int64)
    place = np.column_stack([gr * rows, gc * row_bytes, z, z, z + rows, z + row_bytes])
    dst = np.zeros((12, 48), np.uint8)
    axis, group = 0, np.zeros(0, np.int64)
    ptr, pin, pout = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    kind = rng.choice(
        ["none", "more", "less", "garbage", "mask", "shuffle", "place", "span", "codes", "pick"]
    )
    if kind in ("more", "less", "garbage"):  # a chunk whose stream decodes to the wrong size
        k = rng.randrange(n)
        size = {"more": 96 + rng.randint(1, 300), "less": rng.randint(0, 95)}.get(kind, 96)
        body = zlib.compress(bytes(rng.randrange(256) for _ in range(size)))
        if kind == "garbage":
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        check = fletcher32(np.frombuffer(body, np.uint8)).to_bytes(4, "little")
        stored[k] = body + check
        lengths = np.array([len(c) for c in stored], np.int64)
        starts = np.cumsum([0] + [len(c) for c in stored[:-1]]).astype(np.int64)
    elif kind == "mask":  # filters skipped (or not) as the chunk index says
        masks = np.array([rng.randrange(-8, 1 << 8) for _ in range(n)], np.int64)
    elif kind == "shuffle":  # odd element sizes, larger than the chunk too
        params[0] = rng.choice([-3, 0, 1, 3, 5, 7, 95, 97, 200, 1 << 40])
    elif kind == "place":
        place[rng.randrange(n), rng.randrange(6)] = rng.choice([-1, 1, 13, 48, 97, 1 << 40])
    elif kind == "span":  # stored bytes outside the buffer read
        k = rng.randrange(n)
        (starts if rng.random() < 0.5 else lengths)[k] = rng.choice([-5, 10**6, 1 << 62])
    elif kind == "codes":
        codes[rng.randrange(3)] = rng.choice([-1, 0, 4, 5, 32000])
    elif kind == "pick":  # picked columns: overlapping and out of range
        axis = rng.choice([1, 2])
        group = z.copy()
        k = rng.randint(1, 8)
        top = (items if axis == 1 else rows) + 2
        pin = np.array([rng.randrange(-1, top) for _ in range(k)], np.int64)
        pout = np.array([rng.randrange(-1, 14) for _ in range(k)], np.int64)
        ptr = np.array([0, k], np.int64)
        if rng.random() < 0.3:
            ptr = np.array([0, k + rng.randint(1, 5)], np.int64)
        if rng.random() < 0.3:
            group[rng.randrange(n)] = rng.choice([-1, 1, 7])
        if axis == 2:
            place[:, 0] = place[:, 2] = place[:, 4] = 0
        else:
            place[:, 1] = place[:, 3] = place[:, 5] = 0
    src = np.frombuffer(b"".join(stored), np.uint8).copy()
    status = np.zeros(3, np.int64)
    args = [src, starts, lengths, masks, codes, params, rows, row_bytes, 4, place, dst]
    return [*args, status, axis, group, ptr, pin, pout], kind


def fuzz_kernels(cases: int, seed: int = 0) -> Counter:
    """Call ``loomx._hdf5.kernels.decode_chunks`` on ``cases`` mutated inputs (chunk bytes
    that inflate to more or fewer bytes than a chunk, wrong filter masks, odd shuffle
    sizes, placements, stored ranges and picks out of range or overlapping) and count the
    outcomes: ``"<kind>: ok"``, ``"<kind>: status <code>"`` (the kernel's own error) or
    ``"<kind>: refused"`` (:class:`~loomx.errors.LoomFileError` before the call).  Any
    other exception propagates; run it under ``NUMBA_BOUNDSCHECK=1`` (in a new process) to
    turn an out-of-bounds index inside the kernel into an ``IndexError``.

    Examples
    --------
    >>> fuzz_kernels(200)  # doctest: +SKIP
    Counter({'none: ok': 22, 'place: refused': 19, ...})
    """
    from loomx._hdf5 import kernels
    from loomx.errors import LoomFileError

    rng = random.Random(seed)
    counts: Counter = Counter()
    for _ in range(cases):
        args, kind = _kernel_case(rng)
        try:
            kernels.decode_chunks(*args)
        except LoomFileError:
            counts[f"{kind}: refused"] += 1
            continue
        status = args[11]
        counts[f"{kind}: status {int(status[0])}" if status[0] else f"{kind}: ok"] += 1
    return counts


# --------------------------------------------------------------------------- worker


def _case(data: bytes, seed: int, path: str, reader: Callable[[str], object]) -> None:
    """In the forked child: write case ``seed``'s file, read it, report on fd 3."""
    with open(path, "wb") as fh:
        fh.write(mutate(data, random.Random(seed)))
    from loomx.errors import LoomxError

    try:
        reader(path)
        outcome, detail = "ok", ""
    except LoomxError as err:
        outcome, detail = type(err).__name__, str(err)[:300]
        if not err.path:
            outcome = f"error naming no file ({type(err).__name__})"
    except BaseException as err:
        outcome = f"{type(err).__name__}"
        detail = traceback.format_exc()[-2000:]
    os.write(3, json.dumps({"outcome": outcome, "detail": detail}).encode())


def _serve(timeout: float, keep: str, reader_name: str, files: list[str]) -> None:
    import importlib
    import resource
    import shutil

    module, _, function = reader_name.partition(":")
    reader = getattr(importlib.import_module(module), function)
    blobs = []
    warm = tempfile.mkdtemp(prefix="loomx-fuzz-warm-")
    for path in files:
        with contextlib.suppress(Exception):
            reader(shutil.copy(path, warm))  # warm: imports and caches happen once, before forking
        with open(path, "rb") as fh:
            blobs.append(fh.read())
    with open(f"/proc/{os.getpid()}/statm") as fh:
        mapped = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = mapped + (2 << 30)  # at most 2 GiB more address space per case
    work = tempfile.mkdtemp(prefix="loomx-fuzz-case-")
    for line in sys.stdin:
        seed = int(line)
        source = seed % len(blobs)
        path = os.path.join(work, "case.loom")
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one case, then _exit (no cleanup of the parent's state)
            try:
                os.close(read_fd)
                os.dup2(write_fd, 3)
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                signal.alarm(max(1, int(timeout)))
                _case(blobs[source], seed, path, reader)
            finally:
                os._exit(0)
        os.close(write_fd)
        chunks = []
        while chunk := os.read(read_fd, 1 << 16):
            chunks.append(chunk)
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
        if chunks and os.WIFEXITED(status):
            result = json.loads(b"".join(chunks))
        elif os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM:
            result = {"outcome": "hang", "detail": f"no answer within {timeout} s"}
        else:
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            name = signal.Signals(sig).name if sig else f"exit {os.WEXITSTATUS(status)}"
            result = {"outcome": f"crash ({name})", "detail": ""}
        mutated = mutate(blobs[source], random.Random(seed))
        if result["outcome"] == "hang" and inside_global_heap(blobs[source], mutated):
            result["outcome"] = KNOWN_HANG
        ok = result["outcome"] == "ok" or result["outcome"].startswith("Loom")
        result.update(seed=seed, source=files[source], finding=not ok)
        if not ok:
            kept = os.path.join(keep, f"case-{seed}.loom")
            with open(kept, "wb") as fh:
                fh.write(mutated)
            result["file"] = kept
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve(float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:])

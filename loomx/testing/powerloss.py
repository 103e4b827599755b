"""Simulated power loss: record a writer's file operations, then rebuild the files as a
crash at any recorded step could leave them.

:func:`record` runs a write function with every HDF5 file loomx opens for writing
(``"r+"`` and ``"w"``) opened through h5py's file-object driver on a
:class:`RecordingFile`, and with loomx's ``fsync`` and ``os.replace`` logged: the result
is the list of operations in the order the operating system saw them.  :func:`crash_states`
replays a prefix of that list onto the original bytes the way a power cut would: what
was fsynced is on disk; writes issued since the last fsync of their file are lost, all
kept, kept in part (any subset) or torn (the last one half written); a rename is durable
once its folder is fsynced and may or may not have happened before.

Examples
--------
>>> ops = record(lambda: loomx.to_loom(ds, "x.loom", mode="a"))  # doctest: +SKIP
>>> for state in crash_states(ops, {"x.loom": before}, "x.loom"):  # doctest: +SKIP
...     check(state.data)
"""

from __future__ import annotations

import contextlib
import io
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import h5py

from .. import _files, _journal

__all__ = ["CrashState", "Op", "RecordingFile", "crash_states", "record"]


@dataclass(frozen=True)
class Op:
    """One file operation: ``kind`` is ``"create"``, ``"write"`` (``offset``, ``data``),
    ``"truncate"`` (``offset`` is the size), ``"sync"`` (of ``path``, a file or a
    folder) or ``"rename"`` (``path`` to ``target``)."""

    kind: str
    path: str
    offset: int = 0
    data: bytes = b""
    target: str = ""


class RecordingFile(io.RawIOBase):
    """A binary file that logs every write and truncation (h5py's ``fileobj`` driver
    uses it in place of its own file)."""

    def __init__(self, path: str, mode: str, log: list[Op]) -> None:
        super().__init__()
        self.path = os.path.abspath(path)
        self.log = log
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if mode == "w" else 0)
        if mode == "w":
            log.append(Op("create", self.path))
        self.fd = os.open(self.path, flags, 0o644)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = os.pread(self.fd, len(buffer), self.pos)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.log.append(Op("write", self.path, self.pos, data))
        os.pwrite(self.fd, data, self.pos)
        self.pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: os.fstat(self.fd).st_size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        self.log.append(Op("truncate", self.path, size))
        os.ftruncate(self.fd, size)
        return size

    def flush(self) -> None:
        pass  # no durability: only fsync makes writes durable

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


def record(write: Callable[[], Any]) -> list[Op]:
    """Run ``write()`` and return the file operations of every file it opens for writing
    through loomx, with loomx's fsyncs and renames, in order."""
    log: list[Op] = []
    real_fsync, real_replace = _files.fsync, os.replace

    def opener(path: str, mode: str) -> h5py.File:
        return h5py.File(RecordingFile(path, mode, log), mode)

    def fsync(path: str) -> None:
        log.append(Op("sync", os.path.abspath(path)))
        real_fsync(path)

    def replace(src: str, dst: str) -> None:
        log.append(Op("rename", os.path.abspath(src), target=os.path.abspath(dst)))
        real_replace(src, dst)

    with contextlib.ExitStack() as stack:
        stack.enter_context(_files.write_opener(opener))
        stack.enter_context(mock.patch.object(_files, "fsync", fsync))
        stack.enter_context(mock.patch.object(_journal, "fsync", fsync))
        stack.enter_context(mock.patch.object(_files.os, "replace", replace))
        write()
    return log


@dataclass(frozen=True)
class CrashState:
    """The bytes ``path`` holds after a crash at operation ``step`` (``0``: before the
    first), with the unsynced writes treated as ``variant`` says."""

    step: int
    variant: str
    data: bytes | None  # None: the file does not exist


def _apply(buf: bytearray, op: Op, torn: bool = False) -> None:
    if op.kind == "truncate":
        del buf[op.offset :]
        buf.extend(bytes(op.offset - len(buf)))
        return
    data = op.data[: len(op.data) // 2] if torn else op.data
    end = op.offset + len(data)
    if end > len(buf):
        buf.extend(bytes(end - len(buf)))
    buf[op.offset : end] = data


class _Disk:
    """Files (by inode number) and names, each with what is durable and what is not."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.durable: dict[int, bytearray] = {}
        self.pending: dict[int, list[Op]] = {}
        self.names: dict[str, int] = {}
        for path, data in files.items():
            self.names[os.path.abspath(path)] = self._new(data)
        self.durable_names = dict(self.names)

    def _new(self, data: bytes = b"") -> int:
        inode = len(self.durable)
        self.durable[inode], self.pending[inode] = bytearray(data), []
        return inode

    def do(self, op: Op) -> None:
        if op.kind == "create":
            self.names[op.path] = self._new()
        elif op.kind in ("write", "truncate"):
            self.pending[self.names[op.path]].append(op)
        elif op.kind == "rename":
            self.names[op.target] = self.names.pop(op.path)
        elif op.path in self.names:  # fsync of a file
            inode = self.names[op.path]
            for pending in self.pending[inode]:
                _apply(self.durable[inode], pending)
            self.pending[inode] = []
        else:  # fsync of a folder: its names are durable
            folder = op.path.rstrip(os.sep) + os.sep
            for name, inode in self.names.items():
                if name.startswith(folder):
                    self.durable_names[name] = inode
            for name in [n for n in self.durable_names if n not in self.names]:
                if name.startswith(folder):
                    del self.durable_names[name]

    def contents(self, inode: int, keep: Callable[[int, Op], str]) -> bytes:
        buf = bytearray(self.durable[inode])
        for i, op in enumerate(self.pending[inode]):
            how = keep(i, op)
            if how != "lost":
                _apply(buf, op, torn=how == "torn")
        return bytes(buf)


def crash_states(
    ops: list[Op],
    files: dict[str, bytes],
    path: str,
    steps: list[int] | None = None,
    subsets: int = 2,
    seed: int = 0,
) -> Iterator[CrashState]:
    """The contents of ``path`` after a crash at each of ``steps`` (default: before every
    operation and after the last).

    Parameters
    ----------
    ops
        What :func:`record` returned.
    files
        The files' contents before the write (at least ``path``).
    path
        The file whose crash states are wanted.
    steps
        Crash points: ``k`` means the first ``k`` operations were issued.
    subsets
        How many random subsets of the unsynced writes to keep, per crash point.
    seed
        For the subsets.
    """
    path = os.path.abspath(path)
    wanted = sorted(set(range(len(ops) + 1) if steps is None else steps))
    disk = _Disk(files)
    done = 0
    rng = random.Random(seed)
    for step in wanted:
        for op in ops[done:step]:
            disk.do(op)
        done = step
        candidates = {disk.names.get(path), disk.durable_names.get(path)}
        for inode in candidates:
            renamed = "" if inode == disk.durable_names.get(path) else "+rename"
            if inode is None:
                yield CrashState(step, "missing" + renamed, None)
                continue
            n = len(disk.pending[inode])
            variants: dict[str, Callable[[int, Op], str]] = {
                "lost": lambda i, op: "lost",
                "kept": lambda i, op: "kept",
            }
            if n:
                variants["torn"] = lambda i, op, n=n: "torn" if i == n - 1 else "kept"
            for s in range(subsets if n > 1 else 0):
                mask = [rng.random() < 0.5 for _ in range(n)]
                variants[f"subset{s}"] = lambda i, op, mask=mask: "kept" if mask[i] else "lost"
            seen: set[bytes] = set()
            for name, keep in variants.items():
                data = disk.contents(inode, keep)
                if data not in seen:
                    seen.add(data)
                    yield CrashState(step, name + renamed, data)

"""Simulated power loss: record a writer's file operations, then rebuild the files as a
crash at any recorded step could leave them.

:func:`record` runs a write function with every new HDF5 file loomx writes (mode
``"w"``) opened through h5py's file-object driver on a :class:`RecordingFile`, with the
operations of the rollback layer that in-place writers go through (the file's writes
and those of its rollback journal, see ``loomx._hdf5.rollback``) and loomx's ``fsync`` and
``os.replace`` logged: the result is the list of operations, on every file, in the order
the operating system saw them.  :func:`crash_states` replays a prefix of that list onto
the original bytes the way a power cut would: what was fsynced is on disk; writes
issued since the last fsync of their file are lost, all kept, kept in part (any subset)
or torn (the last one of each file half written); a new name (create, rename, removal)
is durable once its folder is fsynced and may or may not have happened before.

Examples
--------
>>> ops = record(lambda: loomx.to_loom(ds, "x.loom", mode="a"))  # doctest: +SKIP
>>> for state in crash_states(ops, {"x.loom": before}, "x.loom"):  # doctest: +SKIP
...     check(state.data)
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import h5py

from loomx._hdf5 import files as _files
from loomx._hdf5 import filesystem as _filesystem
from loomx._hdf5 import journal as _rollback_journal
from loomx._hdf5 import rollback as _rollback
from loomx._write import transaction as _transaction

__all__ = [
    "CrashState",
    "Op",
    "RecordingDisk",
    "RecordingFile",
    "crash_states",
    "record",
    "tag_from_journal",
]


@dataclass(frozen=True)
class Op:
    """One file operation: ``kind`` is ``"create"``, ``"write"`` (``offset``, ``data``),
    ``"truncate"`` (``offset`` is the size), ``"sync"`` (of ``path``, a file or a
    folder), ``"rename"`` (``path`` to ``target``) or ``"remove"``."""

    kind: str
    path: str
    offset: int = 0
    data: bytes = b""
    target: str = ""


class RecordingFile(_rollback.PositionedFile):
    """A binary file that logs every write and truncation (h5py's ``fileobj`` driver
    uses it in place of its own file)."""

    def __init__(self, path: str, mode: str, log: list[Op]) -> None:
        self.path = os.path.abspath(path)
        self.log = log
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if mode == "w" else 0)
        if mode == "w":
            log.append(Op("create", self.path))
        super().__init__(os.open(self.path, flags, 0o644))

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.log.append(Op("write", self.path, self.pos, data))
        os.pwrite(self.fd, data, self.pos)
        self.pos += len(data)
        return len(data)

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


_REAL_REPLACE = os.replace


class RecordingDisk(_rollback_journal.Disk):
    """The rollback layer's file operations, logged (see ``loomx._hdf5.journal.Disk``)."""

    def __init__(self, log: list[Op]) -> None:
        self.log = log
        self.paths: dict[int, str] = {}

    def open(self, path: str, flags: int) -> int:
        path = os.path.abspath(path)
        if flags & os.O_CREAT:
            self.log.append(Op("create", path))
        fd = super().open(path, flags)
        self.paths[fd] = path
        return fd

    def close(self, fd: int) -> None:
        self.paths.pop(fd, None)
        super().close(fd)

    def write(self, fd: int, data: bytes, offset: int) -> None:
        self.log.append(Op("write", self.paths[fd], offset, bytes(data)))
        super().write(fd, data, offset)

    def truncate(self, fd: int, size: int) -> None:
        self.log.append(Op("truncate", self.paths[fd], size))
        super().truncate(fd, size)

    def sync(self, fd: int) -> None:
        self.log.append(Op("sync", self.paths[fd]))
        super().sync(fd)

    def sync_folder(self, path: str) -> None:
        self.log.append(Op("sync", os.path.dirname(os.path.abspath(path))))
        super().sync_folder(path)

    def rename(self, src: str, dst: str) -> None:
        src, dst = os.path.abspath(src), os.path.abspath(dst)
        self.log.append(Op("rename", src, target=dst))
        _REAL_REPLACE(src, dst)  # not os.replace: record() logs that one itself
        for fd, name in self.paths.items():
            if name == src:
                self.paths[fd] = dst

    def remove(self, path: str) -> None:
        self.log.append(Op("remove", os.path.abspath(path)))
        super().remove(path)


def record(write: Callable[[], Any]) -> list[Op]:
    """Run ``write()`` and return the file operations of every file it opens for writing
    through loomx, with loomx's fsyncs and renames, in order."""
    log: list[Op] = []
    real_fsync, real_replace = _filesystem.fsync, os.replace

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
        stack.enter_context(_rollback_journal.use_disk(RecordingDisk(log)))
        stack.enter_context(mock.patch.object(_filesystem, "fsync", fsync))
        stack.enter_context(mock.patch.object(_transaction, "fsync", fsync))
        stack.enter_context(mock.patch.object(_filesystem.os, "replace", replace))
        write()
    return log


@dataclass(frozen=True)
class CrashState:
    """The bytes ``path`` holds after a crash at operation ``step`` (``0``: before the
    first), with the unsynced writes treated as ``variant`` says; ``files`` holds every
    file asked for (``None``: it does not exist)."""

    step: int
    variant: str
    data: bytes | None  # None: the file does not exist
    files: dict[str, bytes | None] = field(default_factory=dict)


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
        elif op.kind == "remove":
            del self.names[op.path]
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

    def contents(self, inode: int, keep: Callable[[int, int, Op], str]) -> bytes:
        buf = bytearray(self.durable[inode])
        for i, op in enumerate(self.pending[inode]):
            how = keep(inode, i, op)
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
    also: tuple[str, ...] = (),
) -> Iterator[CrashState]:
    """The contents of ``path`` (and of the files ``also`` names, in
    :attr:`CrashState.files`) after a crash at each of ``steps`` (default: before every
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
    also
        More files rebuilt with the same crash (a rollback journal next to ``path``).
    """
    paths = [os.path.abspath(p) for p in (path, *also)]
    wanted = sorted(set(range(len(ops) + 1) if steps is None else steps))
    disk = _Disk(files)
    done = 0
    rng = random.Random(seed)
    for step in wanted:
        for op in ops[done:step]:
            disk.do(op)
        done = step
        views = [("", disk.durable_names)]
        if any(disk.names.get(p) != disk.durable_names.get(p) for p in paths):
            views.append(("+rename", disk.names))  # names not yet durable, on disk anyway
        inodes = {i for _, view in views for p in paths if (i := view.get(p)) is not None}
        counts = {inode: len(disk.pending[inode]) for inode in inodes}
        variants: dict[str, Callable[[int, int, Op], str]] = {
            "lost": lambda inode, i, op: "lost",
            "kept": lambda inode, i, op: "kept",
        }
        if any(counts.values()):
            variants["torn"] = lambda k, i, op, n=counts: "torn" if i == n[k] - 1 else "kept"
        for s in range(subsets if sum(counts.values()) > 1 else 0):
            mask = {
                (inode, i): rng.random() < 0.5 for inode in inodes for i in range(counts[inode])
            }
            variants[f"subset{s}"] = lambda inode, i, op, mask=mask: (
                "kept" if mask[inode, i] else "lost"
            )
        seen: set[tuple[bytes | None, ...]] = set()
        for suffix, view in views:
            for name, keep in variants.items():
                state = {
                    p: None if view.get(p) is None else disk.contents(view[p], keep) for p in paths
                }
                key = tuple(state.values())
                if key not in seen:
                    seen.add(key)
                    yield CrashState(step, name + suffix, state[paths[0]], state)


def tag_from_journal(path: str | os.PathLike[str]) -> None:
    """Attach the nonce of ``path``'s rollback journal to ``path``, as the writer did (and
    made durable) before it created the journal: a crash state rebuilt in a new file is
    the file the journal was written for, which carries that nonce whenever the journal
    exists (see ``loomx._hdf5.journal``)."""
    path = os.fspath(path)
    saved = _rollback_journal.read_journal(path)
    if saved.tagged:
        os.setxattr(path, _rollback_journal.NONCE_XATTR, saved.nonce)

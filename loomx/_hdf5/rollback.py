"""A rollback journal below HDF5: in-place writes that survive a crash inside a flush.

HDF5 rewrites existing metadata (group B-trees, heaps, object headers, the superblock) in
place when it flushes, so a power cut or SIGKILL in the middle of a flush can leave part
of it on disk.  As with SQLite's rollback journal, every loomx writer opens an existing
file as a :class:`JournaledFile`: HDF5's file-object driver on a :class:`RollbackFile`
that, before it overwrites any byte of the file's original extent, saves the original
bytes in a journal next to the file (:func:`loomx._hdf5.journal.journal_path`) and makes
that journal durable.

1. The first save attaches a random nonce to the file and fsyncs it, then writes the
   journal under a temporary name (a header with the file's original size, device and
   inode, the writer's pid and the nonce; then a first batch of saved ranges), fsyncs it,
   renames it to its final name and fsyncs the folder.  Later saves append a batch and
   fsync the journal.  Only then is the file itself written.
2. Writes into the original extent are held in memory between HDF5 flushes, so that a
   flush costs one batch and one journal fsync; bytes past the original end, bytes
   already saved and writes that change nothing need no saving.
3. Commit: once HDF5 has closed the file, the file is fsynced, the journal removed and
   the folder fsynced.  The journal's removal is the commit point.

:func:`open_journaled` opens a file so; the journal's format, its restore and the
writer's lock are in :mod:`loomx._hdf5.journal`.
"""

from __future__ import annotations

import bisect
import io
import os
from collections.abc import Iterator
from typing import Any

import h5py

from loomx._hdf5.filesystem import open_error
from loomx._hdf5.journal import (
    HEADER_SIZE,
    current_disk,
    file_identity,
    journal_batch,
    journal_header,
    journal_path,
    journal_state,
    lock_for_writing,
    restore,
    tag_file,
    untag_file,
)
from loomx.errors import LoomWriteError

__all__ = [
    "PositionedFile",
    "RollbackFile",
    "forget_writers",
    "open_journaled",
    "shared_reader",
]

PENDING_LIMIT = 64 << 20
"""Bytes of writes held in memory before they are saved and written without a flush."""


# --------------------------------------------------------------------------- ranges


class _Ranges:
    """Disjoint, sorted byte ranges ``[start, end)``."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` not in the set."""
        out = []
        i = bisect.bisect_right(self.ends, start)
        pos = start
        while i < len(self.starts) and self.starts[i] < end:
            if self.starts[i] > pos:
                out.append((pos, self.starts[i]))
            pos = max(pos, self.ends[i])
            i += 1
        if pos < end:
            out.append((pos, end))
        return out

    def add(self, start: int, end: int) -> None:
        i = bisect.bisect_left(self.ends, start)
        j = bisect.bisect_right(self.starts, end)
        if i < j:
            start, end = min(start, self.starts[i]), max(end, self.ends[j - 1])
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self.starts, self.ends, strict=True))


class _Segments:
    """Bytes held for writing: disjoint segments ``{start: bytearray}``, later writes
    laid over earlier ones."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.datas: list[bytearray] = []
        self.size = 0  # bytes held

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __iter__(self) -> Iterator[tuple[int, bytearray]]:
        return iter(zip(self.starts, self.datas, strict=True))

    def put(self, off: int, data: bytes) -> None:
        end = off + len(data)
        i = bisect.bisect_right(self.starts, off) - 1
        if i >= 0 and self.starts[i] + len(self.datas[i]) >= end:  # inside one segment
            self.datas[i][off - self.starts[i] : end - self.starts[i]] = data
            return
        first = i if i >= 0 and self.starts[i] + len(self.datas[i]) > off else i + 1
        last = bisect.bisect_left(self.starts, end)  # segments starting before ``end``
        old = list(zip(self.starts[first:last], self.datas[first:last], strict=True))
        start = min([off, *(s for s, _ in old)])
        stop = max([end, *(s + len(d) for s, d in old)])
        merged = bytearray(stop - start)
        for s, d in old:  # overlapping segments become one, the new bytes on top
            merged[s - start : s - start + len(d)] = d
            self.size -= len(d)
        merged[off - start : end - start] = data
        self.starts[first:last] = [start]
        self.datas[first:last] = [merged]
        self.size += len(merged)

    def overlay(self, view: memoryview, start: int) -> None:
        """Lay the held bytes over ``view``, the file's bytes from ``start``."""
        end = start + len(view)
        i = max(bisect.bisect_right(self.starts, start) - 1, 0)
        while i < len(self.starts) and self.starts[i] < end:
            s, d = self.starts[i], self.datas[i]
            a, b = max(s, start), min(s + len(d), end)
            if a < b:
                view[a - start : b - start] = d[a - s : b - s]
            i += 1


# --------------------------------------------------------------------------- the file


class PositionedFile(io.RawIOBase):
    """A binary file on a descriptor with a position, as h5py's file-object driver uses
    it (``h5py.File(file_object, mode)``); subclasses say what writing does."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.pos = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def end(self) -> int:
        """The file's size as its readers see it."""
        return os.fstat(self.fd).st_size

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.end()}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.end() - self.pos))
        view = memoryview(buffer).cast("B")[:n]
        got = os.preadv(self.fd, [view], self.pos) if n else 0
        view[got:n] = bytes(n - got)
        self.pos += n
        return n


class RollbackFile(PositionedFile):
    """An existing file opened for writing that saves the original bytes of its extent
    in a rollback journal before overwriting them (see the module doc).

    It holds the file locked until :meth:`commit` or :meth:`rollback`.  A journal another
    writer left (one that is gone) is restored first.

    Parameters
    ----------
    path
        The file.
    locking
        HDF5 file locking (``None``: HDF5's default, from ``HDF5_USE_FILE_LOCKING``).
    """

    def __init__(self, path: str, locking: bool | None = None) -> None:
        self.restored = False  # whether an interrupted write was undone first
        self.path = self.name = os.path.abspath(path)
        self.journal = journal_path(self.path)
        self.disk = current_disk()
        self.saved = _Ranges()
        self.pending = _Segments()  # writes into the original extent, held until a flush
        self.nonce = os.urandom(16)
        self.journal_fd: int | None = None
        self.journal_end = 0
        self.dirty = False
        super().__init__(self.disk.open(self.path, os.O_RDWR))
        try:
            locked = lock_for_writing(self.fd, self.path, locking)
            if os.path.exists(self.journal):
                if not locked and journal_state(self.path, False) == "writer":
                    raise LoomWriteError(
                        "cannot open for writing: another loomx writer is running (its "
                        f"rollback journal {self.journal!r} exists and its process is alive)",
                        path=self.path,
                    )
                # a writer that is gone: undo it
                self.restored = restore(self.path, self.fd, self.disk)
            if os.path.exists(self.journal + ".new"):  # never renamed: nothing relied on it
                self.disk.remove(self.journal + ".new")
        except BaseException:
            self._release()
            raise
        self.size0 = self.size = self.on_disk = os.fstat(self.fd).st_size

    # io.RawIOBase ------------------------------------------------------------------

    def end(self) -> int:
        return self.size  # writes held in memory included

    def readinto(self, buffer: Any) -> int:
        start = self.pos
        n = super().readinto(buffer)
        self._overlay(memoryview(buffer).cast("B")[:n], start)
        return n

    def write(self, data: Any) -> int:
        data = bytes(data)
        off, n = self.pos, len(data)
        self.pos += n
        if not n:
            return 0
        self.size = max(self.size, off + n)
        low = min(max(self.size0 - off, 0), n)  # the bytes inside the original extent
        if low < n:
            self._save([])  # the journal exists before the file grows
            self._put(off + low, data[low:])
        if low:
            self._write_inside(off, data[:low])
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if size == self.size:
            return size
        self._sync()
        self._save(self.saved.missing(size, min(self.size0, self.on_disk)))
        self.disk.truncate(self.fd, size)
        self.size = self.on_disk = size
        self.dirty = True
        return size

    def flush(self) -> None:
        """HDF5 flushed: save what the held writes overwrite, then write them."""
        if not self.closed:
            self._sync()

    # writing -----------------------------------------------------------------------

    def _put(self, off: int, data: bytes) -> None:
        self.disk.write(self.fd, data, off)
        self.on_disk = max(self.on_disk, off + len(data))
        self.dirty = True

    def _write_inside(self, off: int, data: bytes) -> None:
        end = off + len(data)
        if not self.pending and not self.saved.missing(off, end):
            self._put(off, data)
            return
        if end <= self.on_disk and self._current(off, len(data)) == data:
            return  # changes nothing (HDF5 rewrites an unchanged superblock on close)
        self.pending.put(off, data)
        if self.pending.size > PENDING_LIMIT:
            self._sync()

    def _current(self, off: int, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = os.preadv(self.fd, [view], off)
        view[got:] = bytes(n - got)
        self._overlay(view, off)
        return bytes(buf)

    def _overlay(self, view: memoryview, start: int) -> None:
        self.pending.overlay(view, start)

    def _sync(self) -> None:
        """Save the original bytes the held writes overwrite (one batch, one fsync of the
        journal), then write them."""
        if not self.pending:
            return
        wanted = _Ranges()
        for off, data in self.pending:
            for a, b in self.saved.missing(off, off + len(data)):
                wanted.add(a, b)
        self._save(list(wanted))
        for off, data in self.pending:
            self._put(off, bytes(data))
        self.pending = _Segments()

    def _save(self, ranges: list[tuple[int, int]]) -> None:
        """Append the current (original) bytes of ``ranges`` to the journal, durably (the
        journal is created at the first call, even with no ranges: it also records the
        original size, to which a rollback truncates the file)."""
        if not ranges and self.journal_fd is not None:
            return
        entries = []
        for a, b in ranges:
            data = os.pread(self.fd, b - a, a)
            if len(data) != b - a:
                raise LoomWriteError(
                    f"cannot save bytes [{a}, {b}) for the rollback journal: the file holds "
                    f"{self.on_disk} bytes",
                    path=self.path,
                )
            entries.append((a, data))
        batch = journal_batch(entries, self.nonce) if entries else b""
        disk = self.disk
        if self.journal_fd is None:
            tagged = tag_file(self.fd, self.nonce)  # durable before the journal exists
            if tagged:
                disk.sync(self.fd)
            draft = self.journal + ".new"
            fd = disk.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                head = journal_header(self.size0, self.nonce, file_identity(self.fd), tagged)
                disk.write(fd, head + batch, 0)
                disk.sync(fd)
                disk.rename(draft, self.journal)
            except BaseException:
                disk.close(fd)
                raise
            disk.sync_folder(self.journal)
            self.journal_fd, self.journal_end = fd, HEADER_SIZE + len(batch)
        else:
            disk.write(self.journal_fd, batch, self.journal_end)
            disk.sync(self.journal_fd)
            self.journal_end += len(batch)
        for a, b in ranges:
            self.saved.add(a, b)

    # ending ------------------------------------------------------------------------

    def commit(self) -> None:
        """Make every write durable, then remove the journal (the commit point)."""
        try:
            self._sync()
            if self.dirty:
                self.disk.sync(self.fd)
            if self.journal_fd is not None:
                self.disk.close(self.journal_fd)
                self.journal_fd = None
                self.disk.remove(self.journal)
                self.disk.sync_folder(self.journal)
                untag_file(self.fd)
        finally:
            self._release()

    def rollback(self) -> None:
        """Undo every write: the saved bytes back, the file at its original size."""
        try:
            self.pending = _Segments()
            if self.journal_fd is not None:
                self.disk.close(self.journal_fd)
                self.journal_fd = None
                restore(self.path, self.fd, self.disk)
            elif self.dirty:  # only bytes past the original end were written
                self.disk.truncate(self.fd, self.size0)
                self.disk.sync(self.fd)
        finally:
            self._release()

    def _release(self) -> None:
        if self.journal_fd is not None:
            self.disk.close(self.journal_fd)
            self.journal_fd = None
        if not self.closed:
            os.close(self.fd)  # releases the lock
            super().close()

    def close(self) -> None:
        """Close without committing (see :meth:`commit`, :meth:`rollback`)."""
        self._release()


_WRITERS: dict[str, JournaledFile] = {}
"""The files this process has open through :func:`open_journaled`, by real path."""


def forget_writers() -> None:
    """Forget the parent's writers in a forked child (it does not write its parent's
    files; :mod:`loomx._hdf5.handles` calls this at fork)."""
    _WRITERS.clear()


class JournaledFile(h5py.File):
    """An h5py file on a :class:`RollbackFile`: closing it commits (or, when HDF5 fails
    to close it, rolls back) the rollback journal."""

    def __init__(self, raw: RollbackFile, mode: str = "r+") -> None:
        super().__init__(raw, mode)
        self._raw: RollbackFile | None = raw
        self._readers: list[h5py.File] = []
        self.restored = raw.restored
        """Whether opening undid a write that another writer left interrupted."""
        _WRITERS[os.path.realpath(raw.path)] = self

    def reader(self) -> h5py.File:
        """Another handle on this open file, for reads in this process meanwhile (HDF5
        shares one view of the file between them); closed when this file closes."""
        handle = h5py.File(self.id.reopen())
        self._readers.append(handle)
        return handle

    def close(self) -> None:
        raw, self._raw = getattr(self, "_raw", None), None
        if raw is None:
            super().close()
            return
        if _WRITERS.get(os.path.realpath(raw.path)) is self:
            del _WRITERS[os.path.realpath(raw.path)]
        try:
            for handle in self._readers:  # HDF5 closes the file with its last handle
                handle.close()
            super().close()
        except BaseException:
            raw.rollback()
            raise
        raw.commit()


def shared_reader(path: str) -> h5py.File | None:
    """A read handle on ``path`` sharing the view of this process's writer of it, if
    one is open (a second, independent HDF5 handle would not see its unflushed changes
    and would keep a stale view after them)."""
    writer = _WRITERS.get(os.path.realpath(path))
    if writer is None or not writer.id.valid:
        return None
    return writer.reader()


def open_journaled(path: str, locking: bool | None = None, mode: str = "r+") -> JournaledFile:
    """Open the existing file ``path`` with HDF5 through a :class:`RollbackFile` (locked;
    a hot journal restored first).  ``mode="r"`` only holds the writer's lock.

    Examples
    --------
    >>> with open_journaled("pbmc.loom") as f:  # doctest: +SKIP
    ...     f.attrs["title"] = "PBMC"  # committed as the file closes
    """
    raw = RollbackFile(path, locking)
    try:
        return JournaledFile(raw, mode)
    except BaseException as err:
        raw.rollback()
        if isinstance(err, OSError):
            raise open_error(path, "r+", locking, err) from err
        raise

"""A rollback journal below HDF5: in-place writes that survive a crash inside a flush.

HDF5 rewrites existing metadata (group B-trees, heaps, object headers, the superblock) in
place when it flushes, so a power cut or SIGKILL in the middle of a flush can leave part
of it on disk.  As with SQLite's rollback journal, every loomx writer opens an existing
file as a :class:`JournaledFile`: HDF5's file-object driver on a :class:`RollbackFile`
that, before it overwrites any byte of the file's original extent, saves the original
bytes in a journal next to the file (:func:`journal_path`) and makes that journal durable.

1. The first save writes the journal under a temporary name (a header with the file's
   original size, the writer's pid and a random nonce; then a first batch of saved
   ranges), fsyncs it, renames it to its final name and fsyncs the folder.  Later saves
   append a batch and fsync the journal.  Only then is the file itself written.
2. Writes into the original extent are held in memory between HDF5 flushes, so that a
   flush costs one batch and one journal fsync; bytes past the original end, bytes
   already saved and writes that change nothing need no saving.
3. Commit: once HDF5 has closed the file, the file is fsynced, the journal removed and
   the folder fsynced.  The journal's removal is the commit point.

A journal left by a writer that is gone is *hot*: the file may be half written.
:func:`restore` writes the saved bytes back, truncates the file to its original size,
fsyncs it and removes the journal.  Writers (and so :func:`loomx.recover`) do that before
anything else; readers refuse such a file with an error saying to run ``loomx recover``
(:func:`check_readable`), since opening a file never modifies it.

The lock: h5py's file-object driver takes no file lock, so :class:`RollbackFile` takes
the one HDF5 takes (``flock``, exclusive for a writer, which conflicts with the shared
lock of HDF5 readers in other processes), unless locking is off (``locking=False`` or
``HDF5_USE_FILE_LOCKING=FALSE``).

Journal format (little-endian): a 64-byte header (:data:`MAGIC`, original size u64, pid
u64, nonce 16 bytes, crc32 of those u32, zero padding), then batches, each written with
one write: ``b"LXRB"``, entry count u32, payload length u64, the payload, and the crc32 of
nonce, batch header and payload (u32).  The payload's entries are ``offset u64, length
u64, crc32 of the bytes u32, the bytes``.  A batch is fsynced before any byte it saves is
overwritten, so a last batch that is incomplete or fails its checksum was never relied on
and is ignored.  Any other damage is an error, and then nothing is written back.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import io
import itertools
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import h5py

from loomx._hdf5.filesystem import open_error, owner_alive
from loomx.errors import LoomFileError, LoomWriteError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MAGIC",
    "SUFFIX",
    "Disk",
    "JournaledFile",
    "PositionedFile",
    "RollbackFile",
    "check_readable",
    "journal_path",
    "journal_state",
    "open_journaled",
    "read_journal",
    "restore",
    "shared_reader",
    "use_disk",
]

SUFFIX = ".loomx-rollback"
"""Appended to a file's name to name its rollback journal."""
MAGIC = b"LOOMXRB1"
_HEADER = struct.Struct("<8sQQ16s")
HEADER_SIZE = 64
_BATCH = struct.Struct("<4sIQ")
_BATCH_MAGIC = b"LXRB"
_ENTRY = struct.Struct("<QQI")
_CRC = struct.Struct("<I")
PENDING_LIMIT = 64 << 20
"""Bytes of writes held in memory before they are saved and written without a flush."""


def journal_path(path: str | os.PathLike[str]) -> str:
    """The rollback journal of ``path``: ``{path}.loomx-rollback``."""
    return os.path.abspath(os.fspath(path)) + SUFFIX


# --------------------------------------------------------------------------- disk


class Disk:
    """The operations that change files, in one place: :mod:`loomx.testing.powerloss`
    records them to replay power cuts."""

    def open(self, path: str, flags: int) -> int:
        return os.open(path, flags, 0o644)

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(fd, view, offset)
            view, offset = view[done:], offset + done

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def sync(self, fd: int) -> None:
        os.fsync(fd)

    def sync_folder(self, path: str) -> None:
        """fsync the folder holding ``path`` (its names become durable)."""
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:  # some filesystems cannot fsync a folder
            pass
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)


_DISK = Disk()


@contextlib.contextmanager
def use_disk(disk: Disk) -> Iterator[None]:
    """Within the block, rollback files change files through ``disk`` (for tests)."""
    global _DISK
    previous, _DISK = _DISK, disk
    try:
        yield
    finally:
        _DISK = previous


# --------------------------------------------------------------------------- locking


def _locking_wanted(locking: bool | None) -> tuple[bool, bool]:
    """(lock at all, ignore a filesystem without locks), as HDF5 decides it."""
    if fcntl is None or locking is False:
        return False, False
    setting = os.environ.get("HDF5_USE_FILE_LOCKING", "").strip().upper()
    if locking is None and setting in ("FALSE", "0"):
        return False, False
    return True, locking is None and setting in ("BEST_EFFORT", "BEST-EFFORT")


_NO_LOCKS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)


def _lock(fd: int, path: str, locking: bool | None) -> bool:
    """Lock ``fd`` exclusively as an HDF5 writer does; False when locking is off."""
    wanted, best_effort = _locking_wanted(locking)
    if not wanted:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise LoomWriteError(
                "cannot open for writing: another process has this file open (file lock "
                "held by a reader or writer: a loomx Dataset, h5py, loompy; or a handle "
                "outside loomx in this process). Close it there or wait for its write to "
                "finish, then retry; locking=False removes this check, not the danger of "
                "writing a file others read",
                path=path,
            ) from err
        if best_effort and err.errno in _NO_LOCKS:
            return False
        raise LoomWriteError(
            f"cannot lock the file for writing ({err}); on filesystems without file "
            "locking pass locking=False",
            path=path,
        ) from err
    return True


def _writer_holds(path: str) -> bool:
    """Whether another open file description holds ``path`` locked exclusively."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # releases the probe's lock
    return False


# --------------------------------------------------------------------------- journal


def _crc(data: bytes, start: int = 0) -> int:
    return zlib.crc32(data, start) & 0xFFFFFFFF


def _header(size: int, nonce: bytes) -> bytes:
    head = _HEADER.pack(MAGIC, size, os.getpid(), nonce)
    head += _CRC.pack(_crc(head))
    return head + bytes(HEADER_SIZE - len(head))


def _batch(entries: list[tuple[int, bytes]], nonce: bytes) -> bytes:
    payload = b"".join(_ENTRY.pack(off, len(data), _crc(data)) + data for off, data in entries)
    head = _BATCH.pack(_BATCH_MAGIC, len(entries), len(payload))
    return head + payload + _CRC.pack(_crc(payload, _crc(head, _crc(nonce))))


class SavedBytes:
    """What a rollback journal holds: the file's original size and saved ranges."""

    def __init__(self, size: int, pid: int, entries: list[tuple[int, bytes]]) -> None:
        self.size = size
        self.pid = pid
        self.entries = entries


def read_journal(path: str) -> SavedBytes:
    """Parse and check the rollback journal of ``path`` completely.

    Raises
    ------
    LoomFileError
        The journal is damaged or was not written by loomx (a crafted header, a checksum
        that fails anywhere but in an incomplete last batch, a saved range past the
        original size, overlapping ranges).
    """
    journal = journal_path(path)
    with open(journal, "rb") as fh:
        raw = fh.read()

    def damaged(what: str) -> LoomFileError:
        return LoomFileError(
            f"its rollback journal {journal!r} (left by an interrupted loomx write) is "
            f"damaged: {what}. Nothing was written back; if the file is known to be intact, "
            "move the journal away",
            path=path,
        )

    if len(raw) < HEADER_SIZE or raw[: len(MAGIC)] != MAGIC:
        raise damaged(
            f"found {len(raw)} bytes starting {raw[:8]!r}, expected a {HEADER_SIZE}-byte "
            f"header starting {MAGIC!r}"
        )
    _, size, pid, nonce = _HEADER.unpack_from(raw)
    (crc,) = _CRC.unpack_from(raw, _HEADER.size)
    if crc != _crc(raw[: _HEADER.size]):
        raise damaged("the header's checksum does not match")
    entries: list[tuple[int, bytes]] = []
    pos = HEADER_SIZE
    while pos < len(raw):
        rest = raw[pos:]
        if len(rest) < _BATCH.size or not rest.strip(b"\0"):
            break  # an incomplete last batch: written, never fsynced, never relied on
        tag, count, length = _BATCH.unpack_from(rest)
        if tag != _BATCH_MAGIC:
            raise damaged(f"at byte {pos} found {rest[:4]!r}, expected a batch ({_BATCH_MAGIC!r})")
        end = _BATCH.size + length + _CRC.size
        if end > len(rest):
            break  # incomplete last batch
        (crc,) = _CRC.unpack_from(rest, end - _CRC.size)
        if crc != _crc(rest[_BATCH.size : end - _CRC.size], _crc(rest[: _BATCH.size], _crc(nonce))):
            if end == len(rest):
                break  # the last batch, never completely on disk: never relied on
            raise damaged(f"the batch at byte {pos} fails its checksum and more follow")
        entries.extend(_entries(rest[_BATCH.size : end - _CRC.size], count, pos, damaged))
        pos += end
    spans = sorted((off, off + len(data)) for off, data in entries)
    for off, end in spans:
        if end > size:
            raise damaged(f"a saved range [{off}, {end}) lies past the original size {size}")
    for (_, end), (nxt, _) in itertools.pairwise(spans):
        if nxt < end:
            raise damaged(f"saved ranges overlap at byte {nxt} (loomx saves each byte once)")
    return SavedBytes(size, pid, entries)


def _entries(payload: bytes, count: int, where: int, damaged: Any) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    for _ in range(count):
        if pos + _ENTRY.size > len(payload):
            raise damaged(f"the batch at byte {where} holds fewer entries than it declares")
        off, length, crc = _ENTRY.unpack_from(payload, pos)
        data = payload[pos + _ENTRY.size : pos + _ENTRY.size + length]
        if len(data) != length or _crc(data) != crc:
            raise damaged(f"the saved range at offset {off} of the batch at byte {where} is bad")
        out.append((off, data))
        pos += _ENTRY.size + length
    if pos != len(payload):
        raise damaged(f"the batch at byte {where} holds more bytes than its entries")
    return out


def restore(path: str, fd: int, disk: Disk | None = None) -> bool:
    """Undo an interrupted write: put the journal's saved bytes back into ``path`` (open
    as ``fd``, held by the caller), truncate it to its original size, fsync it and remove
    the journal.  Returns False when there is no journal.  Checks the whole journal before
    it writes anything (:func:`read_journal`)."""
    disk = disk or _DISK
    journal = journal_path(path)
    if not os.path.exists(journal):
        return False
    saved = read_journal(path)
    for off, data in saved.entries:
        disk.write(fd, data, off)
    disk.truncate(fd, saved.size)
    disk.sync(fd)
    disk.remove(journal)
    disk.sync_folder(journal)
    return True


def journal_state(path: str, locking: bool | None = None) -> str:
    """``"none"`` (no rollback journal), ``"writer"`` (a writer is running) or ``"hot"``
    (a writer was interrupted: the file may be half written until restored)."""
    journal = journal_path(path)
    if not os.path.exists(journal):
        return "none"
    if _locking_wanted(locking)[0]:
        try:
            if _writer_holds(path):
                return "writer"
        except OSError:
            pass
        else:  # no writer holds it: the journal's writer is gone, unless it just finished
            return "hot" if os.path.exists(journal) else "none"
    with contextlib.suppress(OSError, LoomFileError):
        pid = read_journal(path).pid
        if pid and _alive(pid):
            return "writer"
    return "hot" if os.path.exists(journal) else "none"


def _alive(pid: int) -> bool:
    return owner_alive(f"{pid}-")


def check_readable(path: str, locking: bool | None = None) -> None:
    """Refuse to read a file that a running writer holds or an interrupted one left half
    written (a journal exists); reading never changes the file, so it cannot restore it."""
    state = journal_state(path, locking)
    if state == "writer":
        raise LoomFileError(
            "cannot open for reading: another process is writing this file (its rollback "
            f"journal {journal_path(path)!r} exists); retry when its write has finished",
            path=path,
        )
    if state == "hot":
        raise LoomFileError(
            "a loomx write to this file was interrupted and may have left it half written; "
            f"its rollback journal {journal_path(path)!r} holds the original bytes. Run "
            "`loomx recover FILE` (or loomx.recover(path)) to restore them, then open it",
            path=path,
        )


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
        self.disk = _DISK
        self.saved = _Ranges()
        self.pending = _Segments()  # writes into the original extent, held until a flush
        self.nonce = os.urandom(16)
        self.journal_fd: int | None = None
        self.journal_end = 0
        self.dirty = False
        super().__init__(self.disk.open(self.path, os.O_RDWR))
        try:
            locked = _lock(self.fd, self.path, locking)
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
        batch = _batch(entries, self.nonce) if entries else b""
        disk = self.disk
        if self.journal_fd is None:
            draft = self.journal + ".new"
            fd = disk.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                disk.write(fd, _header(self.size0, self.nonce) + batch, 0)
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

if hasattr(os, "register_at_fork"):  # a forked child does not write its parent's files
    os.register_at_fork(after_in_child=_WRITERS.clear)


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

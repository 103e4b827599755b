"""The rollback journal on disk: its name and format, reading and checking it, writing
its saved bytes back (:func:`restore`), whether a writer holds it or left it *hot*
(:func:`journal_state`), the writer's lock, and the operations that change files
(:class:`Disk`).  The writer that fills a journal is :mod:`loomx._hdf5.rollback`.

A journal left by a writer that is gone is *hot*: the file may be half written.
:func:`restore` writes the saved bytes back, truncates the file to its original size,
fsyncs it and removes the journal.  Writers (and so :func:`loomx.recover`) do that before
anything else; readers refuse such a file with an error saying to run ``loomx recover``
(:func:`check_readable`), since opening a file never modifies it.

The lock: h5py's file-object driver takes no file lock, so a writer takes the one HDF5
takes (``flock``, exclusive for a writer, which conflicts with the shared lock of HDF5
readers in other processes; :func:`lock_for_writing`), unless locking is off
(``locking=False`` or ``HDF5_USE_FILE_LOCKING=FALSE``).

Identity: a journal belongs to one file.  Before a writer creates its journal it attaches
the journal's random nonce to the file (the extended attribute :data:`NONCE_XATTR`) and
fsyncs the file; the journal's header records the nonce, whether the file carries it, and
the file's device, inode and original size.  :func:`restore` writes a journal back only
into the file it belongs to: one carrying its nonce (also after a move or a copy that keeps
extended attributes), or, on a filesystem without extended attributes, the same device and
inode.  A journal beside another file (the file replaced, restored from a backup, a journal
copied next to the wrong file) is refused with an error that says what to do, and neither
file is changed.  Readers refuse it the same way.

Format (little-endian): a 64-byte header (:data:`MAGIC`, original size u64, pid u64,
nonce 16 bytes, device u64, inode u64, flags u32 (1: the file carries the nonce), crc32
of those u32), then batches,
each written with one write: ``b"LXRB"``, entry count u32, payload length u64, the
payload, and the crc32 of nonce, batch header and payload (u32).  The payload's entries
are ``offset u64, length u64, crc32 of the bytes u32, the bytes``.  A batch is fsynced
before any byte it saves is overwritten, so a last batch that is incomplete or fails its
checksum was never relied on and is ignored.  Any other damage is an error, and then
nothing is written back.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from loomx._hdf5.filesystem import hdf5_locking, owner_alive
from loomx.errors import LoomFileError, LoomWriteError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "HEADER_SIZE",
    "SUFFIX",
    "Disk",
    "check_readable",
    "current_disk",
    "file_identity",
    "foreign_journal_error",
    "journal_batch",
    "journal_header",
    "journal_path",
    "journal_state",
    "lock_for_writing",
    "restore",
    "tag_file",
    "untag_file",
    "use_disk",
]

SUFFIX = ".loomx-rollback"
"""Appended to a file's name to name its rollback journal."""
MAGIC = b"LOOMXRB2"
_HEADER = struct.Struct("<8sQQ16sQQI")
_TAGGED = 1
_MAGIC_1 = b"LOOMXRB1"  # loomx before journals recorded their file: no identity
_HEADER_1 = struct.Struct("<8sQQ16s")
NONCE_XATTR = "user.loomx.rollback"
"""The extended attribute in which a writer attaches its journal's nonce to the file."""
HEADER_SIZE = 64
_BATCH = struct.Struct("<4sIQ")
_BATCH_MAGIC = b"LXRB"
_ENTRY = struct.Struct("<QQI")
_CRC = struct.Struct("<I")


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


def current_disk() -> Disk:
    """The :class:`Disk` rollback files change files through now (see :func:`use_disk`)."""
    return _DISK


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
    mode = hdf5_locking(locking)
    return fcntl is not None and mode != "off", mode == "best-effort"


_NO_LOCKS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)


def lock_for_writing(fd: int, path: str, locking: bool | None) -> bool:
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


def journal_header(size: int, nonce: bytes, identity: tuple[int, int], tagged: bool) -> bytes:
    """The header of a journal of a file of ``size`` bytes, ``identity`` its (device,
    inode), ``tagged`` whether the file carries ``nonce`` (:func:`tag_file`)."""
    head = _HEADER.pack(MAGIC, size, os.getpid(), nonce, *identity, _TAGGED * tagged)
    head += _CRC.pack(_crc(head))
    return head + bytes(HEADER_SIZE - len(head))


def journal_batch(entries: list[tuple[int, bytes]], nonce: bytes) -> bytes:
    payload = b"".join(_ENTRY.pack(off, len(data), _crc(data)) + data for off, data in entries)
    head = _BATCH.pack(_BATCH_MAGIC, len(entries), len(payload))
    return head + payload + _CRC.pack(_crc(payload, _crc(head, _crc(nonce))))


def file_identity(fd: int) -> tuple[int, int]:
    """(device, inode) of an open file."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def tag_file(fd: int, nonce: bytes) -> bool:
    """Attach ``nonce`` to the open file; False where the filesystem has no extended
    attributes (then its device and inode identify it)."""
    try:
        os.setxattr(fd, NONCE_XATTR, nonce)
    except (OSError, AttributeError):
        return False
    return True


def untag_file(fd: int) -> None:
    """Remove a writer's nonce from the open file (best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        os.removexattr(fd, NONCE_XATTR)


def _file_nonce(fd: int) -> bytes | None:
    try:
        return os.getxattr(fd, NONCE_XATTR)
    except (OSError, AttributeError):
        return None


class SavedBytes:
    """What a rollback journal holds: the file's original size and identity, the writer's
    pid and nonce, and the saved ranges."""

    def __init__(
        self,
        size: int,
        pid: int,
        entries: list[tuple[int, bytes]],
        nonce: bytes = b"",
        identity: tuple[int, int] | None = None,
        tagged: bool = False,
    ) -> None:
        self.size = size
        self.pid = pid
        self.entries = entries
        self.nonce = nonce
        self.identity = identity  # None: written by loomx before journals named their file
        self.tagged = tagged

    def foreign(self, fd: int, path: str) -> str | None:
        """Why the journal does not belong to the open file ``fd``; None when it does."""
        if self.identity is None:
            return None
        found = file_identity(fd)
        nonce = _file_nonce(fd)
        if nonce == self.nonce or (not self.tagged and found == self.identity):
            return None
        has = "carries another writer's nonce" if nonce else "carries no nonce"
        return (
            f"it was written for the file on device {self.identity[0]}, inode "
            f"{self.identity[1]} ({self.size} bytes before that write)"
            + (f", which carried its nonce ({NONCE_XATTR}); this file {has}" if self.tagged else "")
            + f" (this file: device {found[0]}, inode {found[1]})"
        )


def foreign_journal_error(path: str, why: str) -> LoomFileError:
    """The error of a rollback journal that belongs to another file."""
    journal = journal_path(path)
    return LoomFileError(
        f"the rollback journal {journal!r} beside this file belongs to another file: {why}. "
        "It was not applied and the file is unchanged. If the file was replaced, restored "
        "from a backup or copied since the interrupted write, the journal is stale: move it "
        "away (or delete it) and open the file again; if the journal belongs to a copy of "
        "the file kept elsewhere, put it beside that copy and run `loomx recover` there",
        path=path,
    )


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

    if len(raw) < HEADER_SIZE or raw[: len(MAGIC)] not in (MAGIC, _MAGIC_1):
        raise damaged(
            f"found {len(raw)} bytes starting {raw[:8]!r}, expected a {HEADER_SIZE}-byte "
            f"header starting {MAGIC!r}"
        )
    header = _HEADER if raw[: len(MAGIC)] == MAGIC else _HEADER_1
    _, size, pid, nonce, *identity = header.unpack_from(raw)
    flags = identity.pop() if identity else 0
    (crc,) = _CRC.unpack_from(raw, header.size)
    if crc != _crc(raw[: header.size]):
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
    ident = (identity[0], identity[1]) if identity else None
    return SavedBytes(size, pid, entries, nonce, ident, bool(flags & _TAGGED))


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
    the journal.  Returns False when there is no journal.  Checks the whole journal, and
    that it belongs to this file (see the module doc), before it writes anything
    (:func:`read_journal`)."""
    disk = disk or current_disk()
    journal = journal_path(path)
    if not os.path.exists(journal):
        return False
    saved = read_journal(path)
    why = saved.foreign(fd, path)
    if why is not None:
        raise foreign_journal_error(path, why)
    for off, data in saved.entries:
        disk.write(fd, data, off)
    disk.truncate(fd, saved.size)
    disk.sync(fd)
    untag_file(fd)
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
        why = _foreign_on_disk(path)
        if why is not None:
            raise foreign_journal_error(path, why)
        raise LoomFileError(
            "a loomx write to this file was interrupted and may have left it half written; "
            f"its rollback journal {journal_path(path)!r} holds the original bytes. Run "
            "`loomx recover FILE` (or loomx.recover(path)) to restore them, then open it",
            path=path,
        )


def _foreign_on_disk(path: str) -> str | None:
    """Why ``path``'s journal belongs to another file (None when it belongs to it or cannot
    be read: then restoring it reports what is wrong)."""
    try:
        saved = read_journal(path)
        fd = os.open(path, os.O_RDONLY)
    except (OSError, LoomFileError):
        return None
    try:
        return saved.foreign(fd, path)
    finally:
        os.close(fd)

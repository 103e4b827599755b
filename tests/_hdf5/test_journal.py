"""The rollback journal on disk (loomx._hdf5.journal): its documented format written
without loomx, crafted and damaged journals, restores, the writer's file lock against
HDF5's, and readers that refuse a half-written file instead of changing it."""

from __future__ import annotations

import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import python_process

import loomx
from loomx._hdf5.journal import NONCE_XATTR, journal_path
from loomx._hdf5.rollback import open_journaled
from loomx.cli import main
from loomx.testing.hostile import small_loom

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locking")


NONCE = bytes(range(16))


def identity(path: Path | str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def encode_journal(
    size: int,
    batches: list[list[tuple[int, bytes]]],
    pid: int = 0,
    lie: str = "",
    ident: tuple[int, int] | None = None,
) -> bytes:
    """A journal in the documented format, built without loomx, of the file whose (device,
    inode) is ``ident`` (None: the format of loomx before journals named their file);
    ``lie`` makes the first batch declare one entry more (``"count"``) or its first entry
    carry a wrong checksum (``"entry"``), with the batch's own checksum right."""
    if ident is None:
        head = struct.pack("<8sQQ16s", b"LOOMXRB1", size, pid, NONCE)
    else:
        head = struct.pack("<8sQQ16sQQI", b"LOOMXRB2", size, pid, NONCE, *ident, 0)
    head += struct.pack("<I", zlib.crc32(head))
    out = head + bytes(64 - len(head))
    for batch in batches:
        wrong = lie == "entry" and batch is batches[0]
        payload = b"".join(
            struct.pack("<QQI", off, len(data), zlib.crc32(data) ^ wrong) + data
            for off, data in batch
        )
        count = len(batch) + (lie == "count" and batch is batches[0])
        top = struct.pack("<4sIQ", b"LXRB", count, len(payload))
        out += top + payload + struct.pack("<I", zlib.crc32(NONCE + top + payload))
    return out


HALF_WRITE = """
import os, sys, numpy as np
from loomx._hdf5.rollback import open_journaled
f = open_journaled(sys.argv[1])
del f["row_attrs/Gene"]
f["col_attrs/New"] = np.arange(20)
f.attrs["Title"] = "changed"
f.flush()  # on disk, half of what a writer does: then the process dies
os._exit(0)
"""


@pytest.fixture
def half_written(tmp_path) -> tuple[Path, Path]:
    """A Loom file a writer process left changed, with its rollback journal; and a copy
    of the file from before."""
    path = tmp_path / "x.loom"
    small_loom(str(path))
    old = tmp_path / "old.loom"
    shutil.copyfile(path, old)
    child = python_process(HALF_WRITE, str(path))
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert Path(journal_path(path)).exists()
    assert path.read_bytes() != old.read_bytes()
    return path, old


# --------------------------------------------------------------------------- restore


def test_readers_refuse_a_half_written_file_and_never_change_it(half_written):
    path, _ = half_written
    data, saved = path.read_bytes(), Path(journal_path(path)).read_bytes()
    for locking in (None, False):
        with pytest.raises(loomx.LoomFileError, match="loomx recover") as info:
            loomx.open_loom(path, locking=locking)
        assert info.value.path == str(path) and journal_path(path) in str(info.value)
    assert path.read_bytes() == data and Path(journal_path(path)).read_bytes() == saved


def test_recover_restores_the_original_bytes(half_written):
    path, old = half_written
    assert loomx.recover(path) == 1
    assert path.read_bytes() == old.read_bytes()  # byte for byte, size too
    assert not Path(journal_path(path)).exists()
    assert loomx.recover(path) == 0


def test_recover_on_the_command_line(half_written, capsys):
    path, old = half_written
    assert main(["recover", str(path)]) == 0
    assert "1 interrupted write(s) undone" in capsys.readouterr().out
    assert path.read_bytes() == old.read_bytes()


def test_the_next_write_restores_first(half_written):
    path, old = half_written
    loomx.to_loom(xr.Dataset(coords={"Later": ("col", np.arange(20.0))}), path, mode="a")
    with h5py.File(path, "r") as f, h5py.File(old, "r") as g:
        assert "Gene" in f["row_attrs"] and "New" not in f["col_attrs"]
        assert f.attrs.get("Title") == g.attrs.get("Title")
        np.testing.assert_array_equal(f["col_attrs/Later"][()], np.arange(20.0))
        np.testing.assert_array_equal(f["matrix"][()], g["matrix"][()])


# --------------------------------------------------------------------------- identity


def _refused_everywhere(path: Path, match: str = "belongs to another file") -> None:
    """Every way in refuses the journal beside ``path`` and changes neither file."""
    journal = Path(journal_path(path))
    data, saved = path.read_bytes(), journal.read_bytes()
    calls = (
        lambda: loomx.recover(path),
        lambda: loomx.to_loom(xr.Dataset(coords={"X": ("col", np.arange(20.0))}), path, mode="a"),
        lambda: loomx.open_loom(path),
        lambda: loomx.open_loom(path, locking=False),
    )
    for call in calls:
        with pytest.raises(loomx.LoomFileError, match=match) as info:
            call()
        assert "move it away" in str(info.value) and info.value.path == str(path)
    assert path.read_bytes() == data and journal.read_bytes() == saved


def test_a_journal_copied_beside_another_file_is_refused(half_written, tmp_path):
    path, old = half_written
    other = tmp_path / "other.loom"
    shutil.copyfile(old, other)  # the same content as before the write, another file
    shutil.copyfile(journal_path(path), journal_path(other))
    _refused_everywhere(other)
    Path(journal_path(other)).unlink()  # what the error says to do
    with loomx.open_loom(other) as ds:
        assert "Gene" in ds
    assert loomx.recover(path) == 1  # the file it belongs to is restored
    assert path.read_bytes() == old.read_bytes()


def test_a_replaced_file_keeps_its_journal_unapplied(half_written, tmp_path):
    path, _ = half_written
    replacement = tmp_path / "replacement.loom"
    small_loom(str(replacement), chunks=(4, 4))
    os.replace(replacement, path)  # a new file under the old name
    _refused_everywhere(path)
    os.setxattr(path, NONCE_XATTR, b"another writer's")
    _refused_everywhere(path, match="carries another writer's nonce")


def test_a_backup_restored_over_the_file_is_not_rolled_back(half_written, tmp_path):
    path, old = half_written
    backup = tmp_path / "backup.loom"
    shutil.copyfile(old, backup)
    path.unlink()
    shutil.copyfile(backup, path)  # restored from a backup (the inode may be reused)
    _refused_everywhere(path, match="carries no nonce")


def test_a_crafted_journal_for_another_inode_is_refused(tmp_path):
    path = Path(small_loom(str(tmp_path / "x.loom")))
    original = path.read_bytes()
    dev, ino = identity(path)
    journal = encode_journal(len(original) - 100, [[(0, b"x" * 50)]], ident=(dev, ino + 1))
    Path(journal_path(path)).write_bytes(journal)
    _refused_everywhere(path, match=f"inode {ino + 1} ")


def test_the_file_moved_with_its_journal_and_nonce_is_restored(half_written, tmp_path):
    path, old = half_written
    moved = tmp_path / "elsewhere" / "x.loom"
    moved.parent.mkdir()
    shutil.copy2(path, moved)  # extended attributes kept, as cp -a / rsync -X copy them
    shutil.copy2(journal_path(path), journal_path(moved))
    assert loomx.recover(moved) == 1
    assert moved.read_bytes() == old.read_bytes()
    assert NONCE_XATTR not in os.listxattr(moved)  # removed with the journal


def test_a_committed_write_leaves_no_nonce(tmp_path):
    path = Path(small_loom(str(tmp_path / "x.loom")))
    loomx.to_loom(xr.Dataset(coords={"X": ("col", np.arange(20.0))}), path, mode="a")
    assert NONCE_XATTR not in os.listxattr(path)


# --------------------------------------------------------------------------- the format


def test_a_crafted_journal_is_applied_as_documented(tmp_path):
    path = Path(small_loom(str(tmp_path / "x.loom")))
    original = path.read_bytes()
    changed = bytearray(original) + b"appended bytes"
    changed[100:200] = bytes(100)
    changed[1000:1010] = b"0123456789"
    path.write_bytes(changed)
    batches = [[(100, original[100:200])], [(1000, original[1000:1010])]]
    for ident in (identity(path), None):  # the current format, and the one before it
        path.write_bytes(changed)
        journal = encode_journal(len(original), batches, ident=ident)
        Path(journal_path(path)).write_bytes(journal)
        assert loomx.recover(path) == 1
        assert path.read_bytes() == original


def test_an_incomplete_last_batch_is_ignored(tmp_path):
    """Written and never fsynced before the writer died: the file was never changed for
    it, so restoring the others is complete."""
    path = Path(small_loom(str(tmp_path / "x.loom")))
    original = path.read_bytes()
    changed = bytearray(original)
    changed[100:200] = bytes(100)
    path.write_bytes(changed)
    ident = identity(path)
    full = encode_journal(
        len(original), [[(100, original[100:200])], [(300, b"x" * 50)]], ident=ident
    )
    first = len(encode_journal(len(original), [[(100, original[100:200])]], ident=ident))
    for cut in (first + 3, first + 20, len(full) - 1):  # torn at any point
        Path(journal_path(path)).write_bytes(full[:cut])
        path.write_bytes(changed)
        loomx.recover(path)
        assert path.read_bytes() == original, cut
    bad = bytearray(full)
    bad[-10] ^= 0xFF  # complete, but its checksum fails: never durable, never relied on
    Path(journal_path(path)).write_bytes(bytes(bad))
    path.write_bytes(changed)
    loomx.recover(path)
    assert path.read_bytes() == original


@pytest.mark.parametrize(
    "damage",
    [
        "magic",
        "header checksum",
        "past the original size",
        "overlap",
        "middle batch checksum",
        "entry checksum",
        "count",
        "short",
    ],
)
def test_a_damaged_journal_is_an_error_and_nothing_is_written(tmp_path, damage):
    path = Path(small_loom(str(tmp_path / "x.loom")))
    size = path.stat().st_size
    good = [[(100, b"a" * 50)], [(400, b"b" * 50)]]
    if damage == "past the original size":
        journal = encode_journal(size, [[(size - 10, b"c" * 20)]])
    elif damage == "overlap":
        journal = encode_journal(size, [[(100, b"a" * 50)], [(120, b"b" * 50)]])
    elif damage in ("count", "entry checksum"):
        journal = encode_journal(size, good, lie=damage.split()[0])
    else:
        journal = bytearray(encode_journal(size, good))
        where = {"magic": 0, "header checksum": 20, "middle batch checksum": 64 + 16 + 20 + 10}
        if damage in where:
            journal[where[damage]] ^= 0xFF
        else:
            journal = journal[:40]
        journal = bytes(journal)
    Path(journal_path(path)).write_bytes(journal)
    data = path.read_bytes()
    for call in (lambda: loomx.recover(path), lambda: loomx.to_loom(xr.Dataset(), path, mode="a")):
        with pytest.raises(loomx.LoomFileError, match="damaged") as info:
            call()
        assert info.value.path == str(path) and journal_path(path) in str(info.value)
    with pytest.raises(loomx.LoomFileError, match="loomx recover"):
        loomx.open_loom(path)
    assert path.read_bytes() == data  # never garbage written into the file
    assert Path(journal_path(path)).read_bytes() == journal


# --------------------------------------------------------------------------- locking


HOLD = """
import sys, h5py
f = h5py.File(sys.argv[1], "r")
print("holding", flush=True)
sys.stdin.readline()
"""


TRY_READ = """
import sys, h5py, loomx
try:
    h5py.File(sys.argv[1], "r").close()
    print("h5py ok")
except OSError as err:
    print("h5py refused", err)
try:
    loomx.open_loom(sys.argv[1]).close()
    print("loomx ok")
except loomx.LoomFileError as err:
    print("loomx refused", err)
"""


def test_the_writer_lock_is_hdf5s(tmp_path, monkeypatch):
    """The layer's flock conflicts with HDF5's locks in other processes both ways, and
    locking=False or HDF5_USE_FILE_LOCKING=FALSE turns it off as it does HDF5's."""
    path = small_loom(str(tmp_path / "x.loom"))
    reader = python_process(HOLD, path)
    try:
        assert reader.stdout.readline().strip() == "holding"
        with pytest.raises(loomx.LoomWriteError, match="another process has this file open"):
            open_journaled(path)
        open_journaled(path, locking=False).close()
        monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "FALSE")
        open_journaled(path).close()
        monkeypatch.delenv("HDF5_USE_FILE_LOCKING")
    finally:
        reader.communicate("\n", timeout=120)
    with open_journaled(path) as f:
        f.attrs["Title"] = "held"
        f.flush()  # a journal exists while the writer holds the file
        assert Path(journal_path(path)).exists()
        out, err = python_process(TRY_READ, path).communicate(timeout=120)
        assert "h5py refused" in out and "unable to lock file" in out, (out, err)
        assert "loomx refused" in out and "another process is writing" in out, (out, err)
    out, err = python_process(TRY_READ, path).communicate(timeout=120)
    assert "h5py ok" in out and "loomx ok" in out, (out, err)


SLEEP = "import sys; sys.stdin.readline()"


def test_without_locking_the_journals_pid_tells_a_running_writer(half_written):
    path, _ = half_written
    journal = Path(journal_path(path))
    sleeper = python_process(SLEEP)
    try:  # the same journal, now owned by a live process
        data = bytearray(journal.read_bytes())
        data[16:24] = struct.pack("<Q", sleeper.pid)
        data[60:64] = struct.pack("<I", zlib.crc32(bytes(data[:60])))
        journal.write_bytes(bytes(data))
        with pytest.raises(loomx.LoomFileError, match="another process is writing"):
            loomx.open_loom(path, locking=False)
        with pytest.raises(loomx.LoomWriteError, match="another loomx writer is running"):
            loomx.recover(path, locking=False)
    finally:
        sleeper.communicate("\n", timeout=60)
    with pytest.raises(loomx.LoomFileError, match="loomx recover"):  # its writer is gone
        loomx.open_loom(path, locking=False)
    assert loomx.recover(path, locking=False) == 1

"""loomx._hdf5.filesystem: URLs told from paths, temporary names next to a file and the
removal of those whose writer is gone, moving a file into place, the errors for files that
are not (whole) HDF5 files, and ``HDF5_USE_FILE_LOCKING`` read as HDF5 itself reads it."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import loomx
from loomx._hdf5 import filesystem as _filesystem
from loomx._hdf5.filesystem import (
    TEMPORARY_TAG,
    hdf5_locking,
    is_remote,
    is_url,
    move_into_place,
    owner_alive,
    temporary_file,
)
from loomx.errors import LoomFileError, LoomWriteError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
"""The first 8 bytes of every HDF5 file (HDF5 File Format Specification, superblock)."""


def _dead_pid() -> int:
    """The process id of a process that has finished."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                           capture_output=True, text=True)  # fmt: skip
    return int(child.stdout)


def _hdf5_file(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", data=np.arange(200.0).reshape(10, 20))
    return path


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("s3://bucket/key.loom", True),
        ("https://example.org/a.loom", True),
        ("HTTP://example.org/a.loom", True),
        ("gcs://bucket/a.loom", True),
        ("git+ssh://host/a.loom", True),
        ("file:///tmp/a.loom", False),
        ("FILE:///tmp/a.loom", False),
        ("local:///tmp/a.loom", False),
        ("/tmp/a.loom", False),
        ("a.loom", False),
        ("relative/dir://a.loom", False),
        ("C:\\data\\a.loom", False),
        ("", False),
    ],
)
def test_is_url(path: str, url: bool) -> None:
    assert is_url(path) is url


def test_is_remote(tmp_path: Path) -> None:
    local = _hdf5_file(tmp_path / "a.loom")
    assert is_remote("s3://bucket/a.loom")
    assert not is_remote(str(local)) and not is_remote(local)
    assert not is_remote("file://" + str(local))
    with open(local, "rb") as fh:
        assert is_remote(fh)  # an open binary file is read as a remote source
    assert is_remote(io.BytesIO(local.read_bytes()))
    assert not is_remote(None) and not is_remote(3)


def test_writing_a_url_is_refused_with_its_name() -> None:
    with pytest.raises(LoomWriteError, match="remote files are read-only") as err:
        _filesystem.refuse_remote("s3://bucket/a.loom", "write")
    assert err.value.path == "s3://bucket/a.loom"
    with pytest.raises(LoomWriteError, match="remote"):
        _filesystem.temp_path("s3://bucket/a.loom", "write")


# --------------------------------------------------------------------------- temporary names


def test_owner_alive() -> None:
    assert owner_alive(f"{os.getpid()}-write-0123abcd")
    assert not owner_alive(f"{_dead_pid()}-write-0123abcd")
    for token in ("", "-write", "x12-write", "0-write", f"{1 << 31}-write", "12a-write"):
        assert not owner_alive(token), token


def test_temporary_names_sit_next_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data.loom"
    tmp = _filesystem.temp_path(str(path), "append")
    folder, name = os.path.split(tmp)
    assert folder == str(tmp_path)
    assert name.startswith(f".data.loom{TEMPORARY_TAG}{os.getpid()}-append-")
    assert tmp != _filesystem.temp_path(str(path), "append")  # a new name every time
    monkeypatch.chdir(tmp_path)
    assert _filesystem.temp_path("data.loom", "x").startswith(str(tmp_path) + os.sep)


def test_temporary_files_of_writers_that_are_gone_are_removed(tmp_path: Path) -> None:
    prefix = f".data.loom{TEMPORARY_TAG}"
    dead = tmp_path / f"{prefix}{_dead_pid()}-write-00000000"
    garbled = tmp_path / f"{prefix}nopid-write-00000000"
    alive = tmp_path / f"{prefix}{os.getpid()}-write-00000000"
    other = tmp_path / f".other.loom{TEMPORARY_TAG}{_dead_pid()}-write-00000000"
    plain = tmp_path / "data.loom"
    for p in (dead, garbled, alive, other, plain):
        p.write_bytes(b"x")
    _filesystem.temp_path(str(plain), "write")
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (alive, other, plain))


def test_temporary_file_is_removed_whatever_happens(tmp_path: Path) -> None:
    path = str(tmp_path / "data.loom")
    with temporary_file(path, "write", "the test write") as tmp:
        Path(tmp).write_bytes(b"partial")
    assert not os.path.exists(tmp)
    with (
        pytest.raises(LoomWriteError, match="the test write failed") as err,
        temporary_file(path, "write", "the test write") as tmp,
    ):
        Path(tmp).write_bytes(b"partial")
        raise OSError(28, "No space left on device")
    assert err.value.path == path and not os.path.exists(tmp)
    with (  # loomx's own errors pass unchanged
        pytest.raises(LoomFileError, match="kept"),
        temporary_file(path, "write", "the test write"),
    ):
        raise LoomFileError("kept")
    assert not [p for p in os.listdir(tmp_path) if TEMPORARY_TAG in p]


# --------------------------------------------------------------------------- moving into place


def test_move_into_place_keeps_the_mode_and_renames(tmp_path: Path) -> None:
    path, tmp = tmp_path / "data.loom", tmp_path / ".data.loom.tmp"
    path.write_bytes(b"old contents")
    os.chmod(path, 0o640)
    tmp.write_bytes(b"new contents")
    os.chmod(tmp, 0o600)
    new_inode = tmp.stat().st_ino
    with open(path, "rb") as reader:  # a reader of the old file keeps the old file
        move_into_place(str(tmp), str(path))
        assert reader.read() == b"old contents"
    assert path.read_bytes() == b"new contents"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_ino == new_inode  # renamed, not copied over the old file
    assert not tmp.exists()


def test_move_into_place_to_a_new_name(tmp_path: Path) -> None:
    path, tmp = tmp_path / "data.loom", tmp_path / ".data.loom.tmp"
    tmp.write_bytes(b"new contents")
    os.chmod(tmp, 0o604)
    move_into_place(str(tmp), str(path))
    assert path.read_bytes() == b"new contents"
    assert stat.S_IMODE(path.stat().st_mode) == 0o604
    assert not tmp.exists()


# --------------------------------------------------------------------------- not HDF5


@pytest.mark.parametrize("cut", [1, 4, 7])
def test_a_file_cut_inside_the_signature_is_truncated(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.loom"
    path.write_bytes(_hdf5_file(tmp_path / "whole.loom").read_bytes()[:cut])
    assert HDF5_SIGNATURE.startswith(path.read_bytes())
    with pytest.raises(LoomFileError, match="truncated or corrupt") as err:
        loomx.open_loom(path)
    assert err.value.path == str(path) and str(path) in str(err.value)
    direct = _filesystem.signature_error(path.read_bytes(), str(path))
    assert direct is not None and "truncated" in str(direct) and str(path) in str(direct)


def test_a_file_cut_after_the_signature_names_the_file(tmp_path: Path) -> None:
    whole = _hdf5_file(tmp_path / "whole.loom").read_bytes()
    path = tmp_path / "cut.loom"
    path.write_bytes(whole[:100])
    with pytest.raises(OSError) as h5py_err:
        h5py.File(path, "r")
    err = _filesystem.open_error(str(path), "r", None, h5py_err.value)
    assert isinstance(err, LoomFileError)
    assert err.path == str(path) and "truncated or corrupt" in str(err)
    with pytest.raises(LoomFileError) as opened:
        loomx.open_loom(path)
    assert opened.value.path == str(path) and str(path) in str(opened.value)


@pytest.mark.parametrize("head", [b"not hdf5 at all", b"PK\x03\x04zip", b"\x89PNG\r\n\x1a\n"])
def test_a_file_of_another_format_is_not_hdf5(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "other.loom"
    path.write_bytes(head + bytes(600))
    found = (head + bytes(600))[:8]
    with pytest.raises(LoomFileError, match="not an HDF5 file") as err:
        loomx.open_loom(path)
    assert err.value.path == str(path) and str(path) in str(err.value)
    assert repr(found) in str(err.value)  # what was found


def test_the_hdf5_signature_is_hdf5s(tmp_path: Path) -> None:
    assert _hdf5_file(tmp_path / "a.h5").read_bytes()[:8] == HDF5_SIGNATURE
    assert _filesystem.signature_error(HDF5_SIGNATURE, "a.h5") is None


# --------------------------------------------------------------------------- HDF5 file locking

TRY_OPEN = """
import sys, h5py
try:
    h5py.File(sys.argv[1], "r").close()
    print("opened")
except OSError:
    print("refused")
"""

DOCUMENTED = {"TRUE": "on", "1": "on", "FALSE": "off", "0": "off", "BEST_EFFORT": "best-effort"}
"""HDF5_USE_FILE_LOCKING as HDF5 documents it (``H5Pset_file_locking``, "Environment
variables"); unset means locking on."""


def _hdf5_refuses(path: Path, setting: str | None) -> bool:
    """Whether h5py in a process with ``HDF5_USE_FILE_LOCKING=setting`` is refused a file
    this process holds open for writing (HDF5's lock applies)."""
    env = {k: v for k, v in os.environ.items() if k != "HDF5_USE_FILE_LOCKING"}
    if setting is not None:
        env["HDF5_USE_FILE_LOCKING"] = setting
    out = subprocess.run([sys.executable, "-c", TRY_OPEN, str(path)], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.strip()  # fmt: skip
    assert out in ("opened", "refused"), out
    return out == "refused"


@pytest.fixture
def held_for_writing(tmp_path: Path):
    path = _hdf5_file(tmp_path / "held.h5")
    with h5py.File(path, "a", locking=True):
        yield path


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locking")
@pytest.mark.parametrize("setting", [*DOCUMENTED, None])
def test_hdf5_use_file_locking_is_read_as_hdf5_reads_it(
    held_for_writing: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None
) -> None:
    if setting is None:
        monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    else:
        monkeypatch.setenv("HDF5_USE_FILE_LOCKING", setting)
    mode = hdf5_locking()
    assert mode == DOCUMENTED.get(setting, "on")
    # on a filesystem with locks, best effort locks as "on" does
    assert _hdf5_refuses(held_for_writing, setting) == (mode != "off")
    assert _filesystem.locking_enforced() == (mode == "on")
    assert hdf5_locking(True) == "on" and hdf5_locking(False) == "off"  # arguments win


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locking")
@pytest.mark.parametrize("setting", ["false", " FALSE "])
def test_settings_hdf5_does_not_know_leave_locking_on(
    held_for_writing: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", setting)
    assert _hdf5_refuses(held_for_writing, setting)  # HDF5: locking on
    assert hdf5_locking() == "on"

"""The rollback layer below HDF5 (loomx._hdf5.rollback): reads see every write, a crash at
any point restores the original bytes, commit and rollback, and a disk that fills up in
the middle of a flush.  The journal's format, restores, the lock and readers' refusals
are tested in test_journal.py."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import loomx
from loomx._hdf5.journal import Disk, journal_path, restore, use_disk
from loomx._hdf5.rollback import RollbackFile
from loomx.testing import assert_loom_identical
from loomx.testing.hostile import small_loom

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locking")


@st.composite
def file_ops(draw):
    ops = []
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["write", "write", "write", "truncate", "flush", "read"]))
        off = draw(st.integers(0, 5000))
        if kind == "write":
            ops.append(("write", off, draw(st.binary(min_size=1, max_size=400))))
        elif kind == "truncate":
            ops.append(("truncate", off, b""))
        else:
            ops.append((kind, off, b""))
    return ops


@settings(max_examples=60, deadline=None)
@given(ops=file_ops(), commit=st.booleans())
def test_the_layer_against_a_model(tmp_path_factory, ops, commit):
    """Reads see every write; a crash at the end restores the original bytes from what
    is on disk; commit leaves the writes, rollback the original."""
    folder = tmp_path_factory.mktemp("layer")
    path = folder / "f"
    original = np.random.default_rng(len(ops)).bytes(4096)
    path.write_bytes(original)
    model = bytearray(original)
    raw = RollbackFile(str(path), locking=True)
    for kind, off, data in ops:
        if kind == "write":
            raw.seek(off)
            raw.write(data)
            model.extend(bytes(max(0, off + len(data) - len(model))))
            model[off : off + len(data)] = data
        elif kind == "truncate":
            raw.truncate(off)
            del model[off:]
            model.extend(bytes(off - len(model)))
        elif kind == "flush":
            raw.flush()
        else:
            raw.seek(off)
            buf = bytearray(300)
            n = raw.readinto(buf)
            assert bytes(buf[:n]) == bytes(model[off : off + 300])
    assert raw.seek(0, 2) == len(model)
    crashed = folder / "crashed"  # the disk as a crash now would leave it (the writer's
    shutil.copy2(path, crashed)  # nonce kept with the file: a copy of the same file)
    if os.path.exists(journal_path(path)):
        shutil.copyfile(journal_path(path), journal_path(crashed))
    fd = os.open(crashed, os.O_RDWR)
    try:
        restore(str(crashed), fd)
    finally:
        os.close(fd)
    assert crashed.read_bytes() == original
    if commit:
        raw.commit()
        assert path.read_bytes() == bytes(model)
    else:
        raw.rollback()
        assert path.read_bytes() == original
    assert not os.path.exists(journal_path(path))


class FailingDisk(Disk):
    """A disk that fills up after ``n`` writes into ``path``."""

    def __init__(self, path: str, n: int) -> None:
        self.path, self.n, self.fds = os.path.abspath(path), n, set()

    def open(self, path: str, flags: int) -> int:
        fd = super().open(path, flags)
        if os.path.abspath(path) == self.path:
            self.fds.add(fd)
        return fd

    def write(self, fd: int, data: bytes, offset: int) -> None:
        if fd in self.fds:
            self.n -= 1
            if self.n < 0:
                raise OSError(28, "No space left on device")
        super().write(fd, data, offset)


@pytest.mark.parametrize("n", [0, 2, 5])
def test_a_disk_that_fills_up_inside_a_flush_loses_nothing(tmp_path, n):
    path = tmp_path / "x.loom"
    small_loom(str(path))
    old = tmp_path / "old.loom"
    shutil.copyfile(path, old)
    ds = xr.Dataset(coords={"New": ("col", np.arange(20.0))})
    with use_disk(FailingDisk(str(path), n)), pytest.raises(loomx.LoomWriteError):
        loomx.to_loom(ds, path, mode="a")
    if Path(journal_path(path)).exists():  # the failed write could not clean up itself
        loomx.recover(path)
    assert_loom_identical(path, old)
    loomx.to_loom(ds, path, mode="a")  # the next write succeeds
    with loomx.open_loom(path) as back:
        np.testing.assert_array_equal(back["New"].values, np.arange(20.0))

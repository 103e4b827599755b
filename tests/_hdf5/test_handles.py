"""The handle manager: pins (a handle a read uses is never closed under it, local or
remote), the least-recently-used limit, release before writes, pickling as a recipe, and
what a forked child starts with."""

from __future__ import annotations

import os
import pickle
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import poisson_loom

from loomx._hdf5 import handles as _handles
from loomx._hdf5.files import CachedFile, open_for_writing, release_handles
from loomx._hdf5.remote import RemoteSource
from loomx._hdf5.rollback import shared_reader
from loomx.errors import LoomWriteError

N, M = 40, 70

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


@pytest.fixture
def loom(tmp_path: Path) -> Path:
    return poisson_loom(tmp_path / "f.loom", N, M)


def _matrix(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["matrix"][()]


def test_closing_a_remote_handle_waits_for_the_read_using_it(loom: Path) -> None:
    """The bug this fixes: closing a remote file's handle from one thread closed the h5py
    handle a read in another thread was using."""
    expected = _matrix(loom)
    with open(loom, "rb") as fileobj:
        handle = CachedFile(RemoteSource(fileobj))
        pinned, closed = threading.Event(), threading.Event()

        def read() -> tuple[np.ndarray, h5py.File]:
            with handle.acquire() as f:
                pinned.set()
                assert closed.wait(30)
                return f["matrix"][()], f

        with ThreadPoolExecutor(1) as pool:
            reading = pool.submit(read)
            assert pinned.wait(30)
            closer = threading.Thread(target=handle.close)
            closer.start()
            closer.join()
            closed.set()
            values, used = reading.result()
        np.testing.assert_array_equal(values, expected)
        assert not used.id.valid  # closed once the read ended
        with handle.acquire() as f:  # reopened on the next use
            np.testing.assert_array_equal(f["matrix"][()], expected)
        handle.close()


def test_least_recently_used_handles_close_but_never_under_a_read(
    loom: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_handles._OPEN, "maxsize", 2)
    expected = _matrix(loom)
    a, b, c = CachedFile(loom), CachedFile(loom), CachedFile(loom)
    with a.acquire() as fa:
        with b.acquire() as fb:
            pass
        with c.acquire():  # a, the least recently used, goes while its read goes on
            pass
        assert fa.id.valid
        np.testing.assert_array_equal(fa["matrix"][()], expected)
    assert not fa.id.valid  # closed when the read ended
    assert fb.id.valid
    with a.acquire() as again:  # reopened; now b is the least recently used
        np.testing.assert_array_equal(again["matrix"][()], expected)
    assert not fb.id.valid
    for handle in (a, b, c):
        handle.close()
    assert release_handles(str(loom)) == 0


def test_release_refuses_while_a_closed_handle_is_still_read(loom: Path) -> None:
    """A handle closed while a read uses it still holds the file read-only until the
    read ends: a writer in this process must wait for it, not fail inside HDF5."""
    handle = CachedFile(loom)
    with handle.acquire() as f:
        handle.close()
        with pytest.raises(LoomWriteError, match="in progress"):
            release_handles(str(loom))
        np.testing.assert_array_equal(f["matrix"][()], _matrix(loom))
    assert release_handles(str(loom)) == 0
    with open_for_writing(str(loom)) as w:
        w["matrix"][0, 0] = 42
    assert _matrix(loom)[0, 0] == 42


def test_recipe_pickles_without_its_handle_and_shares_it(loom: Path) -> None:
    handle = CachedFile(loom)
    with handle.acquire() as f:
        data = pickle.dumps(handle)
        assert b"h5py" not in data
        clone = pickle.loads(data)
        with clone.acquire() as g:
            assert g is f  # one handle per process for every copy of a recipe
        assert CachedFile(loom).key != handle.key
    handle.close()
    with clone.acquire() as g:
        assert g is not f
        np.testing.assert_array_equal(g["matrix"][()], _matrix(loom))
    clone.close()


@needs_fork
def test_forked_child_opens_handles_of_its_own(loom: Path) -> None:
    """A child forked while another thread holds the manager's locks neither deadlocks
    nor reads through its parent's handle."""
    expected = _matrix(loom)
    handle = CachedFile(loom)
    held, done = threading.Event(), threading.Event()

    def hold_locks() -> None:
        with _handles._LOCK, _handles._OPEN._lock:
            held.set()
            done.wait(30)

    with handle.acquire() as parent_file:
        holder = threading.Thread(target=hold_locks)
        holder.start()
        assert held.wait(30)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            signal.alarm(20)  # a deadlock ends the child with SIGALRM
            try:
                with handle.acquire() as f:
                    ok = f is not parent_file and np.array_equal(f["matrix"][()], expected)
            except BaseException:
                ok = False
            os._exit(0 if ok else 1)
        done.set()
        holder.join()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert parent_file.id.valid
    with handle.acquire() as f:
        assert f is parent_file  # the parent's handle, untouched by the child
        np.testing.assert_array_equal(f["matrix"][()], expected)
    handle.close()


@needs_fork
def test_forked_child_forgets_its_parents_writer(loom: Path) -> None:
    with open_for_writing(str(loom)) as writer:
        writer["matrix"][0, 0] = 7
        reader = shared_reader(str(loom))  # this process reads the writer's view
        assert reader is not None and reader["matrix"][0, 0] == 7
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os._exit(0 if shared_reader(str(loom)) is None else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert _matrix(loom)[0, 0] == 7


def test_each_opening_of_a_read_handle_has_a_number_of_its_own(
    loom: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a reader checked through one opening holds until the handle is closed,
    released or evicted: a new number then; a writer's view has none."""
    monkeypatch.setattr(_handles._OPEN, "maxsize", 1)
    handle, other = CachedFile(loom), CachedFile(loom)
    with handle.acquire_opening() as (f, first):
        assert isinstance(first, int)
    with handle.acquire_opening() as (g, again):
        assert (g, again) == (f, first)  # the same opening
    numbers = [first]

    def evict() -> None:
        with other.acquire():  # one handle kept: handle's goes
            pass

    for renew in (handle.close, lambda: release_handles(str(loom)), evict):
        renew()
        with handle.acquire_opening() as (g, number):
            assert g is not f and number not in numbers
        numbers.append(number)
        f = g
    release_handles(str(loom))
    with open_for_writing(str(loom)), handle.acquire_opening() as (view, number):
        assert view.mode == "r+" and number is None  # the writer's view: no number
    with handle.acquire_opening() as (_, number):
        assert number not in (None, *numbers)
    handle.close()
    other.close()

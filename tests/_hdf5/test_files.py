"""One opener with one locking setting, loomx's own registry of read handles, structured
errors."""

from __future__ import annotations

import io
import pickle
import shutil

import h5py
import numpy as np
import pytest
from conftest import poisson_loom

import loomx
from loomx._hdf5 import files as _files
from loomx._read.store import LoomStore
from loomx.errors import (
    LoomFileError,
    LoomFileNotFoundError,
    LoomFormatError,
    LoomInvalidNameError,
    LoomWriteError,
    LoomxError,
)
from loomx.testing import write_loom_h5py

N, M = 40, 70


@pytest.fixture
def loom(tmp_path):
    return poisson_loom(tmp_path / "f.loom", N, M)


@pytest.fixture
def opens(monkeypatch):
    """Every h5py.File opened while the test runs, with its locking argument."""
    seen: list[tuple[str, str, object]] = []
    original = h5py.File.__init__

    def recording(self, name, mode="r", *args, **kwargs):
        # File(id) opens nothing; a file object is loomx's rollback layer, which locks
        # (or not) as ``locking`` says itself
        if not isinstance(name, h5py.h5f.FileID | h5py.h5g.GroupID | io.IOBase):
            seen.append((str(name), mode, kwargs.get("locking", "default")))
        original(self, name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py.File, "__init__", recording)
    return seen


def test_locking_false_round_trip(loom, tmp_path, opens):
    """On filesystems without locking every open, read or write, carries locking=False."""
    ds = loomx.open_loom(loom, locking=False)
    ds = ds.assign_coords(n_counts=ds["matrix"].sum("row"))
    ds["norm"] = np.log1p(ds["matrix"])
    loomx.to_loom(ds, loom, mode="a")  # the default: what ds was opened with
    more = loomx.open_loom(loom, locking=False)
    loomx.append(loom, more)
    out = tmp_path / "combined.loom"
    loomx.combine([loom, loom], out, locking=False)
    with loomx.open_loom(loom, locking=False) as now:  # `more` is from before the append
        loomx.to_loom(now, tmp_path / "copy.loom")
    assert loomx.recover(loom, locking=False) == 0
    assert opens and all(locking is False for _, _, locking in opens), opens
    with h5py.File(out, "r", locking=False) as f:
        assert f["matrix"].shape == (N, 4 * M)
        assert "norm" in f["layers"] and "n_counts" in f["col_attrs"]
    ds.close()
    more.close()


def test_write_back_without_locking_into_the_open_dataset(loom):
    """The bug this fixes: open_loom(locking=False) then to_loom(mode='a') failed with
    HDF5's 'file locking flag values don't match'."""
    ds = loomx.open_loom(loom, locking=False)
    ds["matrix"].sum().compute()  # a handle is open
    loomx.to_loom(ds.assign_coords(Seen=("col", np.ones(M, np.uint8))), loom, mode="a")
    with h5py.File(loom, "r", locking=False) as f:
        np.testing.assert_array_equal(f["col_attrs/Seen"][()], np.ones(M))
    assert ds["matrix"].sum().compute() > 0  # the released handle reopens


def test_mixed_locking_in_one_process_is_a_clear_error(loom):
    ds = loomx.open_loom(loom, locking=False)
    ds["matrix"].sum().compute()
    with pytest.raises(LoomFileError, match="another locking setting") as info:
        loomx.to_loom(ds.assign_coords(Seen=("col", np.ones(M))), loom, mode="a", locking=True)
    assert info.value.path == str(loom)


def test_registry_releases_handles_only_when_no_read_is_using_them(loom):
    store = LoomStore(loom)
    with store.open() as f:
        assert f.id.valid
        with pytest.raises(LoomWriteError, match="in progress"):
            _files.release_handles(str(loom))
    assert _files.release_handles(str(loom)) == 1
    assert _files.release_handles(str(loom)) == 0
    with store.open() as f:  # reopened on the next use
        assert f["matrix"].shape == (N, M)
    clone = pickle.loads(pickle.dumps(store))  # the recipe, not the handle
    with clone.open() as f:
        assert f["matrix"].shape == (N, M)
    store.close()
    clone.close()
    assert _files.release_handles(str(loom)) == 0


def test_close_during_a_read_waits_for_it(loom):
    store = LoomStore(loom)
    with store.open() as f:
        store.close()
        assert f.id.valid  # still usable by the read that holds it
        assert f["matrix"][0, 0] >= 0
    assert not f.id.valid


def test_errors_carry_file_and_hdf5_path(loom, tmp_path):
    missing = tmp_path / "missing.loom"
    with pytest.raises(FileNotFoundError) as info:
        loomx.open_loom(missing)
    assert isinstance(info.value, LoomFileNotFoundError)
    assert info.value.path == str(missing) and info.value.h5path is None
    with h5py.File(loom, "r+") as f:
        f["col_attrs"].create_dataset("Short", data=np.zeros(3))
    with pytest.raises(LoomFormatError) as info:
        loomx.open_loom(loom)
    assert info.value.path == str(loom) and info.value.h5path == "/col_attrs/Short"
    assert str(info.value).startswith(f"{str(loom)!r}, /col_attrs/Short: ")
    copy = pickle.loads(pickle.dumps(info.value))  # as it travels from a worker
    assert (copy.path, copy.h5path, str(copy)) == (
        info.value.path,
        info.value.h5path,
        str(info.value),
    )


def test_an_invalid_name_is_a_value_error(loom, tmp_path):
    ds = loomx.open_loom(loom).rename({"Gene": "a/b"})
    with pytest.raises(ValueError, match="without '/'") as info:
        loomx.to_loom(ds, tmp_path / "out.loom")
    assert isinstance(info.value, LoomInvalidNameError) and not isinstance(info.value, KeyError)
    assert info.value.h5path == "/row_attrs/a/b"


def test_every_loomx_error_has_path_attributes():
    for cls in (LoomxError, LoomFormatError, LoomFileError, LoomWriteError):
        err = cls("message")
        assert err.path is None and err.h5path is None and str(err) == "message"


def test_not_hdf5_and_directory(tmp_path):
    bad = tmp_path / "bad.loom"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(LoomFileError, match="not an HDF5 file"):
        loomx.open_loom(bad)
    folder = tmp_path / "dir.loom"
    folder.mkdir()
    with pytest.raises(LoomFileError, match="a directory") as info:
        loomx.open_loom(folder)
    assert not isinstance(info.value, FileNotFoundError)
    shutil.rmtree(folder)


def test_append_defaults_to_the_locking_of_datasets_open_on_the_target(loom, tmp_path):
    other = tmp_path / "other.loom"
    other.write_bytes(loom.read_bytes())
    ds = loomx.open_loom(loom, locking=False)
    ds["matrix"].sum().compute()  # open without locking
    more = loomx.open_loom(other)  # default locking
    loomx.append(loom, more)
    with h5py.File(loom, "r", locking=False) as f:
        assert f["matrix"].shape == (N, 2 * M)
    ds.close()
    more.close()


def test_read_region_carries_the_locking_setting(loom):
    from conftest import read_region

    ds = loomx.open_loom(loom, locking=False)
    ds["matrix"].sum().compute()
    region = read_region(loom, "/matrix", (slice(0, 5), slice(0, 9)), locking=False)
    with h5py.File(loom, "r", locking=False) as f:
        np.testing.assert_array_equal(region, f["matrix"][:5, :9])
    ds.close()


def test_out_of_range_graph_error_names_file_and_path(tmp_path):
    path = tmp_path / "g.loom"
    write_loom_h5py(
        path,
        {"": np.zeros((N, M), np.float32)},
        col_graphs={"KNN": (np.array([0, M + 5]), np.array([1, 2]), np.ones(2))},
    )
    ds = loomx.open_loom(path)
    with pytest.raises(LoomFormatError, match="out of range") as info:
        ds.loom.col_graphs["KNN"]
    assert info.value.path == str(path) and info.value.h5path == "/col_graphs/KNN/a"

"""The lazy backend arrays: a layer's reads are checked once per opening of the file's
handle (not per block) to find the objects the Dataset was opened with, and still refuse a
file changed between two reads."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import poisson_loom

import loomx
from loomx._hdf5 import handles as _handles
from loomx._hdf5.files import open_for_writing, release_handles
from loomx._read.lazy_arrays import LoomBackendArray, unchanged_source, whole_backend
from loomx._read.store import LoomStore
from loomx.errors import LoomFileError

N, M = 40, 70
BLOCKS = {"row": 16, "col": 16}  # 3 x 5 = 15 blocks


@pytest.fixture
def loom(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A small file in (16, 16) chunks, and its matrix as h5py reads it."""
    path = poisson_loom(tmp_path / "f.loom", N, M)
    with h5py.File(path, "r") as f:
        return path, f["matrix"][()]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of the unchanged-checks and of the handle pins of layer reads."""
    counts = {"checks": 0, "pins": 0}
    check, pin = LoomStore.check_unchanged, _handles.pinned_opening

    def counting_check(self, *args):
        counts["checks"] += 1
        return check(self, *args)

    def counting_pin(*args):
        counts["pins"] += 1
        return pin(*args)

    monkeypatch.setattr(LoomStore, "check_unchanged", counting_check)
    monkeypatch.setattr(_handles, "pinned_opening", counting_pin)  # every pin, any caller
    return counts


def test_a_full_pass_checks_once_per_opening_of_the_handle(loom, counted):
    loom, values = loom
    expected = values.sum(axis=0)
    ds = loomx.open_loom(loom, chunks=BLOCKS)
    blocks = ds["matrix"].data.npartitions
    assert blocks == 15
    counted["pins"] = 0  # the layout's read
    np.testing.assert_allclose(ds["matrix"].sum("row").values, expected)
    assert counted == {"checks": 1, "pins": blocks}  # one pin per block: check and read
    np.testing.assert_allclose(ds["matrix"].sum("row").values, expected)
    assert counted["checks"] == 1  # the same opening
    release_handles(str(loom))  # as a write in this process does: the next read reopens
    np.testing.assert_allclose(ds["matrix"].sum("row").values, expected)
    assert counted["checks"] == 2
    ds.close()
    np.testing.assert_allclose(ds["matrix"].sum("row").values, expected)  # reopened
    assert counted["checks"] == 3
    ds.close()


def test_a_file_changed_between_reads_is_refused(loom, tmp_path):
    """The first read checks and remembers it; a change made through another handle
    after it (the handle released first, as every writer here does) is still refused."""
    loom, values = loom
    ds = loomx.open_loom(loom, chunks=BLOCKS)
    first = ds["matrix"][:16, :16].values
    np.testing.assert_array_equal(first, values[:16, :16])
    release_handles(str(loom))
    with h5py.File(loom, "r+") as f:  # values changed in place, as a region write does
        f["matrix"][:16, :16] = 7
        f["matrix"].attrs["loomx_generation"] = 1
    with pytest.raises(LoomFileError, match="region write changed its values in place"):
        ds["matrix"][:16, :16].values  # noqa: B018
    ds.close()

    loom = poisson_loom(tmp_path / "g.loom", N, M)
    ds = loomx.open_loom(loom, chunks=BLOCKS)
    ds["matrix"][:16, :16].values  # noqa: B018
    release_handles(str(loom))
    with h5py.File(loom, "r+") as f:  # a new object under the old name
        f.create_dataset("new", data=f["matrix"][()] + 1, chunks=(16, 16))
        del f["matrix"]
        f.move("new", "matrix")
    with pytest.raises(LoomFileError, match="a write replaced this object"):
        ds["matrix"][16:, 16:].values  # noqa: B018
    ds.close()

    ds = loomx.open_loom(loom, chunks=BLOCKS)
    ds["matrix"][:16, :16].values  # noqa: B018
    os.replace(poisson_loom(tmp_path / "other.loom", N, M), loom)
    release_handles(str(loom))
    with pytest.raises(LoomFileError, match="the file was replaced"):
        ds["matrix"][:16, :16].values  # noqa: B018
    ds.close()


def test_a_read_through_a_writers_view_is_checked_every_time(loom, counted):
    """While this process writes the file, reads share the writer's handle: what it
    holds may change between two reads without a new opening."""
    loom, values = loom
    ds = loomx.open_loom(loom, chunks=BLOCKS)
    with open_for_writing(str(loom)) as writer:
        np.testing.assert_array_equal(ds["matrix"].values, values)
        assert counted["checks"] == 15  # every block
        writer["matrix"][:16, :16] = 7
        writer["matrix"].attrs["loomx_generation"] = 1
        with pytest.raises(LoomFileError, match="region write changed its values in place"):
            ds["matrix"][:16, :16].values  # noqa: B018
    ds.close()


def test_picked_columns_and_graphs_are_checked_too(loom, counted):
    loom, values = loom
    ds = loomx.open_loom(loom, chunks=BLOCKS)
    cols = np.array([3, 40, 41, 69])
    np.testing.assert_array_equal(ds["matrix"].isel(col=cols).values, values[:, cols])
    assert counted["checks"] == 1
    release_handles(str(loom))
    with h5py.File(loom, "r+") as f:
        f["matrix"].attrs["loomx_generation"] = 3
    with pytest.raises(LoomFileError, match="changed since it was opened"):
        ds["matrix"].isel(col=cols).values  # noqa: B018
    ds.close()


def test_a_pickled_store_checks_again(loom):
    loom, _ = loom
    ds = loomx.open_loom(loom)
    backend = whole_backend(ds["matrix"].variable._data)
    assert backend is None  # a dask array: its backend is inside the graph
    ds = loomx.open_loom(loom, chunks=None)
    backend = whole_backend(ds["matrix"].variable._data)
    assert isinstance(backend, LoomBackendArray)
    ds["matrix"][:2, :2].values  # noqa: B018
    assert backend.store.checked  # remembered in this process
    clone = pickle.loads(pickle.dumps(backend.store))
    assert clone.checked == {}  # openings are numbered per process
    ds.close()


def test_unchanged_source_names_untouched_layers_only(loom):
    loom, _ = loom
    ds = loomx.open_loom(loom)
    assert unchanged_source(ds["matrix"].variable) == (str(loom), "/matrix")
    assert unchanged_source((ds["matrix"] + 1).variable) is None
    assert unchanged_source(xr.Variable(("row",), np.arange(N))) is None
    ds.close()

"""Untrusted files read in a child process first (loomx._hdf5.probe, open_loom's
``untrusted=True``, the CLI's default for validate, info and convert): a file that crashes
or hangs HDF5 gives a loomx error naming the object, and the calling process survives."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from conftest import DATA

import loomx
from loomx._hdf5.probe import probe_file
from loomx.errors import LoomFileError, LoomFileNotFoundError


@pytest.mark.parametrize("name", ["loompy_test.loom", "LoomExperiment_L1_DRG_20_example.loom"])
def test_valid_files_pass_and_open(tmp_path, name):
    path = shutil.copy(DATA / name, tmp_path / name)
    assert probe_file(path) > 0
    with loomx.open_loom(path, untrusted=True) as ds, loomx.open_loom(path) as plain:
        assert ds.sizes == plain.sizes


def test_a_file_that_crashes_hdf5_names_the_object(crashing):
    with pytest.raises(LoomFileError, match="crashed the process") as err:
        probe_file(crashing)
    assert err.value.path == str(crashing) and err.value.h5path == "/row_graphs/coexpr"
    with pytest.raises(LoomFileError, match="untrusted input"):
        loomx.open_loom(crashing, untrusted=True)


def test_time_and_memory_limits(tmp_path):
    path = shutil.copy(DATA / "loompy_test.loom", tmp_path / "x.loom")
    with pytest.raises(LoomFileError, match="did not finish within"):
        probe_file(path, timeout=0.01)
    with pytest.raises(LoomFileError, match="untrusted input"):
        probe_file(path, memory=32 << 20)  # too little to start the child's Python


def test_errors_inside_hdf5_name_the_object(tmp_path):
    path = tmp_path / "bad.loom"
    with h5py.File(path, "w") as f:
        f["matrix"] = np.zeros((2, 2))
        f.create_dataset("row_attrs/Gene", data=[b"\xff\xfe"], dtype=h5py.string_dtype())
    with pytest.raises(LoomFileError, match="UnicodeDecodeError") as err:
        probe_file(path)
    assert err.value.h5path == "/row_attrs/Gene"
    with pytest.raises(LoomFileNotFoundError):
        probe_file(tmp_path / "missing.loom")


def test_cycles_of_hard_links_end(tmp_path):
    path = tmp_path / "cycle.h5"
    with h5py.File(path, "w") as f:
        f.create_group("a/b")
        f["a/b/up"] = f["a"]  # a hard link back to the parent
        f["a/soft"] = h5py.SoftLink("/nowhere")
    assert probe_file(path) > 0

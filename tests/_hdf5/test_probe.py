"""Untrusted files read in a child process first (loomx._hdf5.probe, open_loom's
``untrusted=True``, the CLI's default for validate, info and convert): a file that crashes
or hangs HDF5 gives a loomx error naming the object, and the calling process survives."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import DATA

import loomx
from loomx._hdf5.probe import probe_file
from loomx.errors import LoomFileError, LoomFileNotFoundError
from loomx.testing.fuzz import mutate

HANG_SEED = 81162
"""A mutation of the LZF example on which HDF5 2.0 loops forever (a damaged global heap)."""


@pytest.fixture(scope="module")
def hanging(crashing) -> Path:
    source = crashing.parent / "lzf.loom"  # the crashing file's source (conftest)
    path = crashing.parent / "hang.loom"
    path.write_bytes(mutate(source.read_bytes(), random.Random(HANG_SEED)))
    return path


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


def test_a_file_that_hangs_hdf5_is_stopped_and_names_the_object(hanging):
    with pytest.raises(LoomFileError, match="did not finish within 2 s") as err:
        probe_file(hanging, timeout=2)
    assert err.value.path == str(hanging) and err.value.h5path.startswith("/")
    assert probe_file(DATA / "loompy_test.loom") > 0  # the server goes on after a kill


def test_the_memory_limit_stops_a_walk_that_needs_more(tmp_path):
    path = tmp_path / "big.loom"
    with h5py.File(path, "w") as f:
        f["matrix"] = np.zeros((2, 2))
        names = np.array([f"gene-{i:09d}" * 8 for i in range(200_000)], dtype=object)
        f.create_dataset("row_attrs/Gene", data=names, dtype=h5py.string_dtype())
    assert probe_file(path) > 0  # under the default limit it reads
    with pytest.raises(LoomFileError, match="untrusted input") as err:
        probe_file(path, memory=8 << 20)
    assert err.value.h5path == "/row_attrs/Gene"


def test_crashes_hangs_and_probes_in_a_row_keep_one_server(crashing, hanging):
    from loomx._hdf5 import probe

    for bad in (crashing, hanging, crashing):
        with pytest.raises(LoomFileError):
            probe_file(bad, timeout=2)
    server = probe._SERVER.proc
    assert probe_file(DATA / "SCopeLoomR_example.loom") > 0
    assert probe._SERVER.proc is server and server.poll() is None


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

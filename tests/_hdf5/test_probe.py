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
from loomx._hdf5.probe import is_hdf5, probe_file
from loomx.cli import main
from loomx.errors import LoomFileError, LoomFileNotFoundError
from loomx.testing.fuzz import mutate
from loomx.testing.hostile import small_loom

CRASH_SEED = 81627
"""A mutation of the LZF file that segfaults HDF5 2.0 while it lists a graph group's links."""


@pytest.fixture(scope="module")
def crashing(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("probe")
    source = small_loom(str(folder / "lzf.loom"), compression="lzf", compression_opts=None)
    path = folder / "crash.loom"
    path.write_bytes(mutate(Path(source).read_bytes(), random.Random(CRASH_SEED)))
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


def test_the_cli_probes_by_default(crashing, tmp_path, capsys):
    for command in (["validate"], ["info"], ["convert"]):
        args = [*command, str(crashing)] + (
            [str(tmp_path / "o.loom")] if command == ["convert"] else []
        )
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 1
        assert "crashed the process" in capsys.readouterr().err
    good = shutil.copy(DATA / "loompy_test.loom", tmp_path / "good.loom")
    assert main(["validate", "--trusted", str(good)]) == 0
    assert main(["info", str(good)]) == 0
    assert is_hdf5(good) and not is_hdf5(tmp_path) and not is_hdf5(DATA / "SOURCES.md")

from __future__ import annotations

import json

import h5py
import numpy as np
from conftest import run_cli

import loomx
from loomx._hdf5.filesystem import TEMPORARY_TAG
from loomx.cli.summary import describe_file
from loomx.testing.hostile import DEAD_PID, small_loom, stage_commit

TAG = f"{TEMPORARY_TAG}{DEAD_PID}-0badf00d-"


def _interrupted_commit(path: str) -> None:
    """A commit recorded but not carried out: a new layer, a replaced layer (stored
    differently), a replaced row attribute and a deleted column attribute."""
    stage_commit(
        path,
        [
            ("/layers", TAG + "unspliced", "unspliced"),
            ("/layers", TAG + "spliced", "spliced"),
            ("/row_attrs", TAG + "Score", "Score"),
            ("/col_attrs", "", "X"),
        ],
        objects={
            f"/layers/{TAG}unspliced": np.arange(240, dtype=np.int32).reshape(12, 20),
            f"/row_attrs/{TAG}Score": np.arange(12.0),
        },
    )
    with h5py.File(path, "r+") as f:  # the replacement is contiguous, the original chunked
        f.create_dataset(f"/layers/{TAG}spliced", data=np.ones((12, 20), np.int16))


def test_describe_a_file_with_a_pending_commit_as_open_loom_reads_it(tmp_path):
    path = small_loom(str(tmp_path / "pending.loom"))
    _interrupted_commit(path)
    info = describe_file(path)
    with loomx.open_loom(path, chunks=None) as ds:
        layers = {"" if n == "matrix" else n: ds[n] for n in ds.data_vars}
        assert set(info["layers"]) == set(layers) == {"", "spliced", "unspliced"}
        for name, var in layers.items():
            assert info["layers"][name]["dtype"] == str(var.dtype)
            assert info["layers"][name]["shape"] == list(var.shape)
        assert set(info["col_attrs"]) == {"CellID"}  # X is deleted
        assert set(info["row_attrs"]) == {"Gene", "Score"}
        assert info["row_attrs"]["Score"]["dtype"] == str(ds["Score"].dtype)
    with h5py.File(path, "r") as f:  # storage facts of the staged objects, not the old ones
        for name in ("spliced", "unspliced"):
            staged = f[f"/layers/{TAG}{name}"]
            layer = info["layers"][name]
            assert layer["path"] == f"/layers/{name}"
            assert layer["chunks"] == (list(staged.chunks) if staged.chunks else None)
            assert layer["compression"] == staged.compression
            assert layer["bytes_on_disk"] == staged.id.get_storage_size()
            assert layer["bytes_raw"] == staged.size * staged.dtype.itemsize
        assert info["layers"][""]["bytes_on_disk"] == f["matrix"].id.get_storage_size()


def test_info_on_a_file_with_a_pending_commit(tmp_path):
    path = small_loom(str(tmp_path / "pending.loom"))
    _interrupted_commit(path)
    done = run_cli("info", path)
    assert done.returncode == 0, done.stderr
    assert "layer unspliced: int32" in done.stdout and "layer spliced: int16" in done.stdout
    done = run_cli("info", path, "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    with h5py.File(path, "r") as f:
        staged = f[f"/layers/{TAG}unspliced"]
        assert info["layers"]["unspliced"]["bytes_on_disk"] == staged.id.get_storage_size()

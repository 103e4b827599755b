"""``loomx validate``: every problem with its HDF5 path, compared with loompy's LoomValidator."""

from __future__ import annotations

import subprocess
import sys
import warnings

import h5py
import numpy as np
import pytest

import loomx
from loomx._read.validate import validate_loom
from loomx.testing import make_counts_loom, make_example_loom


def loompy_errors(path) -> list[str]:
    loompy = pytest.importorskip("loompy")
    validator = loompy.LoomValidator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        validator.validate(str(path))
    return [e for e in validator.errors if not e.startswith("For help")]


@pytest.fixture
def good(tmp_path):
    return make_counts_loom(tmp_path / "good.loom", 60, 40, seed=2)


def test_valid_files_agree_with_loompy(good, tmp_path, loompy_file):
    written = tmp_path / "written.loom"
    loomx.to_loom(loomx.open_loom(good), written)
    for path in (good, written, loompy_file["path"]):
        assert validate_loom(path) == []
        assert loompy_errors(path) == []
    assert validate_loom(good, conventions=True) == []


def damage(path, change):
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def replace(f, h5path, data, **kwargs):
    del f[h5path]
    f.create_dataset(h5path, data=data, **kwargs)


BREAKS = {
    # name: (change, HDF5 path reported, loompy reports it too)
    "layer_shape": (
        lambda f: f.create_dataset("layers/small", data=np.zeros((3, 3))),
        "/layers/small",
        True,
    ),
    "layer_strings": (
        lambda f: f.create_dataset("layers/text", data=np.full((60, 40), b"x")),
        "/layers/text",
        True,
    ),
    "attr_length": (
        lambda f: f.create_dataset("row_attrs/Short", data=np.arange(5)),
        "/row_attrs/Short",
        True,
    ),
    "graph_lengths": (
        lambda f: [
            f.create_dataset(f"col_graphs/G/{p}", data=np.arange(n, dtype=d))
            for p, n, d in (("a", 3, "i8"), ("b", 2, "i8"), ("w", 3, "f8"))
        ],
        "/col_graphs/G",
        True,
    ),
    "graph_vertex_out_of_range": (
        lambda f: [
            f.create_dataset(f"col_graphs/G/{p}", data=np.array(v, dtype=d))
            for p, v, d in (("a", [0, 1], "i8"), ("b", [1, 40], "i8"), ("w", [1, 1], "f8"))
        ],
        "/col_graphs/G/b",
        False,
    ),
    "graph_negative_vertex": (
        lambda f: [
            f.create_dataset(f"row_graphs/G/{p}", data=np.array(v, dtype=d))
            for p, v, d in (("a", [-1, 1], "i8"), ("b", [1, 2], "i8"), ("w", [1, 1], "f8"))
        ],
        "/row_graphs/G/a",
        False,
    ),
    "graph_float_vertices": (
        lambda f: [
            f.create_dataset(f"col_graphs/G/{p}", data=np.array(v, dtype=d))
            for p, v, d in (("a", [0, 1], "f8"), ("b", [1, 2], "i8"), ("w", [1, 1], "f8"))
        ],
        "/col_graphs/G/a",
        True,
    ),
    "missing_group": (lambda f: f.__delitem__("col_attrs"), "/col_attrs", True),
    "missing_graph_group": (lambda f: f.__delitem__("row_graphs"), "/row_graphs", False),
    "version_value": (
        lambda f: replace(f, "attrs/LOOM_SPEC_VERSION", "9.9", dtype=h5py.string_dtype()),
        "/attrs/LOOM_SPEC_VERSION",
        False,
    ),
    "compound_attr": (
        lambda f: f.create_dataset(
            "col_attrs/Emb", data=np.zeros(40, dtype=[("_X", "f8"), ("_Y", "f8")])
        ),
        "/col_attrs/Emb",
        True,
    ),
    "fixed_length_strings_in_3": (
        lambda f: f.create_dataset("col_attrs/Name", data=np.array([b"c"] * 40)),
        "/col_attrs/Name",
        False,
    ),
    "matrix_missing": (lambda f: f.__delitem__("matrix"), "/matrix", False),  # loompy crashes
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_each_problem_is_reported_with_its_path(good, name):
    change, h5path, loompy_sees_it = BREAKS[name]
    damage(good, change)
    problems = validate_loom(good)
    assert [p.h5path for p in problems] == [h5path], problems
    assert all(p.level == "spec" for p in problems)
    if loompy_sees_it:
        assert loompy_errors(good), "loompy's validator flags this too"


def test_every_problem_is_listed(good):
    for name in ("layer_shape", "attr_length", "graph_vertex_out_of_range", "compound_attr"):
        damage(good, BREAKS[name][0])
    found = {p.h5path for p in validate_loom(good)}
    assert found == {"/layers/small", "/row_attrs/Short", "/col_graphs/G/b", "/col_attrs/Emb"}


CONVENTION_BREAKS = {
    "duplicate_cell_ids": (
        lambda f: replace(
            f, "col_attrs/CellID", np.array(["a"] * 40, dtype=object), dtype=h5py.string_dtype()
        ),
        "/col_attrs/CellID",
    ),
    "cluster_ids_with_gap": (
        lambda f: replace(f, "col_attrs/ClusterID", np.repeat([0, 2], 20)),
        "/col_attrs/ClusterID",
    ),
    "cluster_ids_float": (
        lambda f: replace(f, "col_attrs/ClusterID", np.zeros(40)),
        "/col_attrs/ClusterID",
    ),
    "valid_not_binary": (
        lambda f: f.create_dataset("col_attrs/Valid", data=np.arange(40) % 3),
        "/col_attrs/Valid",
    ),
    "selected_float": (
        lambda f: f.create_dataset("row_attrs/Selected", data=np.ones(60)),
        "/row_attrs/Selected",
    ),
    "embedding_1d": (
        lambda f: f.create_dataset("col_attrs/X_umap", data=np.zeros(40)),
        "/col_attrs/X_umap",
    ),
    "accession_missing": (lambda f: f.__delitem__("row_attrs/Accession"), "/row_attrs/Accession"),
    "accession_numbers": (
        lambda f: replace(f, "row_attrs/Accession", np.arange(60)),
        "/row_attrs/Accession",
    ),
}


@pytest.mark.parametrize("name", list(CONVENTION_BREAKS))
def test_conventions(good, name):
    change, h5path = CONVENTION_BREAKS[name]
    damage(good, change)
    assert validate_loom(good) == []  # the spec allows it
    problems = validate_loom(good, conventions=True)
    assert [(p.h5path, p.level) for p in problems] == [(h5path, "conventions")], problems


def run_cli(*args):
    cmd = [sys.executable, "-m", "loomx.cli", "validate", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_cli_exit_codes_and_output(good, tmp_path):
    done = run_cli(good, "--conventions")
    assert done.returncode == 0 and "valid (spec and conventions)" in done.stdout
    example = make_example_loom(tmp_path / "ex.loom", 20, 30)
    damage(example, BREAKS["graph_vertex_out_of_range"][0])
    done = run_cli(example)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "/col_graphs/G/b: vertex 40 out of range; expected 0 <= b < 30"
    ]
    assert "1 problem(s)" in done.stderr
    (tmp_path / "text.loom").write_text("not hdf5")
    done = run_cli(tmp_path / "text.loom")
    assert done.returncode == 1 and done.stderr.startswith("loomx: ")
    assert "not an HDF5 file" in done.stderr and "Traceback" not in done.stderr

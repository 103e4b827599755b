from __future__ import annotations

from conftest import run_cli

from loomx.cli import main


def test_example_then_info(tmp_path, capsys):
    path = tmp_path / "ex.loom"
    assert main(["example", str(path), "--rows", "80", "--cols", "90"]) == 0
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "80 rows x 90 columns" in out
    assert "layer spliced: uint16" in out
    assert "col_graphs: KNN" in out
    assert "CellID" in out and "col_attrs (5)" in out


def test_console_script_runs(tmp_path):
    path = tmp_path / "ex.loom"
    assert run_cli("example", path, "--rows", "10", "--cols", "12").returncode == 0
    done = run_cli("info", path)
    assert done.returncode == 0 and "10 rows x 12 columns" in done.stdout


def test_info_lists_qualified_attributes_and_reports_errors(tmp_path, capsys):
    from conftest import DATA

    assert main(["info", str(DATA / "LoomExperiment_L1_DRG_20_example.loom")]) == 0
    out = capsys.readouterr().out
    assert "row_attrs (8)" in out and "row_attrs:X_LogCV" in out and "col_attrs:X_LogCV" in out
    assert main(["info", str(tmp_path)]) == 1
    assert "a directory" in capsys.readouterr().err


def test_every_subcommand_has_help():
    from loomx.cli import SUBCOMMANDS

    expected = {"qc", "info", "validate", "convert", "aggregate", "example", "recover"}
    assert expected | {"delete", "repack"} <= set(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        done = run_cli(name, "--help")
        assert done.returncode == 0 and done.stdout.startswith(f"usage: loomx {name}")


def test_missing_file_is_one_line_for_every_subcommand(tmp_path):
    missing = tmp_path / "missing.loom"
    for args in (
        ("qc", missing),
        ("info", missing),
        ("info", missing, "--json"),
        ("validate", missing),
        ("convert", missing, tmp_path / "o.h5ad"),
        ("aggregate", missing, tmp_path / "o.loom"),
        ("recover", missing),
        ("delete", missing, "spliced"),
        ("repack", missing),
    ):
        done = run_cli(*args)
        assert done.returncode == 1, args
        assert done.stderr.startswith("loomx: ") and "no such file" in done.stderr, args
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_info_json_against_h5py(tmp_path):
    import json

    import h5py

    path = tmp_path / "ex.loom"
    assert main(["example", str(path), "--rows", "70", "--cols", "90"]) == 0
    done = run_cli("info", path, "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    with h5py.File(path, "r") as f:
        assert info["shape"] == list(f["matrix"].shape)
        assert info["spec_version"] == f["attrs/LOOM_SPEC_VERSION"].asstr()[()]
        for name, layer in info["layers"].items():
            dataset = f["matrix"] if name == "" else f[f"layers/{name}"]
            assert layer["dtype"] == str(dataset.dtype)
            assert layer["chunks"] == list(dataset.chunks)
            assert layer["compression"] == dataset.compression
            assert layer["bytes_on_disk"] == dataset.id.get_storage_size()
        assert set(info["col_attrs"]) == set(f["col_attrs"])
        assert info["col_attrs"]["X_tsne"]["shape"] == [90, 2]
        assert info["col_graphs"]["KNN"]["edges"] == len(f["col_graphs/KNN/a"])
        assert info["row_graphs"]["coexpr"]["edges"] == len(f["row_graphs/coexpr/a"])
    assert info["globals"]["Weights"] == [0.0, 1.0, 2.0]


def test_delete_then_repack_through_the_console_script(tmp_path):
    import h5py

    from loomx.testing import assert_loom_identical

    path, expected = tmp_path / "ex.loom", tmp_path / "expected.loom"
    assert run_cli("example", path, "--rows", "300", "--cols", "400").returncode == 0
    expected.write_bytes(path.read_bytes())
    with h5py.File(expected, "r+") as f:
        del f["layers/spliced"], f["col_graphs/KNN"]
    done = run_cli("delete", path, "spliced", "col_graphs:KNN")
    assert done.returncode == 0, done.stderr
    assert_loom_identical(path, expected)
    size = path.stat().st_size
    done = run_cli("repack", path, tmp_path / "small.loom")
    assert done.returncode == 0 and "MB ->" in done.stdout, done.stderr
    assert_loom_identical(tmp_path / "small.loom", expected)
    assert (tmp_path / "small.loom").stat().st_size < size
    done = run_cli("repack", path)  # in place
    assert done.returncode == 0 and path.stat().st_size < size
    assert_loom_identical(path, expected)
    done = run_cli("delete", path, "matrix")
    assert done.returncode == 1 and done.stderr.startswith("loomx: ")

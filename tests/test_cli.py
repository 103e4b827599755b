from __future__ import annotations

import subprocess
import sys

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
    cmd = [sys.executable, "-m", "loomx.cli", "example", str(path), "--rows", "10", "--cols", "12"]
    subprocess.run(cmd, check=True)
    done = subprocess.run(
        [sys.executable, "-m", "loomx.cli", "info", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "10 rows x 12 columns" in done.stdout


def test_info_lists_qualified_attributes_and_reports_errors(tmp_path, capsys):
    from conftest import DATA

    assert main(["info", str(DATA / "LoomExperiment_L1_DRG_20_example.loom")]) == 0
    out = capsys.readouterr().out
    assert "row_attrs (8)" in out and "row_attrs:X_LogCV" in out and "col_attrs:X_LogCV" in out
    assert main(["info", str(tmp_path)]) == 1
    assert "a directory" in capsys.readouterr().err

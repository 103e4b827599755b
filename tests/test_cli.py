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
    assert "CellID" in out


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

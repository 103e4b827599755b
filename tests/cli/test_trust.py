"""Untrusted input files (loomx.cli.trust): validate, info and convert read their input in a
child process first, unless --trusted; a file that crashes HDF5 ends the command with one
line naming the object, exit status 1, and the command's process survives."""

from __future__ import annotations

import shutil

from conftest import DATA, run_cli

from loomx._hdf5.probe import is_hdf5
from loomx.cli import main


def test_the_cli_probes_by_default(crashing, tmp_path, capsys):
    for command in (["validate"], ["info"], ["convert"]):
        args = [*command, str(crashing)] + (
            [str(tmp_path / "o.loom")] if command == ["convert"] else []
        )
        assert main(args) == 1
        assert "crashed the process" in capsys.readouterr().err
    good = shutil.copy(DATA / "loompy_test.loom", tmp_path / "good.loom")
    assert main(["validate", "--trusted", str(good)]) == 0
    assert main(["info", str(good)]) == 0
    assert is_hdf5(good) and not is_hdf5(tmp_path) and not is_hdf5(DATA / "SOURCES.md")


def test_a_crashing_file_through_the_installed_command(crashing):
    done = run_cli("info", crashing)
    assert done.returncode == 1 and "crashed the process" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = run_cli("info", "--trusted", DATA / "loompy_test.loom")
    assert done.returncode == 0, done.stderr

"""loomx.cli.warnings: the command line prints each distinct warning once, as one line a
person can read; Python callers keep ordinary warnings."""

from __future__ import annotations

import warnings

import h5py
import pytest
from conftest import DATA, run_cli

import loomx
from loomx.cli.warnings import command_inputs, one_line, warnings_for_people
from loomx.errors import LoomFormatWarning

SCOPE = DATA / "SCopeLoomR_example.loom"


def compound_names() -> list[str]:
    with h5py.File(SCOPE, "r") as f:
        return [
            f"/{g}/{n}"
            for g in ("row_attrs", "col_attrs")
            for n, o in f[g].items()
            if o.dtype.names
        ]


@pytest.mark.parametrize("command", [["info"], ["qc", "--output", "OUT"], ["convert", "OUT"]])
def test_cli_prints_each_warning_once_on_one_line(tmp_path, command):
    args = [a if a != "OUT" else tmp_path / "o.loom" for a in command[1:]]
    done = run_cli(command[0], SCOPE, *args)
    lines = done.stderr.splitlines()
    assert lines, done.stderr
    warned = [line for line in lines if line.startswith("loomx: warning: ")]
    assert len(warned) == len(set(warned))  # each distinct warning once
    assert not [line for line in lines if ".py:" in line or line.startswith(" ")]  # no source
    for h5path in compound_names():
        assert sum(line.startswith(f"loomx: warning: {h5path}: ") for line in warned) == 1


def test_one_line_drops_the_one_input_file_and_names_other_kinds():
    text = "'x.loom', /col_attrs/RegulonsAUC: compound\n  dtype"
    assert one_line(text, LoomFormatWarning, ["x.loom"]) == (
        "loomx: warning: /col_attrs/RegulonsAUC: compound dtype"
    )
    assert one_line(text, LoomFormatWarning, ["x.loom", "y.loom"]).startswith(
        "loomx: warning: 'x.loom', /col_attrs"
    )
    assert one_line("soon gone", FutureWarning) == "loomx: warning: FutureWarning: soon gone"


def test_warnings_for_people_dedupes_and_restores(capsys):
    with warnings_for_people(["a.loom"]):
        for _ in range(3):
            warnings.warn("'a.loom', /x: odd", LoomFormatWarning, stacklevel=1)
        warnings.warn("'a.loom', /y: odd", LoomFormatWarning, stacklevel=1)
    assert capsys.readouterr().err.splitlines() == [
        "loomx: warning: /x: odd",
        "loomx: warning: /y: odd",
    ]
    with pytest.warns(LoomFormatWarning, match="SCopeLoomR"):  # Python callers: ordinary
        loomx.open_loom(SCOPE)


def test_command_inputs():
    class Args:
        path, source, paths = "a.loom", None, ["b.loom", "c.loom"]

    assert command_inputs(Args()) == ["a.loom", "b.loom", "c.loom"]

"""The ``loomx`` console script as a person meets it: metrics that say what they are,
checks before the work, one-line errors, argparse conventions and a fast start."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import run_cli


@pytest.fixture
def counts(tmp_path):
    path = tmp_path / "pbmc.loom"
    done = run_cli("example", path, "--counts", "--genes", "200", "--cells", "150")
    assert done.returncode == 0, done.stderr
    return path


def col_attrs(path):
    with h5py.File(path, "r") as f:
        return set(f["col_attrs"])


def qc_parameters(path):
    with h5py.File(path, "r") as f:
        return json.loads(f["attrs/loomx_qc_parameters"].asstr()[()])


# ----------------------------------------------------------------- finding 1: qc metrics


def test_qc_with_a_prefix_no_gene_has_warns_and_stores_no_zeros(counts):
    done = run_cli("qc", counts, "--mito-prefix=ZZZ-")
    assert done.returncode == 0, done.stderr
    assert "'ZZZ-'" in done.stderr and "'Gene'" in done.stderr and "--no-mito" in done.stderr
    assert "no gene in Gene starts with ZZZ-" in done.stdout
    assert "pct_counts_mt" not in col_attrs(counts)
    assert qc_parameters(counts)["mito_genes"] == 0


def test_qc_no_mito_removes_the_metrics_of_an_earlier_run(counts):
    assert run_cli("qc", counts).returncode == 0
    assert {"pct_counts_mt", "total_counts_mt"} <= col_attrs(counts)
    first = qc_parameters(counts)
    assert first["mito_prefixes"] == ["MT-", "mt-"] and first["gene_symbols"] == "Gene"
    assert first["mito_genes"] == 13
    done = run_cli("qc", counts, "--no-mito")
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stdout and "removed metrics of an earlier run" in done.stdout
    left = col_attrs(counts)
    assert not {"pct_counts_mt", "total_counts_mt", "log1p_total_counts_mt"} & left
    assert "total_counts" in left
    assert qc_parameters(counts)["mito_prefixes"] is None
    with h5py.File(counts, "r") as f:  # the totals are this run's
        totals = f["col_attrs/total_counts"][:]
        matrix = f["matrix"][:]
    np.testing.assert_array_equal(totals, matrix.sum(axis=0))


# ----------------------------------------------------------------- finding 2: checks first


def test_qc_refuses_a_file_another_process_holds_open_and_o_still_works(counts, tmp_path):
    from conftest import python_process

    reader = python_process(
        "import h5py, sys, time; f = h5py.File(sys.argv[1], 'r'); print('open', flush=True);"
        " time.sleep(120)",
        str(counts),
    )
    try:
        assert reader.stdout.readline().strip() == "open"
        done = run_cli("qc", counts)
        assert done.returncode == 1
        assert "another process has the file open" in done.stderr and "-o" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert "total_counts" not in col_attrs(counts)
        done = run_cli("qc", counts, "-o", tmp_path / "out.loom")
        assert done.returncode == 0, done.stderr
        assert "total_counts" in col_attrs(tmp_path / "out.loom")
    finally:
        reader.kill()
        reader.wait()


def test_qc_refuses_an_immutable_file(counts):
    import subprocess

    if subprocess.run(["chattr", "+i", str(counts)], capture_output=True).returncode:
        pytest.skip("chattr +i is not allowed here")
    try:
        done = run_cli("qc", counts)
    finally:
        subprocess.run(["chattr", "-i", str(counts)], check=True)
    assert (
        done.returncode == 1 and "immutable (chattr +i)" in done.stderr and "give -o" in done.stderr
    )
    assert "loomx-tmp" not in done.stderr


def test_outputs_into_a_missing_folder_are_refused_first(counts, tmp_path):
    target = tmp_path / "nofolder" / "out.loom"
    for args in (
        ("qc", counts, "-o", target),
        ("aggregate", counts, target),
        ("convert", counts, target),
        ("example", target),
        ("repack", counts, target),
    ):
        done = run_cli(*args)
        assert done.returncode == 1, args
        assert "does not exist" in done.stderr and "nofolder" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_file_urls_are_read_as_local_paths(counts):
    done = run_cli("info", counts.as_uri())
    assert done.returncode == 0, done.stderr
    assert "200 rows x 150 columns" in done.stdout


def test_qc_of_a_url_needs_o_and_works_with_it(counts, tmp_path):
    from loomx.testing.servers import RangeHTTPServer

    with RangeHTTPServer(counts.parent) as server:
        url = server.url(counts.name)
        done = run_cli("qc", url)
        assert done.returncode == 1 and "remote files are read-only" in done.stderr
        assert "give -o" in done.stderr
        out = tmp_path / "local.loom"
        done = run_cli("qc", url, "-o", out, "--no-mito")
        assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["col_attrs/total_counts"][:], f["matrix"][:].sum(0))
    assert "total_counts" not in col_attrs(counts)


# ----------------------------------------------------------------- finding 3: errors


def test_a_closed_pipe_ends_quietly_with_141(counts):
    import os
    import subprocess

    from conftest import LOOMX_SCRIPT

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`head`) is gone before anything is written
    try:
        done = subprocess.run(
            [str(LOOMX_SCRIPT), "info", str(counts)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == ""


@pytest.mark.parametrize("after_start", [0.02, 0.2, 0.5, 1.0])
def test_an_early_ctrl_c_prints_no_traceback(counts, after_start):
    """Ctrl-C while the command loads (numba, dask, ...) or starts computing.  The delay is
    counted from the time the interpreter itself takes to start, measured first (an
    interrupt inside Python's own start-up is Python's to report)."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import LOOMX_SCRIPT

    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    startup = time.perf_counter() - start
    process = subprocess.Popen(
        [str(LOOMX_SCRIPT), "qc", str(counts), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(startup + after_start)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    if process.returncode != 0:  # finished before the signal: nothing to check
        assert process.returncode == 130 and err == "loomx: interrupted\n", err


def test_an_h5ad_given_to_qc_points_to_convert(tmp_path):
    path = tmp_path / "pbmc.h5ad"
    path.write_bytes(b"")
    done = run_cli("qc", path)
    assert done.returncode == 1
    assert f"loomx convert {path} pbmc.loom" in done.stderr


def test_a_missing_optional_package_names_the_extra(tmp_path):
    import os
    import subprocess

    from conftest import LOOMX_SCRIPT

    shim = tmp_path / "shim" / "anndata"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'anndata'\", name='anndata')\n"
    )
    source = tmp_path / "x.h5ad"
    source.write_bytes(b"")
    paths = [str(shim.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run(
        [str(LOOMX_SCRIPT), "convert", str(source), str(tmp_path / "x.loom")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1
    assert (
        "pip install 'loomx[anndata]'" in done.stderr and "ModuleNotFoundError" not in done.stderr
    )


def test_aggregate_by_a_missing_attribute_names_the_file_and_those_there_are(tmp_path):
    path = tmp_path / "ex.loom"
    assert run_cli("example", path, "--rows", "20", "--cols", "30").returncode == 0
    done = run_cli("aggregate", path, "--by", "Cluster", tmp_path / "out.loom")
    assert done.returncode == 1
    assert str(path) in done.stderr and "ClusterID" in done.stderr and "--by" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------- finding 4: conventions


def test_mito_prefix_does_not_swallow_the_file(counts):
    done = run_cli("qc", "--mito-prefix", "mt-", "--mito-prefix", "MT-", counts, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "(13 mitochondrial genes)" in done.stdout
    assert qc_parameters(counts)["mito_prefixes"] == ["mt-", "MT-"]


def test_version_and_python_dash_m(tmp_path):
    import subprocess
    import sys

    import loomx

    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"loomx {loomx.__version__}"
    done = subprocess.run(
        [sys.executable, "-m", "loomx", "example", tmp_path / "x.loom", "--rows", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0 and "wrote" in done.stdout, done.stderr


def test_every_argument_has_help_and_every_command_an_example():
    import argparse

    from loomx.cli import SUBCOMMANDS, build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in SUBCOMMANDS:
        sub = commands.choices[name]
        for action in sub._actions:
            assert action.help, (name, action.dest)
        assert sub.epilog and f"loomx {name}" in sub.epilog, name
        done = run_cli(name, "--help")
        assert done.returncode == 0 and "example:" in done.stdout, name


# ----------------------------------------------------------------- finding 5: fast start


@pytest.mark.parametrize(
    "args", [("--help",), ("qc", "--help"), ("qc",), ("info", "--bogus"), ("--version",)]
)
def test_help_and_argument_errors_load_no_heavy_module(args, tmp_path):
    """The console script's own entry point, in a fresh interpreter: what it imported
    (run outside the repository: ``python -c`` puts the working folder first on the path)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from loomx.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('dask', 'xarray', 'numba', 'h5py', 'pandas') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert "HEAVY []" in done.stderr, done.stderr


def test_import_loomx_is_lazy_and_complete(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, loomx\n"
        "assert not {'dask', 'xarray', 'numba'} & set(sys.modules), sorted(sys.modules)\n"
        "for name in loomx.__all__:\n"
        "    getattr(loomx, name)\n"
        "import xarray\n"
        "assert hasattr(xarray.Dataset, 'loom')\n"
        "assert set(loomx.__all__) <= set(dir(loomx))\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.stdout.strip() == "ok", done.stderr


# ----------------------------------------------------------------- finding 6: progress


def on_a_terminal(*args):
    """Run the console script with stderr on a pseudo-terminal: status, stdout, stderr."""
    import contextlib
    import os
    import pty
    import subprocess

    from conftest import LOOMX_SCRIPT

    master, slave = pty.openpty()
    done = subprocess.run(
        [str(LOOMX_SCRIPT), *map(str, args)], stdout=subprocess.PIPE, stderr=slave, timeout=300
    )
    os.close(slave)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the terminal is drained
        while chunk := os.read(master, 65536):
            shown += chunk
    os.close(master)
    return done.returncode, done.stdout.decode(), shown.decode()


def test_every_long_command_shows_progress_on_stderr_only_on_a_terminal(counts, tmp_path):
    from test_progress import rendered

    runs = [
        ("qc", counts),
        ("convert", counts, tmp_path / "copy.loom"),
        ("aggregate", counts, tmp_path / "groups.loom"),
    ]
    for args in runs:
        status, out, err = on_a_terminal(*args)
        assert status == 0, err
        assert "100%" in err and "tasks" in err and "[#" not in out, args
        bar = [line for line in rendered(err.replace("\r\n", "\n")) if "tasks" in line]
        assert bar and all(line.rstrip().endswith(" s") for line in bar), bar
        status, out, err = on_a_terminal(*args, "--quiet")
        assert status == 0 and err == "", err
        done = run_cli(*args)  # piped: no bar
        assert done.returncode == 0 and done.stderr == "", done.stderr


# ----------------------------------------------------------------- finding 7: loomx info


def test_info_lists_one_attribute_per_line_with_dtype_and_shape(tmp_path):
    path = tmp_path / "wide.loom"
    assert run_cli("example", path, "--rows", "20", "--cols", "30").returncode == 0
    with h5py.File(path, "r+") as f:
        for i in range(33):
            f["col_attrs"].create_dataset(f"metric_number_{i:02d}", data=np.arange(30.0))
        f["attrs"].create_dataset("Description", data="a long description " * 20)
    done = run_cli("info", path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(map(len, lines[1:])) <= 100, max(lines[1:], key=len)  # [0] names the file
    assert "  col_attrs (38):" in lines
    assert sum("metric_number_" in line for line in lines) == 33
    row = next(line for line in lines if "metric_number_07" in line).split()
    assert row == ["metric_number_07", "float64", "30"]
    assert next(line for line in lines if line.split()[:1] == ["X_tsne"]).split()[1:] == [
        "float64",
        "30",
        "x",
        "2",
    ]
    description = next(line for line in lines if "'Description'" in line)
    assert description.endswith("...") and len(description) < 100
    info = json.loads(run_cli("info", path, "--json").stdout)
    assert info["col_attrs"]["metric_number_07"] == {
        "path": "/col_attrs/metric_number_07",
        "variable": "metric_number_07",
        "dtype": "float64",
        "shape": [30],
    }
    assert info["globals"]["Description"] == "a long description " * 20


def _import_fails(interrupt: bool):
    def probe(args):
        import signal

        if not interrupt:
            raise ImportError("no module named 'missing'")
        try:  # what NumPy does with Ctrl-C inside its C-extension import
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            raise ImportError('PyCapsule_Import could not import module "datetime"') from None

    return probe


def test_ctrl_c_inside_an_import_ends_as_an_interrupt(counts, monkeypatch, capsys):
    from loomx.cli import commands, main

    monkeypatch.setattr(commands, "probe_untrusted_inputs", _import_fails(interrupt=True))
    assert main(["info", str(counts)]) == 130
    assert capsys.readouterr().err == "loomx: interrupted\n"


def test_an_import_error_without_ctrl_c_is_an_error(counts, monkeypatch, capsys):
    from loomx.cli import commands, main

    monkeypatch.setattr(commands, "probe_untrusted_inputs", _import_fails(interrupt=False))
    assert main(["info", str(counts)]) == 1
    assert "no module named 'missing'" in capsys.readouterr().err

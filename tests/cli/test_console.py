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

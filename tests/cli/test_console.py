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

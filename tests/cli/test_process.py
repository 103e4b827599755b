"""``loomx process``: the chain from the command line with progress per step and a summary;
killed (SIGKILL) inside a step, the file stays as the last completed step left it (valid,
each step's results present exactly when its record is), and a rerun finishes with the
results of an uninterrupted run, skipping the steps done before."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import loompy
import numpy as np
from conftest import LOOMX_SCRIPT, run_cli

import loomx
from loomx.analysis.pipeline import RECORD_PREFIX, STEPS
from loomx.testing.servers import RangeHTTPServer

FLAGS = ("--n-top-genes", "60", "--n-comps", "10", "--n-neighbors", "10", "-q")
OUTPUTS = {  # what each step writes, as loompy sees it
    "outliers": ("ca", "Valid"),
    "highly_variable_genes": ("ra", "Selected"),
    "pca": ("ca", "X_pca"),
    "leiden": ("ca", "leiden"),  # the generated file has a ClusterID of its own
    "umap": ("ca", "X"),
    "rank_genes_groups": ("ra", "rank_genes_groups_scores"),
}


def state(path) -> tuple[list[str], dict[str, bool]]:
    with loompy.connect(str(path), "r") as lf:
        done = [s for s in STEPS if RECORD_PREFIX + s in lf.attrs]
        present = {s: name in getattr(lf, axis) for s, (axis, name) in OUTPUTS.items()}
    return done, present


def test_process_prints_steps_and_summary(counts_loom, tmp_path) -> None:
    path = tmp_path / "counts.loom"
    out = tmp_path / "out.loom"
    shutil.copy(counts_loom, path)
    done = run_cli("process", path, "--output", out, *FLAGS[:-1])
    assert done.returncode == 0, done.stderr
    assert f"[{len(STEPS)}/{len(STEPS)}] rank_genes_groups: done" in done.stdout
    assert "selected genes    60" in done.stdout
    assert state(path)[0] == []  # --output: the original is left untouched
    assert state(out)[0] == list(STEPS)
    again = run_cli("process", out, *FLAGS[:-1])
    assert again.stdout.count("skipped") == len(STEPS)


def test_sigkill_inside_a_step_leaves_the_last_completed_step(counts_loom, tmp_path) -> None:
    reference = tmp_path / "reference.loom"
    shutil.copy(counts_loom, reference)
    assert run_cli("process", reference, *FLAGS).returncode == 0
    for kill_at in ("pca",):
        path = tmp_path / f"killed-{kill_at}.loom"
        shutil.copy(counts_loom, path)
        proc = subprocess.Popen(
            [str(LOOMX_SCRIPT), "process", str(path), *FLAGS[:-1]],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for line in proc.stdout:
            if line.startswith(f"[{STEPS.index(kill_at) + 1}/") and line.endswith("...\n"):
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=120)
        assert proc.returncode == -signal.SIGKILL
        assert loomx.validate_loom(path) == []
        done, present = state(path)
        assert done == list(STEPS[: len(done)])  # a prefix: the steps completed
        assert STEPS.index(kill_at) <= len(done) <= STEPS.index(kill_at) + 1
        for step, there in present.items():
            assert there == (step in done), step
        rerun = run_cli("process", path, *FLAGS[:-1])
        assert rerun.returncode == 0, rerun.stderr
        assert rerun.stdout.count("skipped") == len(done)
        got, want = loomx.open_loom(path), loomx.open_loom(reference)
        for name in ("Valid", "Selected", "X_pca", "ClusterID", "X", "Y"):
            key = name if name in got.variables else f"col_attrs:{name}"
            np.testing.assert_array_equal(got[key].values, want[key].values, err_msg=name)


def test_remote_file_without_output_is_one_line_before_any_read(counts_loom, tmp_path) -> None:
    shutil.copy(counts_loom, tmp_path / "counts.loom")
    with RangeHTTPServer(tmp_path) as server:
        url = server.url("counts.loom")
        done = run_cli("process", url, *FLAGS, "--processes", "2")
        assert server.requests == 0
    assert done.returncode == 1
    assert done.stderr.startswith(f"loomx: '{url}': remote files are read-only; give --output")
    assert len(done.stderr.strip().splitlines()) == 1

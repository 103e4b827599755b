"""loomx.analysis.pipeline.process_file: every step's results land in the file where
loompy and to_anndata find them (the same values through both), scanpy's Leiden on the
file's X_pca gives the file's clusters, and a rerun skips steps recorded with the same
parameters and redoes the changed one and everything after it."""

from __future__ import annotations

import shutil

import loompy
import numpy as np
import pytest
import scanpy as sc
from conftest import sha256

import loomx
from loomx._hdf5 import remote
from loomx.analysis.pipeline import RECORD_PREFIX, STEPS, process_file
from loomx.errors import LoomFileError
from loomx.testing.servers import RangeHTTPServer

SMALL = {
    "highly_variable_genes": {"n_top_genes": 60},
    "pca": {"n_comps": 10},
    "neighbors": {"n_neighbors": 10},
}


@pytest.fixture(scope="module")
def processed(counts_loom, tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "counts.loom"
    shutil.copy(counts_loom, path)
    calls = []
    summary = process_file(path, params=SMALL, progress=lambda *a: calls.append(a[1:3]))
    return path, summary, calls


def test_every_step_is_written_and_recorded(processed) -> None:
    path, summary, calls = processed
    assert summary["steps"] == dict.fromkeys(STEPS, "done")
    assert [c for c in calls if c[1] == "done"] == [(s, "done") for s in STEPS]
    assert summary["selected_genes"] == 60
    assert 0 < summary["valid_cells"] < summary["cells"]
    with loompy.connect(str(path), "r") as lf:
        valid = lf.ca.Valid.astype(bool)
        assert lf.ra.Selected.sum() == 60
        assert lf.ca.X_pca.shape == (lf.shape[1], 10)
        assert set(lf.col_graphs.keys()) >= {"KNN", "MKNN", "distances", "connectivities"}
        ids = lf.ca.ClusterID
        assert (ids[~valid] == -1).all() and ids[valid].min() == 0
        assert np.isfinite(lf.ca.X[valid]).all() and np.isfinite(lf.ca.Y[valid]).all()
        for step in STEPS:
            assert RECORD_PREFIX + step in lf.attrs
        x_pca = lf.ca.X_pca[valid]
        connectivities = lf.col_graphs.connectivities.tocsr()
    ad = loomx.to_anndata(loomx.open_loom(path))
    np.testing.assert_array_equal(ad.obs["ClusterID"].to_numpy(), ids)
    # scanpy's Leiden on the file's graph gives the file's clusters
    sub = ad[valid].copy()
    sub.obsm["X_pca"] = x_pca
    sub.obsp["connectivities"] = connectivities[valid][:, valid].astype(np.float32)
    sub.uns["neighbors"] = {"connectivities_key": "connectivities", "params": {}}
    sc.tl.leiden(sub, resolution=1.0, random_state=0, flavor="leidenalg", n_iterations=-1)
    np.testing.assert_array_equal(
        sub.obs["leiden"].astype(str), ad.obs["leiden"][valid].astype(str)
    )


def test_rerun_skips_done_steps_and_redoes_changed_ones(processed, tmp_path) -> None:
    path, _, _ = processed
    copy = tmp_path / "copy.loom"
    shutil.copy(path, copy)
    again = process_file(copy, params=SMALL)
    assert again["steps"] == dict.fromkeys(STEPS, "skipped")
    changed = process_file(copy, params={**SMALL, "leiden": {"resolution": 0.3}})
    first = STEPS.index("leiden")
    assert [changed["steps"][s] for s in STEPS[:first]] == ["skipped"] * first
    assert [changed["steps"][s] for s in STEPS[first:]] == ["done"] * (len(STEPS) - first)
    before = loomx.open_loom(path)["ClusterID"].values
    after = loomx.open_loom(copy)["ClusterID"].values
    assert after.max() < before.max()  # fewer clusters at a lower resolution


def test_remote_file_is_read_and_results_go_to_output(
    processed, counts_loom, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(remote, "COPY_BLOCK", 1 << 15)  # a copy of several requests
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(counts_loom, served / "counts.loom")
    digest = sha256(served / "counts.loom")
    out = tmp_path / "out.loom"
    with RangeHTTPServer(served) as server:
        url = server.url("counts.loom")
        with pytest.raises(LoomFileError, match="--output") as err:
            process_file(url, params=SMALL)
        assert url in str(err.value)
        assert server.requests == 0  # refused before anything was read
        summary = process_file(url, params=SMALL, output=out)
    assert summary["file"] == str(out)
    assert summary["steps"] == dict.fromkeys(STEPS, "done")
    assert sha256(served / "counts.loom") == digest
    with loompy.connect(str(processed[0]), "r") as want, loompy.connect(str(out), "r") as got:
        np.testing.assert_array_equal(got[:, :], want[:, :])
        for name in ("Valid", "ClusterID", "X", "Y"):
            np.testing.assert_array_equal(got.ca[name], want.ca[name], err_msg=name)
        np.testing.assert_allclose(got.ca.X_pca, want.ca.X_pca, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(got.ra.Selected, want.ra.Selected)

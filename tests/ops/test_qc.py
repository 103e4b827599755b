"""``loomx qc`` and ``loomx.calculate_qc_metrics`` against scanpy on the same matrix."""

from __future__ import annotations

import os

import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import run_cli

import loomx
from loomx.ops.qc import qc_file
from loomx.testing import make_counts_loom, write_loom_h5py

sc = pytest.importorskip("scanpy")
anndata = pytest.importorskip("anndata")

CELL_METRICS = ["n_genes_by_counts", "total_counts", "pct_counts_mt", "total_counts_mt"]


def scanpy_metrics(matrix: np.ndarray, genes: np.ndarray | None, percent_top=(50, 100, 200, 500)):
    """scanpy's own metrics for a genes x cells matrix (cells are scanpy's observations)."""
    adata = anndata.AnnData(np.ascontiguousarray(matrix.T))
    qc_vars = []
    if genes is not None:
        adata.var["mt"] = np.char.startswith(genes.astype(str), ("MT-")) | np.char.startswith(
            genes.astype(str), "mt-"
        )
        qc_vars = ["mt"]
    top = [n for n in percent_top if n <= matrix.shape[0]]
    obs, var = sc.pp.calculate_qc_metrics(adata, qc_vars=qc_vars, percent_top=top or None)
    return obs, var


def assert_matches_scanpy(cells, genes, obs, var, matrix, rtol=1e-6):
    assert set(cells.data_vars) == set(obs.columns)
    for name in obs.columns:
        np.testing.assert_allclose(cells[name].values, obs[name].values, rtol=rtol, err_msg=name)
    assert set(genes.data_vars) == {*var.columns, "variance_counts"}
    for name in var.columns:
        np.testing.assert_allclose(genes[name].values, var[name].values, rtol=rtol, err_msg=name)
    expected_var = matrix.astype(np.float64).var(axis=1, ddof=1)
    np.testing.assert_allclose(genes["variance_counts"].values, expected_var, rtol=1e-8, atol=1e-9)


def write(path, matrix, genes=None, chunks=(64, 64)):
    row_attrs = {"Gene": genes} if genes is not None else {}
    cells = np.array([f"c{j}" for j in range(matrix.shape[1])], dtype=object)
    write_loom_h5py(path, {"": matrix}, row_attrs, {"CellID": cells}, chunks=chunks)
    return path


def gene_names(n, n_mito=0, lower=False):
    prefix = "mt-" if lower else "MT-"
    return np.array(
        [f"{prefix}{i}" for i in range(n_mito)] + [f"G{i}" for i in range(n_mito, n)], object
    )


CASES = {
    # name: (matrix factory, genes factory)
    "negative_binomial_float32": (None, None),
    "integer_uint16": (
        lambda rng: rng.negative_binomial(2, 0.3, size=(620, 150)).astype(np.uint16),
        lambda n: gene_names(n, 13),
    ),
    "integer_int64_lower_case_mito": (
        lambda rng: rng.poisson(3, size=(300, 90)).astype(np.int64),
        lambda n: gene_names(n, 5, lower=True),
    ),
    "very_sparse_with_empty_cells": (
        lambda rng: np.where(rng.random((700, 120)) < 0.002, rng.poisson(4, (700, 120)), 0).astype(
            np.float32
        ),
        lambda n: gene_names(n, 13),
    ),
    "dense_non_integer_float64": (
        lambda rng: rng.gamma(2.0, 3.0, size=(210, 80)),
        lambda n: gene_names(n, 3),
    ),
    "no_mito_genes": (
        lambda rng: rng.poisson(1, size=(120, 70)).astype(np.float32),
        lambda n: gene_names(n, 0),
    ),
    "no_gene_symbols_few_genes": (
        lambda rng: rng.poisson(2, size=(40, 33)).astype(np.int32),
        lambda n: None,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_metrics_equal_scanpy(tmp_path, case):
    rng = np.random.default_rng(sorted(CASES).index(case))
    path = tmp_path / "f.loom"
    if CASES[case][0] is None:
        make_counts_loom(path, 900, 400, seed=3)
        with h5py.File(path, "r") as f:
            matrix = f["matrix"][:]
        genes = loomx.open_loom(path)["Gene"].values
    else:
        matrix = CASES[case][0](rng)
        genes = CASES[case][1](matrix.shape[0])
        write(path, matrix, genes)
    ds = loomx.open_loom(path, chunks={"row": 128, "col": 64})
    cells, genes_ds = loomx.calculate_qc_metrics(ds)
    obs, var = scanpy_metrics(matrix, genes)
    if case == "very_sparse_with_empty_cells":
        assert (obs["total_counts"] == 0).any()  # NaN percentages, as scanpy gives
    if case == "no_mito_genes":
        assert (cells["total_counts_mt"] == 0).all()
    if case == "no_gene_symbols_few_genes":
        assert "pct_counts_mt" not in cells and "pct_counts_in_top_50_genes" not in cells
    assert_matches_scanpy(cells, genes_ds, obs, var, matrix)
    if matrix.dtype.kind in "iu":
        assert cells["total_counts"].dtype == np.int64
        np.testing.assert_array_equal(cells["total_counts"], matrix.sum(axis=0))


def test_percent_top_handles_negative_values_as_scanpy():
    rng = np.random.default_rng(5)
    matrix = rng.normal(size=(60, 25))
    matrix[rng.random(matrix.shape) < 0.5] = 0
    ds = xr.Dataset({"matrix": (("row", "col"), matrix)})
    cells, genes = loomx.calculate_qc_metrics(ds, percent_top=(1, 5, 50))
    obs, var = scanpy_metrics(matrix, None, percent_top=(1, 5, 50))
    assert {"pct_counts_in_top_1_genes", "pct_counts_in_top_50_genes"} <= set(cells)
    assert_matches_scanpy(cells, genes, obs, var, matrix, rtol=1e-9)


def test_top_percentages_of_large_counts_equal_scanpy(tmp_path):
    rng = np.random.default_rng(9)
    matrix = (rng.negative_binomial(1, 0.004, (640, 90)) * (rng.random((640, 90)) < 0.4)).astype(
        np.float32
    )
    assert (matrix >= 256).any()
    genes = gene_names(matrix.shape[0], 7)
    ds = loomx.open_loom(write(tmp_path / "large.loom", matrix, genes))
    cells, genes_ds = loomx.calculate_qc_metrics(ds)
    obs, var = scanpy_metrics(matrix, genes)
    assert_matches_scanpy(cells, genes_ds, obs, var, matrix)


@pytest.mark.parametrize(
    "chunks", [{"row": 64, "col": 64}, {"row": -1, "col": 7}, {"row": 37, "col": 500}]
)
def test_chunk_invariance(counts_file, chunks):
    reference = loomx.calculate_qc_metrics(loomx.open_loom(counts_file, chunks=-1))
    result = loomx.calculate_qc_metrics(loomx.open_loom(counts_file, chunks=chunks))
    for ref, got in zip(reference, result, strict=True):
        xr.testing.assert_allclose(ref, got, rtol=1e-12)


def test_reads_every_block_once(counts_file):
    """Both axes from one read: each block of the layer is produced exactly once."""
    with h5py.File(counts_file, "r") as f:
        matrix = f["matrix"][:]
    produced = []

    def counted(block, block_info=None):
        produced.append(block_info[0]["chunk-location"])
        return block

    data = da.from_array(matrix, chunks=(100, 64)).map_blocks(counted, dtype=matrix.dtype)
    ds = loomx.open_loom(counts_file).assign(matrix=(("row", "col"), data))
    cells, genes = loomx.calculate_qc_metrics(ds)
    assert sorted(produced) == sorted(set(produced))
    assert len(produced) == data.npartitions
    np.testing.assert_allclose(genes["total_counts"], matrix.sum(axis=1), rtol=1e-6)
    np.testing.assert_allclose(cells["total_counts"], matrix.sum(axis=0), rtol=1e-6)


@pytest.fixture
def counts_file(tmp_path):
    return make_counts_loom(tmp_path / "counts.loom", 300, 500, seed=1)


def test_write_back_adds_only_metrics(counts_file):
    with h5py.File(counts_file, "r") as f:
        before = {name: f[f"/row_attrs/{name}"][:] for name in f["row_attrs"]}
        matrix_offset = f["matrix"].id.get_chunk_info(0).byte_offset
        matrix = f["matrix"][:]
    summary = qc_file(counts_file)
    obs, var = scanpy_metrics(matrix, before["Gene"].astype(str))
    with h5py.File(counts_file, "r") as f:
        assert f["matrix"].id.get_chunk_info(0).byte_offset == matrix_offset
        np.testing.assert_array_equal(f["matrix"][:], matrix)
        for name, values in before.items():
            np.testing.assert_array_equal(f[f"/row_attrs/{name}"][:], values)
        for name in obs.columns:
            np.testing.assert_allclose(f[f"/col_attrs/{name}"][:], obs[name], rtol=1e-6)
        for name in var.columns:
            np.testing.assert_allclose(f[f"/row_attrs/{name}"][:], var[name], rtol=1e-6)
        assert "variance_counts" in f["row_attrs"]
    assert summary["cells"] == 500 and summary["genes"] == 300 and summary["mito_genes"] == 13
    assert summary["median_total_counts"] == pytest.approx(np.median(obs["total_counts"]))
    # the file reads back with both total_counts qualified, and qc runs again on it
    ds = loomx.open_loom(counts_file)
    assert {"col_attrs:total_counts", "row_attrs:total_counts"} <= set(ds.coords)
    assert qc_file(counts_file)["cells"] == 500


def test_output_leaves_source_untouched(counts_file, tmp_path):
    from conftest import sha256

    digest = sha256(counts_file)
    out = tmp_path / "out.loom"
    qc_file(counts_file, output=out)
    assert sha256(counts_file) == digest
    ds = loomx.open_loom(out)
    assert "pct_counts_mt" in ds.coords and "variance_counts" in ds.coords
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out.loom")]


def test_cli_qc_end_to_end(tmp_path):
    path = tmp_path / "pbmc.loom"
    done = run_cli("example", path, "--counts", "--genes", "400", "--cells", "300")
    assert done.returncode == 0, done.stderr
    done = run_cli("qc", path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar when not on a terminal
    pairs = (line.strip().split("  ", 1) for line in done.stdout.splitlines()[1:7])
    lines = {key.strip(): value.strip() for key, value in pairs}
    with h5py.File(path, "r") as f:
        totals = f["col_attrs/total_counts"][:]
        mt = f["col_attrs/pct_counts_mt"][:]
        assert f["row_attrs/n_cells_by_counts"].shape == (400,)
    assert lines["cells"].strip() == "300" and lines["genes"].strip() == "400"
    assert float(lines["median total_counts"]) == pytest.approx(np.median(totals))
    assert lines["median pct_counts_mt"].startswith(f"{np.median(mt):.2f}")


def test_cli_qc_errors_are_one_line(tmp_path, counts_file):
    for args, expected in [
        (("qc", tmp_path / "missing.loom"), "no such file"),
        (("qc", counts_file, "--layer", "spliced"), "no layer 'spliced'"),
        (("qc", tmp_path), "a directory"),
        (("qc", counts_file, "--processes", "0"), "at least 1"),
        (("qc", counts_file, "--scheduler", "tcp://127.0.0.1:9"), "cannot connect"),
    ]:
        done = run_cli(*args)
        assert done.returncode == 1
        assert done.stderr.startswith("loomx: ") and expected in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_qc_on_local_cluster_with_processes(counts_file):
    distributed = pytest.importorskip("distributed")
    from loomx.cli.run import compute

    expected = loomx.calculate_qc_metrics(loomx.open_loom(counts_file))
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        summary = qc_file(counts_file, compute=lambda *c: compute(*c, client=client))
        tasks = client.run(lambda dask_worker: len(dask_worker.data))  # results were there
    assert len(tasks) == 2
    ds = loomx.open_loom(counts_file)
    np.testing.assert_allclose(ds["col_attrs:total_counts"], expected[0]["total_counts"])
    np.testing.assert_allclose(ds["variance_counts"], expected[1]["variance_counts"])
    assert summary["cells"] == 500


def test_cli_qc_processes(counts_file, tmp_path):
    out = tmp_path / "out.loom"
    done = run_cli("qc", counts_file, "--processes", "2", "--output", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert f"metrics written to {out}" in done.stdout
    expected, _ = loomx.calculate_qc_metrics(loomx.open_loom(counts_file))
    np.testing.assert_allclose(loomx.open_loom(out)["pct_counts_mt"], expected["pct_counts_mt"])


def anndata_written(path, seed=0, index_name=None):
    """A counts file written by anndata's own ``write_loom``: the gene symbols are the
    var index, stored as ``var_names`` (or under the index's name)."""
    rng = np.random.default_rng(seed)
    matrix = rng.poisson(2, size=(90, 40)).astype(np.float32)  # genes x cells
    genes = gene_names(90, 7)
    adata = anndata.AnnData(np.ascontiguousarray(matrix.T))
    adata.var_names = genes.astype(str)
    adata.var.index.name = index_name
    adata.obs_names = [f"c{j}" for j in range(40)]
    adata.write_loom(path)
    return matrix, genes


@pytest.mark.parametrize("index_name", [None, "features"])
def test_qc_finds_the_symbols_anndata_wrote(tmp_path, index_name):
    path = tmp_path / "ad.loom"
    matrix, genes = anndata_written(path, index_name=index_name)
    attr = index_name or "var_names"
    with h5py.File(path, "r") as f:
        assert list(f["row_attrs"]) == [attr]  # where anndata put them
    summary = qc_file(path)
    obs, _ = scanpy_metrics(matrix, genes)
    assert summary["gene_symbols"] == attr and summary["mito_genes"] == 7
    with h5py.File(path, "r") as f:
        np.testing.assert_allclose(f["col_attrs/pct_counts_mt"][:], obs["pct_counts_mt"], 1e-6)


def test_cli_qc_takes_the_gene_symbol_attribute_and_says_which(tmp_path):
    matrix = np.random.default_rng(5).poisson(2, size=(60, 30)).astype(np.int32)
    genes = gene_names(60, 4)
    path = tmp_path / "f.loom"
    cells = np.array([f"c{j}" for j in range(30)], dtype=object)
    ids = np.array([f"ENSG{i}" for i in range(60)], dtype=object)
    write_loom_h5py(path, {"": matrix}, {"Gene": ids, "symbol": genes}, {"CellID": cells})
    done = run_cli("qc", path, "--output", tmp_path / "a.loom")
    assert done.returncode == 0, done.stderr
    assert "gene symbols" in done.stdout and " Gene" in done.stdout
    assert "no gene in Gene starts with" in done.stdout  # Gene holds ids here
    done = run_cli("qc", path, "--gene-symbols", "symbol", "--output", tmp_path / "b.loom")
    assert done.returncode == 0, done.stderr
    assert "(4 mitochondrial genes)" in done.stdout and " symbol" in done.stdout
    obs, _ = scanpy_metrics(matrix, genes)
    with h5py.File(tmp_path / "b.loom", "r") as f:
        np.testing.assert_allclose(f["col_attrs/pct_counts_mt"][:], obs["pct_counts_mt"], 1e-6)
    done = run_cli("qc", path, "--gene-symbols", "nope", "--output", tmp_path / "c.loom")
    assert done.returncode != 0 and "'nope'" in done.stderr and "symbol" in done.stderr
    assert not (tmp_path / "c.loom").exists()


def test_bands_of_an_opened_layer_are_read_from_the_file_not_joined(counts_file):
    """Square blocks to full-height bands: each band is one read of the file (dask's
    rechunk would hold and join a row of blocks per band); a changed layer is rechunked."""
    from loomx.ops.qc import _bands

    with h5py.File(counts_file, "r") as f:
        matrix = f["matrix"][:]
    ds = loomx.open_loom(counts_file, chunks={"row": 64, "col": 64})
    bands = _bands(ds["matrix"], "row", "col")
    assert bands.chunks[0] == (matrix.shape[0],)
    assert len(bands.__dask_graph__()) == bands.npartitions  # one task per band, nothing else
    np.testing.assert_array_equal(bands.compute(), matrix)
    changed = ds.assign(matrix=ds["matrix"] + 1)
    joined = _bands(changed["matrix"], "row", "col")
    assert len(joined.__dask_graph__()) > joined.npartitions
    np.testing.assert_array_equal(joined.compute(), matrix + 1)
    reference = loomx.calculate_qc_metrics(loomx.open_loom(counts_file, chunks=-1))
    for ref, got in zip(reference, loomx.calculate_qc_metrics(ds), strict=True):
        xr.testing.assert_allclose(ref, got, rtol=1e-12)


def test_the_graph_is_one_layer_of_band_tasks_over_the_bands_read(counts_file):
    """A task per band, the joins and the pairwise gene sums, in one graph layer over the
    layer's band reads (``dask.delayed`` per band made layers per band and culled the whole
    graph for each)."""
    from dask.core import get_dependencies

    ds = loomx.open_loom(counts_file, chunks={"row": -1, "col": 64})
    bands = ds["matrix"].data.npartitions
    assert bands == 8
    cells, genes = loomx.calculate_qc_metrics(ds, compute=False)
    graph = cells["total_counts"].data.__dask_graph__()
    layers = {name: len(layer) for name, layer in graph.layers.items()}
    qc_layers = [n for n in layers if n.startswith("loomx-qc-")]
    assert len(qc_layers) == 1
    assert not any(n.startswith(("band_stats", "_add_genes", "_cells_only")) for n in layers)
    assert layers[qc_layers[0]] == 4 * bands + 1  # bands, their 2 parts, joins, sums
    tasks = dict(graph)
    for key in tasks:  # a band's results are used by its two parts only (then freed)
        used = [d for d in get_dependencies(tasks, key) if str(d[0]).endswith("-band")]
        assert not used or (
            key[0].endswith(("-cells", "-genes")) and used == [(used[0][0], key[1])]
        )
    reference = loomx.calculate_qc_metrics(loomx.open_loom(counts_file, chunks=-1))
    for ref, got in zip(reference, (cells.compute(), genes.compute()), strict=True):
        xr.testing.assert_allclose(ref, got, rtol=1e-12)

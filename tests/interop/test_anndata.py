"""AnnData bridge, 10x import and ``loomx convert``/``aggregate``, against anndata, scanpy
and loompy reading or writing the same data."""

from __future__ import annotations

import gzip
import warnings

import dask
import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse
from conftest import assert_loompy_valid, run_cli

import loomx
from loomx.interop.anndata import from_anndata, to_anndata
from loomx.interop.conversion import aggregate_file, convert
from loomx.interop.tenx import read_10x_h5, read_10x_mex
from loomx.testing import make_example_loom

anndata = pytest.importorskip("anndata")
sc = pytest.importorskip("scanpy")


def test_to_anndata_matches_anndata_read_loom_and_keeps_more(loompy_file):
    from conftest import anndata_read_loom

    path = loompy_file["path"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = anndata_read_loom(path, X_name="", obs_names="CellID", var_names="Gene")
    ours = to_anndata(loomx.open_loom(path))
    assert isinstance(ours.X, dask.array.Array)  # lazy
    np.testing.assert_array_equal(ours.X.compute(), np.asarray(theirs.X.todense()))
    # anndata reads strings through loompy, which drops non-ASCII characters; loomx keeps them
    assert list(ours.obs_names) == list(loompy_file["col_attrs"]["CellID"])
    assert list(ours.var_names) == list(loompy_file["row_attrs"]["Gene"])
    ascii_only = [n.encode("ascii", "ignore").decode() for n in ours.obs_names]
    assert ascii_only == list(theirs.obs_names)
    for name in ("ClusterID", "Valid"):
        np.testing.assert_array_equal(ours.obs[name], theirs.obs[name])
    np.testing.assert_array_equal(ours.var["Score"], theirs.var["Score"])
    np.testing.assert_array_equal(ours.obsm["Embedding"], theirs.obsm["Embedding"])
    np.testing.assert_array_equal(ours.varm["Loadings"], theirs.varm["Loadings"])
    for name in ("counts_u16", "norm"):
        np.testing.assert_array_equal(
            ours.layers[name].compute(), np.asarray(theirs.layers[name].todense())
        )
    # what anndata's reader drops and loomx keeps: graphs and global attributes
    assert not len(theirs.obsp) and not len(theirs.varp)
    knn = loompy_file["knn"].tocsr()
    knn.sum_duplicates()
    assert (ours.obsp["KNN"] != knn).nnz == 0
    assert (ours.varp["coexpr"] != loompy_file["rgraph"].tocsr()).nnz == 0
    assert ours.uns["Title"] == "Tëst"
    np.testing.assert_array_equal(ours.uns["Weights"], np.arange(4.0))


@pytest.fixture
def adata():
    return sc.datasets.pbmc68k_reduced()


def test_from_anndata_against_anndata_write_loom(adata, tmp_path):
    ours, theirs = tmp_path / "ours.loom", tmp_path / "theirs.loom"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_loom(theirs)
        ds = from_anndata(adata)
    loomx.to_loom(ds, ours)
    with h5py.File(ours, "r") as a, h5py.File(theirs, "r") as b:
        np.testing.assert_allclose(a["matrix"][:], b["matrix"][:], rtol=1e-6)
        for name in ("n_genes", "percent_mito", "n_counts"):
            np.testing.assert_allclose(a[f"col_attrs/{name}"][:], b[f"col_attrs/{name}"][:])
        assert list(a["col_attrs/CellID"].asstr()[:]) == list(adata.obs_names)
        assert list(a["row_attrs/Gene"].asstr()[:]) == list(adata.var_names)
        np.testing.assert_allclose(a["col_attrs/X_umap"][:], adata.obsm["X_umap"])
        # loomx keeps the neighbour graphs and uns; anndata's writer drops them
        assert set(a["col_graphs"]) == {"connectivities", "distances"}
        assert len(b["col_graphs"]) == 0
    back = to_anndata(loomx.open_loom(ours))
    np.testing.assert_allclose(back.X.compute(), adata.X, rtol=1e-6)
    assert list(back.obs["louvain"]) == list(adata.obs["louvain"].astype(str))
    diff = back.obsp["connectivities"] - adata.obsp["connectivities"]
    assert abs(diff).max() < 1e-6


def test_sparse_x_stays_sparse(tmp_path):
    rng = np.random.default_rng(0)
    x = scipy.sparse.random(300, 120, density=0.05, format="csr", random_state=1, dtype=np.float32)
    adata = anndata.AnnData(x)
    with dask.config.set({"array.chunk-size": "16KiB"}):
        ds = from_anndata(adata)
    matrix = ds["matrix"].data
    assert matrix.shape == (120, 300) and len(matrix.chunks[1]) > 5
    assert max(matrix.chunks[1]) < 300  # each block is a band of cells, not the whole
    loomx.to_loom(ds, tmp_path / "s.loom")
    with h5py.File(tmp_path / "s.loom", "r") as f:
        np.testing.assert_array_equal(f["matrix"][:], x.toarray().T)
    del rng


def write_10x_h5(path, matrix, genes, ids, barcodes, version=3):
    csc = scipy.sparse.csc_matrix(matrix)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix" if version == 3 else "GRCh38")
        g["data"], g["indices"], g["indptr"] = csc.data, csc.indices, csc.indptr
        g["shape"] = np.array(matrix.shape, dtype=np.int32)
        g["barcodes"] = np.array(barcodes, dtype="S")
        if version == 3:
            feats = g.create_group("features")
            feats["id"], feats["name"] = np.array(ids, dtype="S"), np.array(genes, dtype="S")
            feats["feature_type"] = np.array(["Gene Expression"] * len(ids), dtype="S")
            feats["genome"] = np.array(["GRCh38"] * len(ids), dtype="S")
            feats["_all_tag_keys"] = np.array([b"genome"])
        else:
            g["genes"], g["gene_names"] = np.array(ids, dtype="S"), np.array(genes, dtype="S")
    return path


def write_mex(folder, matrix, genes, ids, barcodes, version=3):
    folder.mkdir()
    gz = version == 3
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(folder / f"matrix.mtx{suffix}", "wb") as fh:
        scipy.io.mmwrite(fh, scipy.sparse.coo_matrix(matrix))
    name = "features.tsv" if version == 3 else "genes.tsv"
    with opener(folder / f"{name}{suffix}", "wt") as fh:
        for i, g in zip(ids, genes, strict=True):
            fh.write(f"{i}\t{g}\tGene Expression\n" if version == 3 else f"{i}\t{g}\n")
    with opener(folder / f"barcodes.tsv{suffix}", "wt") as fh:
        fh.write("".join(f"{b}\n" for b in barcodes))
    return folder


@pytest.fixture
def tenx_data():
    rng = np.random.default_rng(4)
    n_genes, n_cells = 80, 150
    matrix = np.where(rng.random((n_genes, n_cells)) < 0.1, rng.poisson(3, (n_genes, n_cells)), 0)
    genes = [f"MT-{i}" if i < 3 else f"GENE{i}" for i in range(n_genes)]
    ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    barcodes = [f"AAAC{j:08d}-1" for j in range(n_cells)]
    return matrix.astype(np.int32), genes, ids, barcodes


@pytest.mark.parametrize("kind", ["h5_v3", "h5_v2", "mex_v3", "mex_v2"])
def test_10x_matches_scanpy_readers(tmp_path, tenx_data, kind):
    matrix, genes, ids, barcodes = tenx_data
    version = 3 if kind.endswith("v3") else 2
    if kind.startswith("h5"):
        source = write_10x_h5(tmp_path / "m.h5", matrix, genes, ids, barcodes, version)
        theirs = sc.read_10x_h5(source, genome=None if version == 3 else "GRCh38")
        with dask.config.set({"array.chunk-size": "8KiB"}):
            ds = read_10x_h5(source)
    else:
        source = write_mex(tmp_path / "mex", matrix, genes, ids, barcodes, version)
        theirs = sc.read_10x_mtx(source, var_names="gene_symbols", make_unique=False)
        with dask.config.set({"array.chunk-size": "8KiB"}):
            ds = read_10x_mex(source)
    assert len(ds["matrix"].data.chunks[1]) > 1  # bands of cells, never the whole matrix
    np.testing.assert_array_equal(ds["matrix"].values, np.asarray(theirs.X.todense()).T)
    assert list(ds["Gene"].values) == list(theirs.var_names)
    assert list(ds["Accession"].values) == list(theirs.var["gene_ids"])
    assert list(ds["CellID"].values) == list(theirs.obs_names)
    target = tmp_path / "out.loom"
    convert(source, target)
    assert loomx.calculate_qc_metrics(loomx.open_loom(target))[0].attrs["mito_genes"] == 3


def test_cli_convert_round_trip(tmp_path, tenx_data):
    loom = make_example_loom(tmp_path / "ex.loom", 40, 70)
    done = run_cli("convert", loom, tmp_path / "ex.h5ad")
    assert done.returncode == 0, done.stderr
    assert "40 genes x 70 cells" in done.stdout
    adata = anndata.read_h5ad(tmp_path / "ex.h5ad")
    assert scipy.sparse.issparse(adata.X) and set(adata.obsp) == {"KNN"}
    done = run_cli("convert", tmp_path / "ex.h5ad", tmp_path / "back.loom")
    assert done.returncode == 0, done.stderr
    with h5py.File(loom, "r") as a, h5py.File(tmp_path / "back.loom", "r") as b:
        for h5path in ("matrix", "layers/spliced", "col_attrs/ClusterID", "row_attrs/PCs"):
            np.testing.assert_array_equal(a[h5path][:], b[h5path][:])
        assert list(a["col_attrs/CellID"].asstr()) == list(b["col_attrs/CellID"].asstr())
    source = write_10x_h5(tmp_path / "f.h5", *tenx_data)
    done = run_cli("convert", source, tmp_path / "f.loom")
    assert done.returncode == 0, done.stderr
    assert loomx.validate_loom(tmp_path / "f.loom") == []


def test_cli_convert_errors(tmp_path):
    loom = make_example_loom(tmp_path / "ex.loom", 10, 12)
    (tmp_path / "empty").mkdir()
    for args, expected in [
        ((tmp_path / "missing.h5ad", tmp_path / "o.loom"), "no such file"),
        ((loom, tmp_path / "o.csv"), "must end in .loom or .h5ad"),
        ((tmp_path / "empty", tmp_path / "o.loom"), "expected a 10x MEX folder"),
    ]:
        done = run_cli("convert", *args)
        assert done.returncode == 1, done
        assert done.stderr.startswith("loomx: ") and expected in done.stderr
        assert "Traceback" not in done.stderr


def test_cli_aggregate_matches_numpy(tmp_path):
    # (loompy's own aggregate uses np.in1d, gone in numpy 2: the reference is numpy on h5py)
    path = make_example_loom(tmp_path / "ex.loom", 40, 90)
    done = run_cli("aggregate", path, tmp_path / "agg.loom", "--by", "ClusterID")
    assert done.returncode == 0, done.stderr
    with h5py.File(path, "r") as f:
        matrix, labels = f["matrix"][:], f["col_attrs/ClusterID"][:]
    expected = np.stack([matrix[:, labels == k].mean(axis=1) for k in range(4)], axis=1)
    with h5py.File(tmp_path / "agg.loom", "r") as f:
        np.testing.assert_allclose(f["matrix"][:], expected, rtol=1e-6)
        np.testing.assert_array_equal(f["col_attrs/ClusterID"][:], np.arange(4))
    assert aggregate_file(path, tmp_path / "sum.loom", "ClusterID", "sum") == (40, 4)
    done = run_cli("aggregate", path, tmp_path / "x.loom", "--by", "Nope")
    assert done.returncode == 1 and "Nope" in done.stderr


def test_cli_aggregate_enrichment_matches_numpy(tmp_path):
    path = make_example_loom(tmp_path / "ex.loom", 40, 90)
    done = run_cli("aggregate", path, tmp_path / "agg.loom", "--enrichment")
    assert done.returncode == 0, done.stderr
    with h5py.File(path, "r") as f:
        matrix, labels = f["matrix"][:].astype(np.float64), f["col_attrs/ClusterID"][:]
    expected = []
    for k in range(4):  # cytograph's enrichment: inside the cluster against every other cell
        inside, outside = matrix[:, labels == k], matrix[:, labels != k]
        f_in, f_out = (inside != 0).mean(axis=1), (outside != 0).mean(axis=1)
        m_in, m_out = inside.mean(axis=1), outside.mean(axis=1)
        expected.append((f_in + 0.1) / (f_out + 0.1) * (m_in + 0.01) / (m_out + 0.01))
    with h5py.File(tmp_path / "agg.loom", "r") as f:
        np.testing.assert_allclose(f["layers/enrichment"][:], np.stack(expected, axis=1), rtol=1e-6)
        assert f["layers/enrichment"].shape == f["matrix"].shape == (40, 4)
    assert_loompy_valid(tmp_path / "agg.loom")
    done = run_cli("aggregate", tmp_path / "agg.loom", tmp_path / "again.loom", "--enrichment")
    assert done.returncode == 1 and "/layers/enrichment" in done.stderr

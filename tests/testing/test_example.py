"""loomx.testing example files (make_example_loom, make_counts_loom, write_loom_h5py):
loompy opens them and its LoomValidator accepts them, with the shapes, dtypes and
attributes their docstrings promise.

loompy 3 reads variable-length strings as ASCII and drops other characters, so the
unicode text of 3.0.0 files is compared through h5py, the rest through loompy.
"""

from __future__ import annotations

import h5py
import loompy
import numpy as np
import pytest

from loomx.testing import make_counts_loom, make_example_loom, write_loom_h5py

MITO = (
    "MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3",
    "MT-ND3", "MT-ND4L", "MT-ND4", "MT-ND5", "MT-ND6", "MT-CYB",
)  # fmt: skip
"""The 13 protein-coding genes of the human mitochondrial genome (NCBI NC_012920)."""


def assert_valid(path) -> None:
    validator = loompy.LoomValidator()
    assert validator.validate(str(path)), validator.errors
    assert validator.errors == []


def utf8_strings(path, h5path: str) -> list[str]:
    with h5py.File(path, "r") as f:
        dset = f[h5path]
        if h5py.check_string_dtype(dset.dtype).length is None:
            return list(dset.asstr()[()])
        return [v.decode("ascii") for v in dset[()]]  # legacy: XML character references


@pytest.mark.parametrize("version", ["3.0.0", "2.0.1"])
def test_example_loom_is_valid_with_every_feature(tmp_path, version):
    path = make_example_loom(tmp_path / "x.loom", 40, 70, version=version)
    assert path == str(tmp_path / "x.loom")
    assert_valid(path)
    with loompy.connect(path, "r", validate=True) as ds:
        assert ds.shape == (40, 70)
        assert ds[:, :].dtype == np.float32
        assert ds.layers["spliced"].dtype == np.uint16
        assert ds.layers["ambiguous"].dtype == np.float64
        matrix = ds[:, :]
        assert np.all(matrix == np.round(matrix)) and matrix.min() >= 0  # counts
        assert 0 < np.count_nonzero(matrix) < matrix.size
        assert set(ds.ra.keys()) == {"Gene", "Accession", "Selected", "PCs"}
        assert set(ds.ca.keys()) == {"CellID", "ClusterID", "ClusterName", "Valid", "X_tsne"}
        assert set(np.unique(ds.ra.Selected)) <= {0, 1}
        assert ds.ra.PCs.shape == (40, 3) and ds.ca.X_tsne.shape == (70, 2)
        assert np.all(ds.ca.Valid == 1)
        assert ds.ca.ClusterID.dtype == np.int64
        np.testing.assert_array_equal(ds.ca.ClusterName, [f"type {c}" for c in ds.ca.ClusterID])
        assert ds.attrs.Title == "loomx example: synthetic counts"
        np.testing.assert_array_equal(ds.attrs.Weights, np.arange(3.0))
        assert version == ds.attrs.LOOM_SPEC_VERSION
        knn = ds.col_graphs["KNN"]
        edges = list(zip(knn.row, knn.col, strict=True))
        assert len(edges) > len(set(edges))  # duplicate (multigraph) edges
        assert ds.row_graphs["coexpr"].shape == (40, 40)
    genes = utf8_strings(path, "/row_attrs/Gene")
    cells = utf8_strings(path, "/col_attrs/CellID")
    if version == "3.0.0":
        assert any(not g.isascii() for g in genes), genes[:6]
        assert cells[0] == "cell_0_日本"
    else:  # stored as XML character references, as loompy writes 2.0.1 text
        assert cells[0] == "cell_0_&#26085;&#26412;"


def test_example_loom_storage(tmp_path):
    path = make_example_loom(tmp_path / "x.loom", 40, 70, chunks=(16, 32))
    contiguous = make_example_loom(tmp_path / "c.loom", 40, 70, chunks=None)
    with h5py.File(path, "r") as f, h5py.File(contiguous, "r") as g:
        assert f["matrix"].chunks == (16, 32)
        assert f["matrix"].compression == "gzip"
        assert g["matrix"].chunks is None
        np.testing.assert_array_equal(f["matrix"][()], g["matrix"][()])  # same seed


def test_example_loom_is_deterministic_per_seed(tmp_path):
    a = make_example_loom(tmp_path / "a.loom", 20, 30, seed=3)
    b = make_example_loom(tmp_path / "b.loom", 20, 30, seed=3)
    c = make_example_loom(tmp_path / "c.loom", 20, 30, seed=4)
    with loompy.connect(a, "r") as x, loompy.connect(b, "r") as y, loompy.connect(c, "r") as z:
        np.testing.assert_array_equal(x[:, :], y[:, :])
        assert not np.array_equal(x[:, :], z[:, :])


def test_counts_loom_is_valid_negative_binomial_with_mito_genes(tmp_path):
    path = make_counts_loom(tmp_path / "c.loom", 300, 600, n_clusters=4)
    assert path == str(tmp_path / "c.loom")
    assert_valid(path)
    with loompy.connect(path, "r") as ds:
        assert ds.shape == (300, 600)
        counts = ds[:, :]
        genes = list(ds.ra.Gene)
        assert set(ds.ra.keys()) == {"Gene", "Accession"}
        assert set(ds.ca.keys()) == {"CellID", "ClusterID", "ClusterName"}
        clusters = ds.ca.ClusterID
        names = list(ds.ca.ClusterName)
        assert ds.attrs.Title == "loomx example: negative-binomial counts"
    assert counts.dtype == np.float32
    assert np.all(counts >= 0) and np.all(counts == np.round(counts))  # whole counts
    assert tuple(genes[:13]) == MITO
    assert not any(g.startswith("MT-") for g in genes[13:])
    assert len(set(genes)) == len(genes)
    assert set(np.unique(clusters)) <= set(range(4)) and len(np.unique(clusters)) > 1
    assert names == [f"type {c}" for c in clusters]
    # the mitochondrial genes take about 3% of the counts of most cells, more in a few
    share = counts[:13].sum(axis=0) / np.maximum(counts.sum(axis=0), 1)
    assert 0.01 < np.median(share) < 0.06, np.median(share)
    assert 0 < np.mean(share > 0.08) < 0.2
    # over-dispersed: variance above the mean (a Poisson would have them equal)
    expressed = counts[13:][counts[13:].mean(axis=1) > 1]
    assert len(expressed) > 10
    dispersion = expressed.var(axis=1) / expressed.mean(axis=1)
    assert np.median(dispersion) > 1.5, np.median(dispersion)


def test_counts_loom_dtype_and_limits(tmp_path):
    path = make_counts_loom(tmp_path / "c.loom", 20, 50, dtype=np.int32, chunks=(8, 8))
    with h5py.File(path, "r") as f:
        assert f["matrix"].dtype == np.int32
        assert f["matrix"].chunks == (8, 8)
    assert_valid(path)
    with pytest.raises(ValueError, match="13"):
        make_counts_loom(tmp_path / "x.loom", 13, 10)


@pytest.mark.parametrize("version", ["3.0.0", "2.0.1"])
def test_write_loom_h5py_writes_what_it_is_given(tmp_path, version):
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "w.loom"
    write_loom_h5py(
        path,
        {"": matrix, "u": matrix.astype(np.uint8)},
        {"Gene": np.array(["a", "b&c", "é"], dtype=object), "Ok": np.array([True, False, True])},
        {"Score": np.linspace(0, 1, 4)},
        row_graphs={"G": (np.array([0, 1]), np.array([1, 2]), np.array([0.5, 1.0]))},
        col_graphs={"KNN": (np.array([0, 3]), np.array([3, 0]), np.array([1.0, 1.0]))},
        global_attrs={"Title": "t", "Year": 2024},
        version=version,
        chunks=(2, 2),
        compression="gzip",
        compression_opts=4,
    )
    assert_valid(path)
    with loompy.connect(str(path), "r") as ds:
        np.testing.assert_array_equal(ds[:, :], matrix)
        np.testing.assert_array_equal(ds.layers["u"][:, :], matrix.astype(np.uint8))
        np.testing.assert_array_equal(ds.ra.Ok, [1, 0, 1])
        np.testing.assert_array_equal(ds.ca.Score, np.linspace(0, 1, 4))
        assert ds.row_graphs["G"].nnz == 2 and ds.col_graphs["KNN"].nnz == 2
        assert ds.attrs.Title == "t" and ds.attrs.Year == 2024
        assert version == ds.attrs.LOOM_SPEC_VERSION
    with h5py.File(path, "r") as f:
        assert f["matrix"].chunks == (2, 2) and f["matrix"].compression_opts == 4
        assert f["row_attrs/Ok"].dtype == np.uint8
        assert ("attrs" in f) == (version == "3.0.0")  # older files: root attributes
    expected = ["a", "b&c", "é"] if version == "3.0.0" else ["a", "b&c", "&#233;"]
    assert utf8_strings(path, "/row_attrs/Gene") == expected

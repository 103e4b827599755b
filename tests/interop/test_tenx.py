"""10x Genomics readers on real Cell Ranger output (tests/data/10x, from scanpy's tests; see
tests/data/SOURCES.md) against scanpy's readers of the same files."""

from __future__ import annotations

import dask
import h5py
import numpy as np
import pytest
import scanpy as sc
from conftest import DATA

from loomx.errors import LoomFormatError
from loomx.interop.tenx import read_10x_h5, read_10x_mex

TENX = DATA / "10x"
V3_H5 = TENX / "3.0.0" / "filtered_feature_bc_matrix.h5"
V3_MEX = TENX / "3.0.0" / "filtered_feature_bc_matrix"
V2_MEX = TENX / "1.2.0" / "filtered_gene_bc_matrices" / "hg19_chr21"
V2_TWO_GENOMES = TENX / "1.2.0" / "multiple_genomes.h5"


def assert_same_as_scanpy(ds, theirs, attrs):
    """Values, barcodes and the ``{loomx attribute: scanpy var column}`` of ``attrs``;
    ``Gene`` is scanpy's index (read with ``var_names="gene_symbols"``)."""
    assert len(ds["matrix"].data.chunks[1]) > 1  # bands of cells, never the whole matrix
    np.testing.assert_array_equal(ds["matrix"].values, theirs.X.toarray().T)
    assert ds["matrix"].dtype.kind == "i"
    assert list(ds["CellID"].values) == list(theirs.obs_names)
    assert list(ds["Gene"].values) == list(theirs.var_names)
    for name, column in attrs.items():
        assert list(ds[name].values) == list(theirs.var[column]), name
    assert {n for n in ds.coords if ds[n].dims == ("row",)} == {"Gene", *attrs}


def test_v3_h5_matches_scanpy():
    theirs = sc.read_10x_h5(V3_H5, gex_only=False)
    with dask.config.set({"array.chunk-size": "256KiB"}):
        ds = read_10x_h5(V3_H5)
    assert ds.sizes["row"] == 507 and ds.sizes["col"] == 1107
    expected = {"Accession": "gene_ids", "FeatureType": "feature_types", "Genome": "genome"}
    assert_same_as_scanpy(ds, theirs, expected)
    assert set(ds["Genome"].values) == {"GRCh38_chr21"}


def test_v3_mex_matches_scanpy():
    theirs = sc.read_10x_mtx(V3_MEX, var_names="gene_symbols", make_unique=False, gex_only=False)
    with dask.config.set({"array.chunk-size": "256KiB"}):
        ds = read_10x_mex(V3_MEX)
    expected = {"Accession": "gene_ids", "FeatureType": "feature_types"}
    assert_same_as_scanpy(ds, theirs, expected)
    assert set(ds["FeatureType"].values) == {"Gene Expression"}


def test_v2_mex_matches_scanpy():
    theirs = sc.read_10x_mtx(V2_MEX, var_names="gene_symbols", make_unique=False, gex_only=False)
    with dask.config.set({"array.chunk-size": "2KiB"}):
        ds = read_10x_mex(V2_MEX)
    assert_same_as_scanpy(ds, theirs, {"Accession": "gene_ids"})


@pytest.mark.parametrize("genome", ["hg19_chr21", "another_genome"])
def test_v2_h5_of_two_genomes_reads_the_one_asked_for(genome):
    theirs = sc.read_10x_h5(V2_TWO_GENOMES, genome=genome, gex_only=False)
    with dask.config.set({"array.chunk-size": "2KiB"}):
        ds = read_10x_h5(V2_TWO_GENOMES, genome=genome)
    assert_same_as_scanpy(ds, theirs, {"Accession": "gene_ids"})


def test_v2_h5_of_two_genomes_needs_a_genome():
    with pytest.raises(LoomFormatError, match=r"another_genome.*hg19_chr21") as info:
        read_10x_h5(V2_TWO_GENOMES)
    assert info.value.path == str(V2_TWO_GENOMES)
    with pytest.raises(LoomFormatError, match=r"GRCh38.*another_genome.*hg19_chr21"):
        read_10x_h5(V2_TWO_GENOMES, genome="GRCh38")


@pytest.mark.parametrize("genome", ["mm10", "GRCh38_chr21"])
def test_v3_h5_genome_selects_its_features(tmp_path, genome):
    two = tmp_path / "barnyard.h5"  # the real file, its first 200 features another genome's
    two.write_bytes(V3_H5.read_bytes())
    with h5py.File(two, "r+") as f:
        genomes = f["matrix/features/genome"][()]
        genomes[:200] = b"mm10"
        del f["matrix/features/genome"]
        f["matrix/features/genome"] = genomes
    theirs = sc.read_10x_h5(two, genome=genome, gex_only=False)
    assert 0 < theirs.n_vars < 507
    with dask.config.set({"array.chunk-size": "256KiB"}):
        ds = read_10x_h5(two, genome=genome)
    expected = {"Accession": "gene_ids", "FeatureType": "feature_types", "Genome": "genome"}
    assert_same_as_scanpy(ds, theirs, expected)
    assert set(ds["Genome"].values) == {genome}
    with pytest.raises(LoomFormatError, match=r"GRCh38_chr21.*mm10") as info:
        read_10x_h5(two, genome="GRCm39")
    assert info.value.h5path == "/matrix/features/genome"

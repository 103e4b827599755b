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


PROBES = TENX / "visium-2.1.0" / "raw_probe_bc_matrix.h5"


def test_probe_based_h5_keeps_every_field_as_scanpy():
    theirs = sc.read_10x_h5(PROBES, gex_only=False)
    assert "probe_ids" in theirs.var  # scanpy reads it as a probe-based matrix
    ds = read_10x_h5(PROBES)
    expected = {
        "Accession": "gene_ids",
        "ProbeID": "probe_ids",
        "FeatureType": "feature_types",
        "Genome": "genome",
        "gene_name": "gene_name",
        "probe_region": "probe_region",
        "filtered_probes": "filtered_probes",
    }
    assert_same_as_scanpy(ds, theirs, expected)
    assert ds["Accession"].values[0] != ds["ProbeID"].values[0]
    assert list(ds["filtered_barcodes"].values) == list(theirs.obs["filtered_barcodes"])
    assert ds["filtered_barcodes"].dims == ("col",)


def write_arc_like(path, n_genes: int = 6, n_peaks: int = 4, n_cells: int = 5):
    """A Cell Ranger ARC ``filtered_feature_bc_matrix.h5``: Gene Expression and Peaks
    features in one v3 matrix, peaks with their ``interval``."""
    rng = np.random.default_rng(1)
    dense = rng.poisson(1.0, (n_genes + n_peaks, n_cells)).astype(np.int32)
    import scipy.sparse

    csc = scipy.sparse.csc_matrix(dense)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = csc.data, csc.indices, csc.indptr
        g["shape"] = np.array(dense.shape, dtype=np.int32)
        g["barcodes"] = np.array([f"AAAC-{i}".encode() for i in range(n_cells)])
        feats = g.create_group("features")
        ids = [f"ENSG{i}" for i in range(n_genes)] + [f"chr1:{i}-{i + 9}" for i in range(n_peaks)]
        feats["id"] = np.array([s.encode() for s in ids])
        feats["name"] = np.array([s.encode() for s in ids])
        types = [b"Gene Expression"] * n_genes + [b"Peaks"] * n_peaks
        feats["feature_type"] = np.array(types)
        feats["genome"] = np.array([b"GRCh38"] * (n_genes + n_peaks))
        feats["interval"] = np.array([s.encode() for s in ids])
        feats["_all_tag_keys"] = np.array([b"genome", b"interval"])
    return dense


@pytest.mark.parametrize("feature_type", [None, "Gene Expression", "Peaks"])
def test_arc_h5_keeps_feature_types_or_picks_one(tmp_path, feature_type):
    dense = write_arc_like(tmp_path / "arc.h5")
    theirs = sc.read_10x_h5(tmp_path / "arc.h5", gex_only=False)
    ds = read_10x_h5(tmp_path / "arc.h5", feature_type=feature_type)
    keep = np.ones(len(dense), bool)
    if feature_type is not None:
        keep = theirs.var["feature_types"].to_numpy() == feature_type
        assert set(ds["FeatureType"].values) == {feature_type}
    np.testing.assert_array_equal(ds["matrix"].values, dense[keep])
    assert list(ds["interval"].values) == list(theirs.var["interval"][keep])
    assert list(ds["FeatureType"].values) == list(theirs.var["feature_types"][keep])


def test_feature_type_not_in_the_file_is_refused_naming_those_found(tmp_path):
    write_arc_like(tmp_path / "arc.h5")
    with pytest.raises(LoomFormatError, match=r"'Antibody'.*\['Gene Expression', 'Peaks'\]"):
        read_10x_h5(tmp_path / "arc.h5", feature_type="Antibody")
    with pytest.raises(LoomFormatError, match=r"'Peaks'.*\['Gene Expression'\]"):
        read_10x_mex(V3_MEX, feature_type="Peaks")
    ds = read_10x_mex(V3_MEX, feature_type="Gene Expression")
    assert ds.sizes["row"] == 507

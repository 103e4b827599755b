"""Whole-file conversions: what a missing or unreadable source raises, through the API and
``loomx convert``."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
from conftest import DATA, run_cli

import loomx
from loomx.errors import LoomFileError, LoomFileNotFoundError, LoomFormatError
from loomx.interop.conversion import convert, read_any
from loomx.interop.tenx import read_10x_h5, read_10x_mex


@pytest.mark.parametrize("name", ["missing.h5ad", "missing.h5", "missing.loom", "missing_mex"])
def test_missing_source_is_a_loomx_error_naming_it(tmp_path, name):
    source = tmp_path / name
    for call in (
        lambda: read_any(source),
        lambda: convert(source, tmp_path / "out.loom"),
    ):
        with pytest.raises(LoomFileNotFoundError, match="no such") as info:
            call()
        assert isinstance(info.value, FileNotFoundError)
        assert info.value.path == str(source) and str(source) in str(info.value)
    assert not (tmp_path / "out.loom").exists()


def test_missing_10x_sources_are_loomx_errors_naming_them(tmp_path):
    for read, source in (
        (read_10x_mex, tmp_path / "no_folder"),
        (read_10x_h5, tmp_path / "no_file.h5"),
    ):
        with pytest.raises(LoomFileNotFoundError, match="no such") as info:
            read(source)
        assert info.value.path == str(source)


def test_unreadable_h5ad_is_a_loomx_error_naming_it(tmp_path):
    source = tmp_path / "junk.h5ad"
    source.write_bytes(b"not an HDF5 file\n" * 8)
    with pytest.raises(LoomFileError, match="h5ad") as info:
        read_any(source)
    assert info.value.path == str(source)


def test_cli_convert_missing_h5ad_is_one_loomx_line(tmp_path):
    source = tmp_path / "missing.h5ad"
    done = run_cli("convert", source, tmp_path / "out.loom")
    assert done.returncode == 1
    assert done.stderr.startswith("loomx: ") and len(done.stderr.splitlines()) == 1
    assert str(source) in done.stderr and "no such file" in done.stderr
    assert "FileNotFoundError" not in done.stderr, done.stderr  # a loomx error, no type name
    with pytest.raises(LoomFileNotFoundError) as info:
        read_any(source)
    assert done.stderr == f"loomx: {info.value}\n"
    assert not (tmp_path / "out.loom").exists()


def test_convert_10x_takes_genome_and_feature_type(tmp_path):
    two = DATA / "10x" / "1.2.0" / "multiple_genomes.h5"
    with pytest.raises(LoomFormatError, match=r"another_genome.*hg19_chr21.*--genome"):
        convert(two, tmp_path / "o.loom")
    assert not (tmp_path / "o.loom").exists()
    convert(two, tmp_path / "o.loom", genome="another_genome")
    theirs = sc.read_10x_h5(two, genome="another_genome")
    ds = loomx.open_loom(tmp_path / "o.loom")
    np.testing.assert_array_equal(ds["matrix"].values, theirs.X.toarray().T)
    assert list(ds["Accession"].values) == list(theirs.var["gene_ids"])
    with pytest.raises(LoomFormatError, match="10x"):
        convert(tmp_path / "o.loom", tmp_path / "p.loom", genome="hg19_chr21")


def test_cli_convert_names_every_genome_and_takes_one(tmp_path):
    two = DATA / "10x" / "1.2.0" / "multiple_genomes.h5"
    done = run_cli("convert", two, tmp_path / "o.loom")
    assert done.returncode != 0
    assert "another_genome" in done.stderr and "hg19_chr21" in done.stderr
    assert not (tmp_path / "o.loom").exists()
    done = run_cli("convert", two, tmp_path / "o.loom", "--genome", "hg19_chr21")
    assert done.returncode == 0, done.stderr
    theirs = sc.read_10x_h5(two, genome="hg19_chr21")
    np.testing.assert_array_equal(
        loomx.open_loom(tmp_path / "o.loom")["matrix"].values, theirs.X.toarray().T
    )
    mex = DATA / "10x" / "3.0.0" / "filtered_feature_bc_matrix"
    done = run_cli("convert", mex, tmp_path / "p.loom", "--feature-type", "Peaks")
    assert done.returncode != 0 and "'Peaks'" in done.stderr

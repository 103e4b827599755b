"""Files as their producers write them, through every loomx path.

SCope's producers (pySCENIC's ``export2loom``, SCopeLoomR, loomxpy) store regulons,
embeddings and clusterings as compound (structured) attributes.  Their readers take
them as pySCENIC 0.12 does (``pd.DataFrame(ds.ca.RegulonsAUC, index=ds.ca.CellID)``,
the field names as columns) and loomxpy does (``Embeddings_X[str(embedding_id)]``); both
read the structured array as h5py returns it, which is what :func:`producer_frame`
repeats.  Every writer must leave them reading the same.  ``tests/data/producers/`` holds a file
pySCENIC 0.12.1's own ``export2loom`` wrote (the script and versions beside it).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import DATA

import loomx
from loomx.errors import LoomFormatError, LoomFormatWarning
from loomx.interop.conversion import convert

SCOPE_R = DATA / "SCopeLoomR_example.loom"

COMPOUND = {
    "col_attrs": {
        "RegulonsAUC": [("Foxp3(+)", "<f8"), ("Tbx21(+)", "<f8"), ("Gata3(-)", "<f8")],
        "Embedding": [("_X", "<f4"), ("_Y", "<f4")],
        "Embeddings_X": [("-1", "<f8"), ("1", "<f8")],
        "Clusterings": [("0", "<i8"), ("1", "<i4"), ("2", "u1")],
    },
    "row_attrs": {"Regulons": [("Foxp3(+)", "<i8"), ("Tbx21(+)", "<i8"), ("Gata3(-)", "<i8")]},
}


def write_pyscenic_like(path: Path, n_genes: int = 30, n_cells: int = 40, seed: int = 0) -> Path:
    """A file laid out as pySCENIC 0.12's ``export2loom`` lays it out through loompy:
    ``create_structure_array(df)`` records (field names the DataFrame's columns, field
    dtypes its dtypes), loompy's gzip-2 (64, 64) matrix, ``CellID``/``Gene`` strings."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "matrix",
            data=rng.poisson(1.0, (n_genes, n_cells)).astype("f4"),
            chunks=(min(64, n_genes), min(64, n_cells)),
            compression="gzip",
            compression_opts=2,
        )
        for group in ("layers", "row_graphs", "col_graphs", "attrs"):
            f.create_group(group)
        f["attrs"]["LOOM_SPEC_VERSION"] = "3.0.0"
        f["attrs"]["MetaData"] = '{"embeddings": [{"id": -1, "name": "tSNE"}]}'
        rows = f.create_group("row_attrs")
        cols = f.create_group("col_attrs")
        rows["Gene"] = np.array([f"g{i}" for i in range(n_genes)], dtype=h5py.string_dtype())
        cols["CellID"] = np.array([f"c{i}" for i in range(n_cells)], dtype=h5py.string_dtype())
        for group, n in ((cols, n_cells), (rows, n_genes)):
            for name, fields in COMPOUND[group.name.strip("/")].items():
                records = np.zeros(n, dtype=fields)
                for field, kind in fields:
                    values = rng.random(n) * 10 if "f" in kind else rng.integers(0, 3, n)
                    records[field] = values
                group.create_dataset(name, data=records, compression="gzip")
    return path


def producer_frame(path: Path, h5path: str) -> pd.DataFrame:
    """What pySCENIC and loomxpy see: the structured array as a DataFrame."""
    with h5py.File(path, "r") as f:
        return pd.DataFrame(f[h5path][()])


def compound_paths(path: Path) -> dict[str, np.dtype]:
    out = {}
    with h5py.File(path, "r") as f:
        for group in ("row_attrs", "col_attrs"):
            for name, obj in f[group].items():
                if obj.dtype.names is not None:
                    out[f"/{group}/{name}"] = obj.dtype
    return out


def assert_same_compound(source: Path, copy: Path, rows: slice = slice(None)) -> None:
    """Every compound attribute of ``source`` is in ``copy`` with the same dtype (fields,
    order, field dtypes) and, read as the producers read it, the same values."""
    want, have = compound_paths(source), compound_paths(copy)
    assert set(have) == set(want), (sorted(want), sorted(have))
    for h5path, dtype in want.items():
        assert have[h5path] == dtype, h5path
        expected = producer_frame(source, h5path)
        found = producer_frame(copy, h5path)
        if h5path.startswith("/col_attrs"):
            found = found.iloc[rows].reset_index(drop=True)
        pd.testing.assert_frame_equal(found, expected, check_exact=True)


PYSCENIC = DATA / "producers" / "pyscenic_export2loom.loom"  # pySCENIC 0.12.1's own export2loom


@pytest.fixture(params=["pyscenic", "pyscenic-0.12.1", "scopeloomr"])
def scope_file(request, tmp_path) -> Path:
    if request.param == "scopeloomr":
        return Path(shutil.copy(SCOPE_R, tmp_path / "scope.loom"))
    if request.param == "pyscenic-0.12.1":
        return Path(shutil.copy(PYSCENIC, tmp_path / "scope.loom"))
    return write_pyscenic_like(tmp_path / "scope.loom")


def quiet_open(path: Path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoomFormatWarning)
        return loomx.open_loom(path)


def test_a_new_file_keeps_compound_attributes(scope_file, tmp_path):
    out = tmp_path / "copy.loom"
    loomx.to_loom(quiet_open(scope_file), out)
    assert_same_compound(scope_file, out)
    # loomxpy picks an embedding by its id as text
    assert np.array_equal(
        producer_frame(out, "/col_attrs/Embeddings_X")["-1"],
        producer_frame(scope_file, "/col_attrs/Embeddings_X")["-1"],
    )


def test_convert_loom_to_loom_keeps_compound_attributes(scope_file, tmp_path):
    out = tmp_path / "converted.loom"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoomFormatWarning)
        convert(scope_file, out)
    assert_same_compound(scope_file, out)


def test_combine_keeps_compound_attributes(scope_file, tmp_path):
    out = tmp_path / "combined.loom"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoomFormatWarning)
        loomx.combine([scope_file, scope_file], out)
    n = quiet_open(scope_file).sizes["col"]
    assert_same_compound(scope_file, out, rows=slice(0, n))
    assert_same_compound(scope_file, out, rows=slice(n, 2 * n))


def test_append_keeps_compound_attributes_in_the_files_field_order(scope_file, tmp_path):
    target = Path(shutil.copy(scope_file, tmp_path / "target.loom"))
    new = quiet_open(scope_file)
    fields = new["RegulonsAUC_dim_1"].values
    new = new.isel(RegulonsAUC_dim_1=np.arange(len(fields))[::-1])  # fields reversed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoomFormatWarning)
        loomx.append(target, new)
    n = new.sizes["col"]
    assert_same_compound(scope_file, target, rows=slice(0, n))
    assert_same_compound(scope_file, target, rows=slice(n, 2 * n))


def test_append_refuses_other_fields(scope_file, tmp_path):
    target = Path(shutil.copy(scope_file, tmp_path / "target.loom"))
    new = quiet_open(scope_file)
    new = new.assign_coords(RegulonsAUC_dim_1=[f"other{i}" for i in new["RegulonsAUC_dim_1"]])
    with pytest.raises(LoomFormatError, match="RegulonsAUC"):
        loomx.append(target, new)
    assert_same_compound(scope_file, target)


def test_write_back_after_a_change_keeps_the_compound_dtype(scope_file, tmp_path):
    target = Path(shutil.copy(scope_file, tmp_path / "target.loom"))
    ds = quiet_open(target).load()
    ds["RegulonsAUC"].values[0, 0] = 0.25
    loomx.to_loom(ds, target, mode="a")
    found = producer_frame(target, "/col_attrs/RegulonsAUC")
    expected = producer_frame(scope_file, "/col_attrs/RegulonsAUC")
    expected.iloc[0, 0] = 0.25
    pd.testing.assert_frame_equal(found, expected, check_exact=True)
    assert compound_paths(target) == compound_paths(scope_file)


def test_a_region_write_keeps_the_compound_dtype_and_refuses_inexact_values(tmp_path):
    path = write_pyscenic_like(tmp_path / "p.loom")
    original = producer_frame(path, "/col_attrs/Clusterings")
    region = quiet_open(path)[["Clusterings"]].isel(col=slice(2, 4)).load()
    fields = list(region["Clusterings_dim_1"].values)
    region = region.isel(Clusterings_dim_1=[2, 0, 1])  # any field order
    region["Clusterings"].values[:] = [[1, 2, 0], [2, 1, 1]]
    loomx.to_loom(region, path, mode="r+", region={"col": slice(2, 4)})
    found = producer_frame(path, "/col_attrs/Clusterings")
    expected = original.copy()
    for k, field in enumerate(fields):
        expected[field] = expected[field].to_numpy().copy()
        expected.loc[2:3, field] = np.array([[2, 0, 1], [1, 1, 2]])[:, k].astype(
            original[field].dtype
        )
    pd.testing.assert_frame_equal(found, expected, check_exact=True)
    region["Clusterings"].values[0, 0] = 300  # field "2" is uint8
    with pytest.raises(LoomFormatError, match=r"Clusterings.*'2' is uint8"):
        loomx.to_loom(region, path, mode="r+", region={"col": slice(2, 4)})
    pd.testing.assert_frame_equal(producer_frame(path, "/col_attrs/Clusterings"), found)


def test_a_value_a_field_cannot_hold_is_refused_naming_the_variable(tmp_path):
    path = write_pyscenic_like(tmp_path / "p.loom")
    ds = quiet_open(path).load()
    ds["Clusterings"].values[0, 1] = 2**40  # field "1" is int32
    with pytest.raises(LoomFormatError, match=r"Clusterings: field '1' is int32"):
        loomx.to_loom(ds, tmp_path / "new.loom")
    assert not (tmp_path / "new.loom").exists()


def test_repack_keeps_compound_attributes(scope_file, tmp_path):
    out = tmp_path / "repacked.loom"
    loomx.repack(scope_file, out)
    assert_same_compound(scope_file, out)


def test_from_arrays_takes_structured_arrays_and_frames(tmp_path):
    records = np.zeros(4, dtype=[("b", "<i4"), ("a", "<f4")])
    records["b"], records["a"] = [1, 2, 3, 4], [0.5, 1.5, 2.5, 3.5]
    frame = pd.DataFrame({"1": np.arange(4.0), "-1": np.arange(4.0) * 2})
    ds = loomx.from_arrays(np.ones((3, 4), "f4"), col_attrs={"C": records, "E": frame})
    loomx.to_loom(ds, tmp_path / "a.loom")
    with h5py.File(tmp_path / "a.loom", "r") as f:
        assert f["col_attrs/C"].dtype == records.dtype
        assert np.array_equal(f["col_attrs/C"][()], records)
        assert f["col_attrs/E"].dtype == np.dtype([("1", "<f8"), ("-1", "<f8")])
    pd.testing.assert_frame_equal(producer_frame(tmp_path / "a.loom", "/col_attrs/E"), frame)


def test_encoding_makes_a_labelled_attribute_compound(tmp_path):
    ds = loomx.from_arrays(np.ones((3, 4), "f4"))
    ds = ds.assign_coords(pcs=(("col", "pc"), np.arange(8.0).reshape(4, 2)), pc=["PC1", "PC2"])
    loomx.to_loom(ds, tmp_path / "c.loom", encoding={"pcs": {"dtype": "compound"}})
    frame = producer_frame(tmp_path / "c.loom", "/col_attrs/pcs")
    assert list(frame.columns) == ["PC1", "PC2"]
    assert frame.dtypes.tolist() == [np.dtype("f8")] * 2
    given = [("PC1", "<f4"), ("PC2", "<f8")]
    loomx.to_loom(ds, tmp_path / "d.loom", encoding={"pcs": {"dtype": given}})
    assert compound_paths(tmp_path / "d.loom")["/col_attrs/pcs"] == np.dtype(given)


def test_a_plain_write_of_labelled_fields_warns(tmp_path):
    ds = loomx.from_arrays(np.ones((3, 4), "f4"))
    ds = ds.assign_coords(pcs=(("col", "pc"), np.zeros((4, 2))), pc=["PC1", "PC2"])
    with pytest.warns(LoomFormatWarning, match=r"/col_attrs/pcs.*labels of 'pc'"):
        loomx.to_loom(ds, tmp_path / "c.loom")


def test_to_anndata_maps_compound_attributes_to_frames(scope_file, tmp_path):
    adata = loomx.to_anndata(quiet_open(scope_file))
    auc = adata.obsm["RegulonsAUC"]
    expected = producer_frame(scope_file, "/col_attrs/RegulonsAUC")
    assert isinstance(auc, pd.DataFrame)
    pd.testing.assert_frame_equal(auc.reset_index(drop=True), expected, check_exact=True)
    assert list(auc.index) == list(adata.obs_names)
    regulons = adata.varm["Regulons"]
    pd.testing.assert_frame_equal(
        regulons.reset_index(drop=True),
        producer_frame(scope_file, "/row_attrs/Regulons"),
        check_exact=True,
    )


def test_h5ad_and_back_keeps_compound_attributes(scope_file, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoomFormatWarning)
        convert(scope_file, tmp_path / "x.h5ad")
        convert(tmp_path / "x.h5ad", tmp_path / "back.loom")
    assert_same_compound(scope_file, tmp_path / "back.loom")


# --------------------------------------------------------------------------- the corpus


def _anndata_written(path: Path) -> Path:
    """anndata's own ``write_loom`` (through loompy) of scanpy's shipped PBMC data."""
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()[:, :200].copy()
    adata.X = np.asarray(adata.X, dtype=np.float32)
    adata.write_loom(path)
    return path


PRODUCERS = {
    "scopeloomr": lambda tmp: Path(shutil.copy(SCOPE_R, tmp / "p.loom")),
    "pyscenic-export2loom": lambda tmp: write_pyscenic_like(tmp / "p.loom"),
    "pyscenic-0.12.1": lambda tmp: Path(shutil.copy(PYSCENIC, tmp / "p.loom")),
    "kb_python-loompy3": lambda tmp: Path(
        shutil.copy(DATA / "kb_python_genes.loom", tmp / "p.loom")
    ),
    "loomexperiment-2.0.1": lambda tmp: Path(
        shutil.copy(DATA / "LoomExperiment_L1_DRG_20_example.loom", tmp / "p.loom")
    ),
    "loompy3": lambda tmp: Path(shutil.copy(DATA / "loompy_test.loom", tmp / "p.loom")),
    "anndata-write_loom": lambda tmp: _anndata_written(tmp / "p.loom"),
}


def h5py_attrs(path: Path) -> dict[str, np.ndarray]:
    """Every row and column attribute as h5py reads it, text decoded."""
    out = {}
    with h5py.File(path, "r") as f:
        for group in ("row_attrs", "col_attrs"):
            for name, obj in f[group].items():
                raw = obj[()]
                if raw.dtype.kind in "SO":
                    raw = np.array([v.decode() if isinstance(v, bytes) else v for v in raw], object)
                out[f"/{group}/{name}"] = raw
    return out


def assert_same_attrs(source: Path, copy: Path, cols: slice = slice(None)) -> None:
    want, have = h5py_attrs(source), h5py_attrs(copy)
    assert set(want) <= set(have), sorted(set(want) - set(have))
    for h5path, values in want.items():
        found = have[h5path][cols] if h5path.startswith("/col_attrs") else have[h5path]
        assert found.dtype.names == values.dtype.names, h5path
        assert np.array_equal(found, values), h5path


def h5py_matrix(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["matrix"][()]


@pytest.fixture(params=list(PRODUCERS))
def produced(request, tmp_path) -> Path:
    return PRODUCERS[request.param](tmp_path)


def test_every_producers_file_survives_every_path(produced, tmp_path):
    from loomx._read.validate import validate_loom
    from loomx.ops.qc import qc_file

    matrix = h5py_matrix(produced)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = loomx.open_loom(produced)
        np.testing.assert_array_equal(ds["matrix"].values, matrix)  # open
        rewritten = tmp_path / "rewritten.loom"
        loomx.to_loom(ds, rewritten)  # full rewrite
        assert_same_attrs(produced, rewritten)
        np.testing.assert_array_equal(h5py_matrix(rewritten), matrix)
        back = loomx.open_loom(produced).load()  # write-back of one changed value
        back["matrix"].values[0, 0] += 1
        copy = Path(shutil.copy(produced, tmp_path / "copy.loom"))
        loomx.to_loom(back, copy, mode="a")
        changed = matrix.copy()
        changed[0, 0] += 1
        np.testing.assert_array_equal(h5py_matrix(copy), changed)
        assert_same_attrs(produced, copy)
        convert(produced, tmp_path / "x.h5ad")  # h5ad and back
        convert(tmp_path / "x.h5ad", tmp_path / "back.loom")
        np.testing.assert_array_equal(h5py_matrix(tmp_path / "back.loom"), matrix)
        assert compound_paths(tmp_path / "back.loom") == compound_paths(produced)
        qc_file(produced, output=tmp_path / "qc.loom")  # qc into a copy
        np.testing.assert_array_equal(h5py_matrix(tmp_path / "qc.loom"), matrix)
        assert_same_attrs(produced, tmp_path / "qc.loom")
        validate_loom(rewritten)  # validate: reports, never raises
        loomx.combine([produced, produced], tmp_path / "both.loom")  # combine
        both = h5py_matrix(tmp_path / "both.loom")
        np.testing.assert_array_equal(both, np.concatenate([matrix, matrix], axis=1))
        assert_same_attrs(produced, tmp_path / "both.loom", cols=slice(0, matrix.shape[1]))


def test_write_back_of_renamed_fields_stores_the_new_names(scope_file, tmp_path):
    target = Path(shutil.copy(scope_file, tmp_path / "target.loom"))
    ds = quiet_open(target)
    old = list(ds["Embedding_dim_1"].values)
    ds = ds.assign_coords(Embedding_dim_1=["x", "y"])
    loomx.to_loom(ds, target, mode="a")
    found = producer_frame(target, "/col_attrs/Embedding")
    expected = producer_frame(scope_file, "/col_attrs/Embedding").rename(
        columns=dict(zip(old, ["x", "y"], strict=True))
    )
    pd.testing.assert_frame_equal(found, expected, check_exact=True)

from __future__ import annotations

import os
import pickle
import warnings

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import sha256

import loomx
from loomx._read.chunking import band_width, block_bytes, default_chunks
from loomx._read.lazy_arrays import LoomBackendArray
from loomx.testing import write_loom_h5py


def test_loompy_file_values(loompy_file):
    ds = loomx.open_loom(loompy_file["path"])
    for name, expected in loompy_file["layers"].items():
        var = ds["matrix" if name == "" else name]
        assert var.dims == ("row", "col")
        assert var.dtype == expected.dtype
        np.testing.assert_array_equal(var.values, expected)
    np.testing.assert_array_equal(ds["Gene"].values, loompy_file["row_attrs"]["Gene"])
    np.testing.assert_array_equal(ds["CellID"].values, loompy_file["col_attrs"]["CellID"])
    np.testing.assert_allclose(ds["Loadings"].values, loompy_file["row_attrs"]["Loadings"])
    assert ds["Loadings"].dims == ("row", "Loadings_dim_1")
    assert ds["Valid"].dtype == np.uint8
    np.testing.assert_array_equal(ds["Valid"].values, loompy_file["col_attrs"]["Valid"])
    assert ds.attrs["Title"] == "Tëst"
    np.testing.assert_array_equal(ds.attrs["Weights"], np.arange(4.0))
    assert ds.attrs["LOOM_SPEC_VERSION"] == "3.0.0"


def test_reductions_match_numpy_and_loompy(loompy_file):
    import loompy

    ds = loomx.open_loom(loompy_file["path"], chunks={"row": 64, "col": 128})
    matrix = loompy_file["layers"][""]
    np.testing.assert_allclose(ds["matrix"].mean("col").values, matrix.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(ds["matrix"].sum("row").values, matrix.sum(axis=0), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with loompy.connect(loompy_file["path"], "r") as lp:
            (row_sums,) = lp.map([np.sum], axis=0)
            genes = lp.ra.Gene
    np.testing.assert_allclose(ds["matrix"].sum("col").values, row_sums, rtol=1e-6)
    assert len(genes) == ds.sizes["row"]
    assert list(ds["Gene"].values) == list(loompy_file["row_attrs"]["Gene"])  # non-ASCII kept


def test_open_dataset_engine_gives_same_dataset(loompy_file):
    a = loomx.open_loom(loompy_file["path"])
    b = xr.open_dataset(loompy_file["path"], engine="loom", chunks={})
    xr.testing.assert_identical(a, b)
    assert a["matrix"].chunks == b["matrix"].chunks


def test_open_dataset_engine_takes_open_loom_options(loompy_file):
    import inspect

    options = [p for p in inspect.signature(loomx.open_loom).parameters if p != "path"]
    entrypoint = xr.backends.list_engines()["loom"]
    assert set(entrypoint.open_dataset_parameters) == {
        "filename_or_obj",
        "drop_variables",
        *options,
    } - {"chunks"}
    kwargs = {"dims": ("gene", "cell"), "mode": "r", "follow_external": True}
    a = loomx.open_loom(loompy_file["path"], chunks=None, **kwargs)
    b = xr.open_dataset(loompy_file["path"], engine="loom", **kwargs)
    xr.testing.assert_identical(a, b)
    assert b["matrix"].dims == ("gene", "cell")
    dropped = xr.open_dataset(loompy_file["path"], engine="loom", drop_variables="Gene")
    assert "Gene" not in dropped.variables and "CellID" in dropped.variables
    with pytest.raises(TypeError, match="chunk_size"):
        xr.open_dataset(loompy_file["path"], engine="loom", chunk_size=10)
    with pytest.raises(ValueError, match="mode"):
        xr.open_dataset(loompy_file["path"], engine="loom", mode="w")


def test_dims_rename_and_encoding(loompy_file):
    ds = loomx.open_loom(loompy_file["path"], dims=("gene", "cell"))
    assert ds["matrix"].dims == ("gene", "cell")
    assert ds["CellID"].dims == ("cell",)
    assert ds.encoding["loom_dims"] == ("gene", "cell")
    enc = ds["norm"].encoding
    assert enc["loom_path"] == "/layers/norm"
    assert enc["chunksizes"] == (64, 64)
    assert enc["compression"] == "gzip"
    assert enc["dtype"] == np.float64
    assert ds["Gene"].encoding["loom_path"] == "/row_attrs/Gene"
    knn = ds.loom.col_graphs["KNN"]
    assert knn.dims == ("cell", "cell_to")


@pytest.mark.parametrize(
    ("shape", "hdf5_chunks"),
    [((20000, 30000), (64, 64)), ((150, 260), (64, 64)), ((100, 1000), (20, 64)), ((50, 70), None)],
)
def test_default_chunks_are_multiples_and_large(shape, hdf5_chunks):
    chunks = default_chunks(shape, np.dtype("float32"), hdf5_chunks)
    base = hdf5_chunks or (1, shape[1])
    for c, b, s in zip(chunks, base, shape, strict=True):
        assert c == s or c % b == 0
    if shape == (20000, 30000):
        n_tasks = np.prod([-(-s // c) for s, c in zip(shape, chunks, strict=True)])
        assert n_tasks < 200  # vs 147k HDF5 chunks
        assert np.prod(chunks) * 4 <= 64 * 2**20


@pytest.mark.parametrize("length", [1, 50, 1000, 30_000, 2**22, 10**8])
@pytest.mark.parametrize("itemsize", [1, 4, 8])
@pytest.mark.parametrize("step", [None, 1, 7, 64, 4096])
def test_band_width_is_the_widest_band_of_whole_steps_within_a_block(length, itemsize, step):
    line = length * itemsize
    unit = step or 1
    width = band_width(length, itemsize, step)
    assert width >= unit and width % unit == 0  # whole HDF5 chunks, at least one
    if width > unit:
        assert width * line <= block_bytes()
    assert (width + unit) * line > block_bytes()  # one more step would not fit
    split = band_width(length, itemsize, step, split_step=True)
    if unit * line <= block_bytes():
        assert split == width
    else:  # one step alone is too large: whole lines up to a block, at least one
        assert 1 <= split <= unit
        assert split * line <= block_bytes() or split == 1
        assert (split + 1) * line > block_bytes()


def test_dask_chunks_are_multiples_of_hdf5_chunks(tmp_path):
    path = tmp_path / "c.loom"
    matrix = np.arange(300 * 500, dtype=np.float32).reshape(300, 500)
    write_loom_h5py(path, {"": matrix}, chunks=(32, 48))
    ds = loomx.open_loom(path)
    row_chunks, col_chunks = ds["matrix"].chunks
    assert all(c % 32 == 0 for c in row_chunks[:-1]) and all(c % 48 == 0 for c in col_chunks[:-1])
    np.testing.assert_array_equal(ds["matrix"].values, matrix)


def test_contiguous_layers(tmp_path):
    path = tmp_path / "contig.loom"
    matrix = np.arange(40 * 70, dtype=np.int32).reshape(40, 70)
    write_loom_h5py(path, {"": matrix, "x": matrix * 2}, chunks=None)
    ds = loomx.open_loom(path)
    assert ds["matrix"].encoding["chunksizes"] is None
    np.testing.assert_array_equal(ds["x"].values, matrix * 2)
    np.testing.assert_array_equal(
        ds["x"].isel(row=[5, 1, 1], col=slice(3, 60, 7)).values, (matrix * 2)[[5, 1, 1]][:, 3:60:7]
    )


def test_open_reads_no_layer_data_on_declared_huge_matrix(tmp_path):
    path = tmp_path / "huge.loom"
    n, m = 1_000_000, 1_000_000  # 4 TB of float32 declared, nothing allocated
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", shape=(n, m), dtype="float32", chunks=(64, 64))
        for g in ("row_attrs", "col_attrs", "layers", "row_graphs", "col_graphs", "attrs"):
            f.create_group(g)
        f["attrs/LOOM_SPEC_VERSION"] = "3.0.0"
    ds = loomx.open_loom(path)
    assert ds["matrix"].shape == (n, m)
    assert ds["matrix"].data.npartitions < 1_000_000
    assert float(ds["matrix"][:3, :3].sum()) == 0.0


def test_open_reads_no_layer_data(loompy_file, monkeypatch):
    reads = []
    original = LoomBackendArray._raw_getitem

    def spy(self, key):
        reads.append(self.info.h5path)
        return original(self, key)

    monkeypatch.setattr(LoomBackendArray, "_raw_getitem", spy)
    ds = loomx.open_loom(loompy_file["path"])
    _ = xr.open_dataset(loompy_file["path"], engine="loom", chunks={})
    assert list(ds.loom.col_graphs) == ["KNN"]  # listing graphs reads nothing either
    assert reads == []
    ds["matrix"].sum().compute()
    assert "/matrix" in reads


def test_open_never_writes(wild_files_copy):
    for path in wild_files_copy:
        before = (sha256(path), os.stat(path).st_mtime_ns)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = loomx.open_loom(path)
            ds["matrix"].sum().compute()
            ds.close()
        assert (sha256(path), os.stat(path).st_mtime_ns) == before


@pytest.fixture
def wild_files_copy(tmp_path):
    import shutil

    from conftest import WILD_FILES

    out = []
    for f in WILD_FILES:
        shutil.copy(f, tmp_path / f.name)
        out.append(tmp_path / f.name)
    return out


def test_read_only_by_default_allows_other_readers(example_loom):
    ds = loomx.open_loom(example_loom)
    ds["matrix"].sum().compute()
    with h5py.File(example_loom, "r") as f:  # a second reader is not blocked
        assert f["matrix"].shape == ds["matrix"].shape
    with pytest.raises(OSError):
        h5py.File(example_loom, "r+")  # and we never hold it writable


def test_locking_false_and_mode_r_plus(tmp_path, example_loom):
    import shutil

    unlocked = tmp_path / "unlocked.loom"
    shutil.copy(example_loom, unlocked)
    ds = loomx.open_loom(unlocked, locking=False)
    assert float(ds["matrix"].sum()) > 0
    with pytest.raises(loomx.LoomFileError, match="another locking setting"):
        loomx.open_loom(unlocked)
    ds.close()
    copy = tmp_path / "rw.loom"
    shutil.copy(example_loom, copy)
    ds = loomx.open_loom(copy, mode="r+")
    total = float(ds["matrix"].sum())
    assert ds["matrix"].encoding["source"] == str(copy)
    ds.close()
    assert float(loomx.open_loom(copy)["matrix"].sum()) == total
    with pytest.raises(ValueError, match="mode"):
        loomx.open_loom(copy, mode="w")


def test_dataset_pickles_without_handles(example_loom):
    ds = loomx.open_loom(example_loom)
    ds["matrix"].sum().compute()  # handle now open in this process
    clone = pickle.loads(pickle.dumps(ds))
    xr.testing.assert_identical(clone, ds)
    np.testing.assert_array_equal(clone["matrix"].values, ds["matrix"].values)


def test_dask_names_differ_per_open_and_survive_pickling(example_loom):
    """Two opens never share dask keys (one may be persisted while the file changes), and
    a pickled Dataset keeps its keys (its layers still prove unchanged to writers)."""
    from dask.base import tokenize

    from loomx._hdf5.files import CachedFile

    a, b = loomx.open_loom(example_loom), loomx.open_loom(example_loom)
    assert a["matrix"].data.name != b["matrix"].data.name
    assert pickle.loads(pickle.dumps(a))["matrix"].data.name == a["matrix"].data.name
    handle = CachedFile(example_loom)
    assert tokenize(handle) == tokenize(pickle.loads(pickle.dumps(handle)))
    assert tokenize(handle) != tokenize(CachedFile(example_loom))


def test_chunks_none_gives_lazy_numpy(example_loom):
    ds = loomx.open_loom(example_loom, chunks=None)
    assert ds["matrix"].chunks is None
    sub = ds["matrix"].isel(row=[3, 1, 3], col=[10, 2])
    with h5py.File(example_loom, "r") as f:
        expected = f["matrix"][:][[3, 1, 3]][:, [10, 2]]
    np.testing.assert_array_equal(sub.values, expected)


def test_selection_on_both_axes_matches_numpy(example_loom):
    ds = loomx.open_loom(example_loom, chunks={"row": 128, "col": 128})
    with h5py.File(example_loom, "r") as f:
        full = f["matrix"][:]
    rows = np.array([250, 3, 3, 64, 0])
    cols = np.zeros(700, dtype=bool)
    cols[[5, 600, 64, 65, 699]] = True
    got = ds["matrix"].isel(row=rows, col=cols).values
    np.testing.assert_array_equal(got, full[rows][:, cols])
    got = loomx.open_loom(example_loom, chunks=None)["matrix"].isel(row=rows, col=cols).values
    np.testing.assert_array_equal(got, full[rows][:, cols])


def test_name_collisions_are_qualified_and_reversible(tmp_path):
    from loomx._format.names import split_qualified

    path = tmp_path / "clash.loom"
    m = np.ones((3, 4), dtype=np.float32)
    write_loom_h5py(
        path,
        {"": m, "Shared": m * 2, "row": m * 3},
        {"Shared": np.arange(3), "Gene": np.array(["a", "b", "c"]), "matrix": np.arange(3)},
        {"Shared": np.arange(4), "col": np.arange(4)},
    )
    ds = loomx.open_loom(path)
    names = set(ds.variables)
    assert {"layers:Shared", "row_attrs:Shared", "col_attrs:Shared"} <= names
    assert {"layers:row", "col_attrs:col", "row_attrs:matrix", "Gene", "matrix"} <= names
    for name in ("layers:Shared", "row_attrs:Shared", "col_attrs:col", "row_attrs:matrix"):
        space, raw = split_qualified(name)
        assert ds[name].encoding["loom_path"] == f"/{space}/{raw}"
    np.testing.assert_array_equal(ds["layers:row"].values, m * 3)


def test_close_releases_the_file(tmp_path, example_loom):
    import shutil

    path = tmp_path / "c.loom"
    shutil.copy(example_loom, path)
    with loomx.open_loom(path) as ds:
        float(ds["matrix"].sum())
    with h5py.File(path, "r+"):  # nothing of ours holds it any more
        pass
    ds = loomx.open_loom(path)
    float(ds["matrix"].sum())
    ds.close()
    with h5py.File(path, "r+"):
        pass


def test_file_replaced_after_open_is_never_mixed(tmp_path, example_loom):
    import shutil

    from loomx.testing import make_example_loom

    path = tmp_path / "r.loom"
    shutil.copy(example_loom, path)
    with h5py.File(path, "r") as f:
        before = f["layers/ambiguous"][:]
    ds = loomx.open_loom(path)
    float(ds["matrix"][:2, :2].sum())  # the handle is open now
    other = make_example_loom(tmp_path / "other.loom", 300, 700, seed=5)
    os.replace(other, path)
    np.testing.assert_array_equal(ds["ambiguous"].values, before)  # still the opened file


def test_attributes_are_read_once(example_loom, monkeypatch):
    from loomx._read.store import LoomStore

    reads = []
    original = LoomStore.read_attr

    def spy(self, attr):
        reads.append(attr.info.h5path)
        return original(self, attr)

    monkeypatch.setattr(LoomStore, "read_attr", spy)
    ds = loomx.open_loom(example_loom)
    assert reads == []
    for view in (ds.isel(col=[1, 2]), ds.isel(col=slice(5, 9)), ds.sortby("ClusterID")):
        assert len(view["CellID"].values) > 0
    for _, group in ds.groupby("ClusterID"):
        assert len(group["CellID"].values) > 0
    ds.loom.aggregate("ClusterID", "sum").compute()
    assert reads.count("/col_attrs/CellID") == 1
    assert reads.count("/col_attrs/ClusterID") == 1


def test_bad_chunks_arguments(example_loom):
    with pytest.raises(ValueError, match=r"not in \('row', 'col'\)"):
        loomx.open_loom(example_loom, chunks={"cell": 100})
    with pytest.raises(ValueError, match="must be an int"):
        loomx.open_loom(example_loom, chunks={"row": (10, 20)})

"""loompy's API walkthrough, value by value: loomx against loompy on the same input."""

from __future__ import annotations

import shutil
import warnings

import dask
import dask.array as da
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import sparse
import xarray as xr

import loomx
from loomx.errors import LoomFormatError, LoomNameError
from loomx.interop import arrays as _create
from loomx.testing import assert_loom_identical

LOOMPY_GLOBALS = ("CreationDate", "last_modified")


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    if not hasattr(np, "in1d"):  # loompy 3.0.8 calls np.in1d, which numpy 2.4 removed
        monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _inputs(n: int = 200, m: int = 300):
    rng = np.random.default_rng(4)
    counts = sp.random(n, m, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    counts.data = np.ceil(counts.data * 20)
    rows = {"Gene": np.array([f"G{i}é" for i in range(n)]), "Len": rng.integers(1, 9, n)}
    cols = {"CellID": np.array([f"c{j}" for j in range(m)]), "Score": rng.random(m)}
    return counts, rows, cols


@pytest.mark.parametrize(
    "kind", ["csr", "csc", "coo", "lil", "csr_array", "pydata", "gcxs", "dense", "dask"]
)
def test_from_arrays_writes_what_loompy_create_writes(tmp_path, kind):
    import loompy

    counts, rows, cols = _inputs()
    dense = counts.toarray()
    given = {
        "csr": counts,
        "csc": counts.tocsc(),
        "coo": counts.tocoo(),
        "lil": counts.tolil(),
        "csr_array": sp.csr_array(counts),
        "pydata": sparse.COO.from_scipy_sparse(counts),
        "gcxs": sparse.GCXS.from_scipy_sparse(counts),
        "dense": dense,
        "dask": da.from_array(dense, chunks=(70, 90)),
    }[kind]
    spliced = (counts * 2).astype(np.int32)
    theirs, ours = tmp_path / "loompy.loom", tmp_path / "loomx.loom"
    loompy.create(str(theirs), {"": counts, "spliced": spliced}, rows, cols)
    ds = loomx.from_arrays(given, rows, cols, layers={"spliced": spliced})
    ds.loom.to_loom(ours)
    assert_loom_identical(ours, theirs, ignore_globals=LOOMPY_GLOBALS)
    with loompy.connect(str(ours), "r") as lp:
        np.testing.assert_array_equal(lp[:, :], dense)


def test_sparse_input_is_made_dense_one_block_at_a_time(tmp_path, monkeypatch):
    counts, rows, cols = _inputs(300, 2000)
    seen: list[tuple[int, int]] = []
    original = _create.SparseBlocks.__getitem__

    def recorded(self, key):
        block = original(self, key)
        seen.append(block.shape)
        return block

    monkeypatch.setattr(_create.SparseBlocks, "__getitem__", recorded)
    with dask.config.set({"array.chunk-size": "256KiB"}):
        ds = loomx.from_arrays(counts, rows, cols)
        ds.loom.to_loom(tmp_path / "x.loom")
    assert len(seen) > 4
    assert max(r * c for r, c in seen) * 4 <= 256 * 2**10  # never the whole matrix
    with h5py.File(tmp_path / "x.loom", "r") as f:
        np.testing.assert_array_equal(f["matrix"][:], counts.toarray())


def test_from_arrays_graphs_frames_and_globals_read_back_in_loompy(tmp_path):
    import loompy

    counts, rows, cols = _inputs()
    m = counts.shape[1]
    knn = sp.random(m, m, density=0.01, format="csr", random_state=1)
    frame = pd.DataFrame(cols)
    ds = loomx.from_arrays(
        counts,
        rows,
        frame,
        col_graphs={"KNN": knn},
        row_graphs={"net": np.eye(counts.shape[0])},
        attrs={"Title": "walkthrough"},
    )
    ds.loom.to_loom(tmp_path / "x.loom")
    with loompy.connect(str(tmp_path / "x.loom"), "r") as lp:
        np.testing.assert_array_equal(lp.col_graphs["KNN"].toarray(), knn.toarray())
        np.testing.assert_array_equal(lp.row_graphs["net"].toarray(), np.eye(counts.shape[0]))
        assert lp.attrs["Title"] == "walkthrough"
        np.testing.assert_array_equal(lp.ca["Score"], cols["Score"])
    back = loomx.open_loom(tmp_path / "x.loom")
    pd.testing.assert_frame_equal(back.loom.attrs_frame("col"), frame)


def test_from_arrays_refuses_shapes_that_do_not_fit():
    counts, rows, _ = _inputs()
    with pytest.raises(LoomFormatError, match=r"/col_attrs/Score: .*expected 300 values"):
        loomx.from_arrays(counts, rows, {"Score": np.zeros(3)})
    with pytest.raises(LoomFormatError, match=r"/layers/x: .*expected the matrix's"):
        loomx.from_arrays(counts, layers={"x": np.zeros((2, 2))})
    with pytest.raises(LoomFormatError, match=r"graph has shape \(5, 5\)"):
        loomx.from_arrays(counts, col_graphs={"g": np.eye(5)})


def test_pick_and_non_unique_gene_symbols(loompy_file):
    import loompy

    ds = loomx.open_loom(loompy_file["path"])
    genes_written = loompy_file["row_attrs"]["Gene"]  # loompy's ra["Gene"] drops non-ASCII
    with loompy.connect(loompy_file["path"], "r") as lp:
        np.testing.assert_array_equal(ds.loom.pick("GeneName", "Gene").values, genes_written)
        np.testing.assert_array_equal(ds.loom.pick("Score", "Nope").values, lp.ra["Score", "Nope"])
        stacked = ds.loom.pick("ClusterID", "Valid")
        expected = np.column_stack([lp.ca["ClusterID"], lp.ca["Valid"]])  # loompy refuses
        np.testing.assert_array_equal(stacked.values, expected)  # to stack int64 and uint8
        assert stacked.dims == ("col", "attribute")
    with pytest.raises(LoomNameError, match="none of"):
        ds.loom.pick("Nope")
    genes = ds["Gene"].values.copy()
    genes[[3, 9]] = "Actb"
    by_symbol = ds.assign_coords(Gene=("row", genes)).set_xindex("Gene")
    hits = by_symbol.sel(Gene="Actb")  # every row with that symbol
    np.testing.assert_array_equal(hits["matrix"].values, loompy_file["layers"][""][[3, 9]])


def _loompy_aggregate(path: str, func: str) -> np.ndarray:
    import loompy

    with loompy.connect(path, "r") as lp:
        return lp.aggregate(group_by="ClusterID", aggr_by=func)


@pytest.mark.parametrize(
    "func", ["sum", "prod", "mean", "median", "std", "var", "max", "min", "first", "last"]
)
def test_aggregate_matches_loompy(loompy_file, func):
    ds = loomx.open_loom(loompy_file["path"], chunks={"row": 64, "col": 64})
    ours = ds.loom.aggregate("ClusterID", func, layers=["matrix"])["matrix"]
    theirs = _loompy_aggregate(loompy_file["path"], func)
    np.testing.assert_allclose(ours.transpose("row", "ClusterID").values, theirs, rtol=1e-5)


def test_permute_writes_the_file_loompy_permute_leaves(tmp_path, loompy_file):
    import loompy

    theirs, ours = tmp_path / "loompy.loom", tmp_path / "loomx.loom"
    shutil.copy(loompy_file["path"], theirs)
    order = np.random.default_rng(0).permutation(260)
    with loompy.connect(str(theirs)) as lp:
        lp.permute(order, axis=1)
    with loomx.open_loom(loompy_file["path"]) as ds:
        ds.loom.permute(order).loom.to_loom(ours)
    # loompy's permute rewrites attributes through its ASCII-only reading: compare strings
    # with the source, everything else with loompy's file
    assert_loom_identical(ours, theirs, attrs=False, graphs=False, ignore_globals=LOOMPY_GLOBALS)
    with loompy.connect(str(theirs), "r") as a, loomx.open_loom(ours) as b:
        for key in ("Score", "Loadings", "ClusterID", "Valid", "Embedding"):
            values = a.ra[key] if key in a.ra else a.ca[key]
            np.testing.assert_array_equal(b[key].values, values, err_msg=key)
        np.testing.assert_array_equal(b["CellID"].values, loompy_file["col_attrs"]["CellID"][order])
    with loompy.connect(str(theirs), "r") as a, loompy.connect(str(ours), "r") as b:
        for name in ("KNN",):
            np.testing.assert_array_equal(
                a.col_graphs[name].toarray(), b.col_graphs[name].toarray()
            )
        np.testing.assert_array_equal(
            a.row_graphs["coexpr"].toarray(), b.row_graphs["coexpr"].toarray()
        )


@pytest.mark.parametrize("layer", ["", "counts_i64", "norm"])
def test_to_scipy_equals_loompy_sparse(loompy_file, layer):
    import loompy

    ds = loomx.open_loom(loompy_file["path"], chunks={"row": 64, "col": 64})
    rows, cols = np.arange(0, 150, 2), np.arange(5, 260, 3)
    with loompy.connect(loompy_file["path"], "r") as lp:
        theirs = lp.layers[layer].sparse()
        theirs_part = lp.layers[layer].sparse(rows, cols)
    name = layer or "matrix"
    ours = ds.loom.to_scipy(name, "coo")
    np.testing.assert_array_equal(ours.toarray(), theirs.toarray())
    part = ds.loom.isel(row=rows, col=cols).loom.to_scipy(name)
    np.testing.assert_array_equal(part.toarray(), theirs_part.toarray())


@pytest.mark.parametrize("dim", ["row", "col"])
def test_scan_matches_loompy_views(loompy_file, dim):
    import loompy

    axis = 0 if dim == "row" else 1
    items = np.arange(0, 150 if axis == 0 else 260, 3)
    ds = loomx.open_loom(loompy_file["path"])
    ours = list(ds.loom.scan(dim=dim, items=items, batch_size=64))
    with loompy.connect(loompy_file["path"], "r") as lp:
        theirs = [
            (ix, sel, view.layers[""][:, :], dict(view.ra), dict(view.ca), view.col_graphs["KNN"])
            for ix, sel, view in lp.scan(items=items, axis=axis, batch_size=64)
        ]
    assert [(s, list(i)) for s, i, _ in ours] == [(ix, list(sel)) for ix, sel, *_ in theirs]
    source = {**loompy_file["row_attrs"], **loompy_file["col_attrs"]}
    for (_, idx, view), (_, _, matrix, ra, ca, knn) in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(view["matrix"].values, matrix)
        np.testing.assert_array_equal(view["counts_i64"].values, matrix.astype(np.int64))
        for key, values in (ra | ca).items():
            if values.dtype.kind in "OUS":  # loompy drops non-ASCII: compare with the source
                scanned = view[key].dims[0] == dim
                values = np.asarray(source[key])[idx] if scanned else np.asarray(source[key])
            np.testing.assert_array_equal(view[key].values, values, err_msg=key)
        graph = view.loom.col_graphs["KNN"].data.todense()
        np.testing.assert_array_equal(graph, knn.toarray())


@pytest.mark.parametrize("dim", ["row", "col"])
def test_map_with_several_functions_matches_loompy(loompy_file, dim):
    import loompy

    funcs = [np.mean, np.std, np.max, np.count_nonzero]
    ds = loomx.open_loom(loompy_file["path"], chunks={"row": 64, "col": 64})
    ours = ds.loom.map_vectors(funcs, dim=dim)
    with loompy.connect(loompy_file["path"], "r") as lp:
        theirs = lp.map(funcs, axis=1 if dim == "row" else 0)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a.values, b, rtol=1e-6)


def test_empty_layer_like_loompy_dtype_assignment(tmp_path, loompy_file):
    import loompy

    theirs, ours = tmp_path / "loompy.loom", tmp_path / "loomx.loom"
    shutil.copy(loompy_file["path"], theirs)
    shutil.copy(loompy_file["path"], ours)
    with loompy.connect(str(theirs)) as lp:
        lp["empty_floats"] = "float32"
    with loomx.open_loom(ours) as ds:
        empty = xr.zeros_like(ds["matrix"], dtype="float32")
        ds.assign(empty_floats=empty).loom.to_loom(ours, mode="a")
    assert_loom_identical(ours, theirs, ignore_globals=LOOMPY_GLOBALS)

"""scan / map / view / permute / aggregate / to_scipy against numpy and loompy."""

from __future__ import annotations

import warnings

import dask
import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import loomx


@pytest.fixture(scope="module")
def arrays(example_loom):
    with h5py.File(example_loom, "r") as f:
        return {
            "matrix": f["matrix"][:],
            "spliced": f["layers/spliced"][:],
            "ClusterID": f["col_attrs/ClusterID"][:],
            "knn": tuple(f[f"col_graphs/KNN/{p}"][:] for p in "abw"),
        }


def dense_graph(a, b, w, n):
    out = np.zeros((n, n))
    np.add.at(out, (a, b), w)
    return out


@pytest.mark.parametrize("batch_size", [None, 100, 64])
def test_scan_covers_every_column_once(example_loom, arrays, batch_size):
    ds = loomx.open_loom(example_loom, chunks={"row": 128, "col": 192})
    seen = []
    for start, idx, view in ds.loom.scan(dim="col", batch_size=batch_size):
        assert idx[0] == start
        assert view["matrix"].dims == ("row", "col")
        assert isinstance(view["matrix"].data, np.ndarray)
        np.testing.assert_array_equal(view["matrix"].values, arrays["matrix"][:, idx])
        np.testing.assert_array_equal(view["spliced"].values, arrays["spliced"][:, idx])
        np.testing.assert_array_equal(view["ClusterID"].values, arrays["ClusterID"][idx])
        np.testing.assert_allclose(
            view.loom.col_graphs["KNN"].data.todense(),
            dense_graph(*arrays["knn"], 700)[np.ix_(idx, idx)],
        )
        if batch_size == 100:  # rounded up to whole 64-wide HDF5 chunks
            assert len(idx) in (128, 700 % 128)
        seen.extend(idx.tolist())
    assert seen == list(range(700))


def test_scan_items_and_rows(example_loom, arrays):
    ds = loomx.open_loom(example_loom)
    items = np.array([650, 3, 3, 64, 0, 200])
    got = {}
    for _, idx, view in ds.loom.scan(dim="col", batch_size=64, items=items, layers=["matrix"]):
        assert list(view.data_vars) == ["matrix"]
        for k, j in enumerate(idx):
            got[int(j)] = view["matrix"].values[:, k]
    assert sorted(got) == sorted(set(items.tolist()))
    for j, column in got.items():
        np.testing.assert_array_equal(column, arrays["matrix"][:, j])
    rows = [idx for _, idx, _ in ds.loom.scan(dim="row", batch_size=128)]
    assert np.concatenate(rows).tolist() == list(range(300))


def test_scan_matches_loompy(example_loom, arrays):
    import loompy

    ds = loomx.open_loom(example_loom)
    ours = {
        int(i): v
        for _, idx, view in ds.loom.scan(dim="col", items=np.arange(0, 700, 3))
        for i, v in zip(idx, view["matrix"].values.T, strict=True)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with loompy.connect(example_loom, "r", validate=False) as lp:
            theirs = {}
            for _, idx, view in lp.scan(
                items=np.arange(0, 700, 3), axis=1, what=["layers", "col_attrs"]
            ):
                for i, v in zip(idx, view[:, :].T, strict=True):
                    theirs[int(i)] = v
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        np.testing.assert_array_equal(value, theirs[key])


def test_map_matches_loompy_and_numpy(example_loom, arrays):
    import loompy

    ds = loomx.open_loom(example_loom)
    mean, sd = ds.loom.map_vectors([np.mean, np.std], dim="col")
    assert mean.name == "mean" and mean.dims == ("row",)
    m = arrays["matrix"].astype(np.float64)
    np.testing.assert_allclose(mean.values, m.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(sd.values, m.std(axis=1), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with loompy.connect(example_loom, "r", validate=False) as lp:
            lp_mean, lp_sd = lp.map([np.mean, np.std], axis=0)
            (lp_col_max,) = lp.map([np.max], axis=1)
    np.testing.assert_allclose(mean.values, lp_mean, rtol=1e-6)
    np.testing.assert_allclose(sd.values, lp_sd, rtol=1e-6)
    (col_max,) = ds.loom.map_vectors([np.max], dim="row")
    assert col_max.dims == ("col",)
    np.testing.assert_allclose(col_max.values, lp_col_max)


def test_view_slices_everything(example_loom, arrays):
    ds = loomx.open_loom(example_loom)
    rows = np.array([5, 1, 299])
    cols = np.zeros(700, bool)
    cols[[3, 4, 5, 690]] = True
    view = ds.loom.isel(row=rows, col=cols)
    np.testing.assert_array_equal(view["matrix"].values, arrays["matrix"][rows][:, cols])
    np.testing.assert_allclose(
        view.loom.col_graphs["KNN"].data.todense(),
        dense_graph(*arrays["knn"], 700)[np.ix_(cols, cols)],
    )
    assert view.loom.row_graphs["coexpr"].shape == (3, 3)


def test_permute_is_lazy_and_carries_graphs(example_loom, arrays):
    ds = loomx.open_loom(example_loom)
    order = np.random.default_rng(0).permutation(700)
    out = ds.loom.permute(order, dim="col")
    assert hasattr(out["matrix"].data, "dask")
    np.testing.assert_array_equal(out["matrix"].values, arrays["matrix"][:, order])
    np.testing.assert_array_equal(out["ClusterID"].values, arrays["ClusterID"][order])
    np.testing.assert_allclose(
        out.loom.col_graphs["KNN"].data.todense(),
        dense_graph(*arrays["knn"], 700)[np.ix_(order, order)],
    )
    with pytest.raises(ValueError, match="permutation"):
        ds.loom.permute(np.zeros(700, int))


@pytest.mark.parametrize("func", ["sum", "mean", "max", "count_nonzero"])
def test_aggregate_matches_numpy(example_loom, arrays, func):
    ds = loomx.open_loom(example_loom, chunks={"row": 64, "col": 128})
    out = ds.loom.aggregate("ClusterID", func, layers=["matrix"])
    labels = arrays["ClusterID"]
    groups = np.unique(labels)
    assert list(out["ClusterID"].values) == list(groups)
    m = arrays["matrix"]
    numpy_func = {"sum": np.sum, "mean": np.mean, "max": np.max, "count_nonzero": np.count_nonzero}[
        func
    ]
    expected = np.stack([numpy_func(m[:, labels == g], axis=1) for g in groups], axis=1)
    np.testing.assert_allclose(
        out["matrix"].transpose("row", "ClusterID").values, expected, rtol=1e-5
    )


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_to_scipy(example_loom, arrays, fmt):
    ds = loomx.open_loom(example_loom, chunks={"row": 64, "col": 192})
    matrix = ds.loom.to_scipy("matrix", fmt)
    assert matrix.format == fmt and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix.toarray(), arrays["matrix"])
    sub = ds.loom.isel(col=slice(10, 20)).loom.to_scipy("spliced")
    np.testing.assert_array_equal(sub.toarray(), arrays["spliced"][:, 10:20])


@given(
    rows=st.integers(32, 300),
    cols=st.integers(64, 700),
    func=st.sampled_from(["sum", "max", "count_nonzero"]),
)
def test_ops_do_not_depend_on_chunks(example_loom, rows, cols, func):
    a = loomx.open_loom(example_loom, chunks={"row": rows, "col": cols})
    b = loomx.open_loom(example_loom, chunks=None)
    np.testing.assert_array_equal(
        a.loom.aggregate("ClusterID", func, layers=["spliced"])["spliced"].values,
        b.loom.aggregate("ClusterID", func, layers=["spliced"])["spliced"].values,
    )
    (x,) = a.loom.map_vectors([np.max], dim="col", layer="spliced")
    (y,) = b.loom.map_vectors([np.max], dim="col", layer="spliced")
    np.testing.assert_array_equal(x.values, y.values)
    assert (a.loom.to_scipy("spliced") != b.loom.to_scipy("spliced")).nnz == 0


def test_ops_on_renamed_dims_and_lazy_layers(example_loom, arrays):
    ds = loomx.open_loom(example_loom, dims=("gene", "cell"), chunks=None)
    (row_max,) = ds.loom.map_vectors([np.max], dim="cell")
    assert row_max.dims == ("gene",)
    np.testing.assert_array_equal(row_max.values, arrays["matrix"].max(axis=1))
    assert ds["matrix"].chunks is None  # map did not load the layer into the Dataset
    np.testing.assert_array_equal(ds.loom.to_scipy().toarray(), arrays["matrix"])
    out = ds.loom.aggregate("ClusterID", "sum", dim="cell", layers=["spliced"])
    assert out["spliced"].dims == ("gene", "ClusterID")
    idx = [i for _, i, _ in ds.loom.scan(dim="cell", batch_size=256)]
    assert np.concatenate(idx).tolist() == list(range(700))
    sub = ds.isel(cell=slice(0, 50)).transpose("cell", "gene", ...)
    assert "matrix" in sub.loom.layers
    np.testing.assert_array_equal(sub.loom.to_scipy("spliced").toarray(), arrays["spliced"][:, :50])


def test_to_scipy_float16(tmp_path):
    from loomx.testing import write_loom_h5py

    m = np.array([[0, 1.5], [2.25, 0]], dtype=np.float16)
    write_loom_h5py(tmp_path / "h.loom", {"": m})
    out = loomx.open_loom(tmp_path / "h.loom").loom.to_scipy()
    np.testing.assert_array_equal(out.toarray(), m.astype(np.float32))


def test_graphs_survive_or_fail_clearly_under_xarray_ops(example_loom):
    import xarray as xr

    ds = loomx.open_loom(example_loom, dims=("gene", "cell"))
    subset = ds[["matrix", "CellID"]]  # drops the edge lists: the graph is gone, not broken
    assert "KNN" not in subset.loom.col_graphs
    merged = xr.merge([ds, ds[["spliced"]]])  # encoding dropped: dims come from the graph
    assert merged.loom.col_graphs["KNN"].dims == ("cell", "cell_to")
    n_edges = ds.sizes["col_graphs:KNN:edge"]
    two_d = (("col_graphs:KNN:edge", "x"), np.ones((n_edges, 2)))
    broken = ds.assign_coords({"col_graphs:KNN:w": two_d})
    with pytest.raises(loomx.LoomFormatError, match="not 1-D edge lists"):
        broken.loom.col_graphs["KNN"]


@pytest.mark.parametrize("layer", ["matrix", "spliced"])
def test_aggregate_median_of_more_columns_than_one_band(example_loom, arrays, layer):
    """The median needs each group whole in one block: with small blocks the 700 columns
    span many bands of block size, and each group's median still equals numpy's."""
    ds = loomx.open_loom(example_loom, chunks={"row": 64, "col": 128})
    with dask.config.set({"array.chunk-size": "64KiB"}):  # bands of 11 rows x 700 columns
        out = ds.loom.aggregate("ClusterID", "median", layers=[layer])
        blocks = out[layer].data.chunks
        medians = out[layer].transpose("row", "ClusterID").values
    assert len(blocks[out[layer].dims.index("row")]) > 1  # computed band by band
    labels, m = arrays["ClusterID"], arrays[layer]
    groups = np.unique(labels)
    assert list(out["ClusterID"].values) == list(groups)
    expected = np.stack([np.median(m[:, labels == g], axis=1) for g in groups], axis=1)
    np.testing.assert_allclose(medians, expected, rtol=1e-6)


def _cytograph_enrichment(matrix: np.ndarray, labels: np.ndarray) -> np.ndarray:
    # cytograph's definition, written out per group: inside against every other column
    scores = []
    for g in np.unique(labels):
        inside, outside = matrix[:, labels == g], matrix[:, labels != g]
        f_in, f_out = (inside != 0).mean(axis=1), (outside != 0).mean(axis=1)
        m_in, m_out = inside.mean(axis=1), outside.mean(axis=1)
        scores.append((f_in + 0.1) / (f_out + 0.1) * (m_in + 0.01) / (m_out + 0.01))
    return np.stack(scores, axis=1)


def test_enrichment_matches_numpy(example_loom, arrays):
    ds = loomx.open_loom(example_loom, chunks={"row": 64, "col": 128})
    scores = ds.loom.enrichment("ClusterID", layer="spliced")
    assert scores.dims == ("row", "ClusterID")
    assert list(scores["ClusterID"].values) == list(np.unique(arrays["ClusterID"]))
    expected = _cytograph_enrichment(arrays["spliced"].astype(np.float64), arrays["ClusterID"])
    np.testing.assert_allclose(scores.values, expected, rtol=1e-10)
    one = ds.assign_coords(ClusterID=("col", np.zeros(ds.sizes["col"], dtype=int)))
    assert np.isnan(one.loom.enrichment("ClusterID").values).all()  # nothing outside

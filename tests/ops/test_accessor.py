"""The ``ds.loom`` accessor against h5py, loompy and scanpy on the same files."""

from __future__ import annotations

import inspect
import warnings

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import xarray as xr

import loomx
from loomx._read.lazy_arrays import LoomBackendArray
from loomx.errors import LoomFormatError, LoomNameError, LoomTypeError
from loomx.ops import accessor, operations
from loomx.ops.accessor import GraphMapping, LoomAccessor
from loomx.testing import make_counts_loom


def stored_graph(path: str, h5path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return tuple(f[f"{h5path}/{p}"][:] for p in "abw")  # type: ignore[return-value]


def test_graph_mapping_gives_matrix_edges_and_scipy(loompy_file):
    ds = loomx.open_loom(loompy_file["path"], dims=("gene", "cell"))
    for graphs, h5path, n, dim in (
        (ds.loom.col_graphs, "/col_graphs/KNN", 260, "cell"),
        (ds.loom.row_graphs, "/row_graphs/coexpr", 150, "gene"),
    ):
        name = h5path.rsplit("/", 1)[1]
        a, b, w = stored_graph(loompy_file["path"], h5path)
        summed = sp.coo_matrix((w, (a, b)), shape=(n, n)).toarray()  # parallel edges add up
        assert graphs.dim == dim and list(graphs) == [name] and len(graphs) == 1
        assert graphs[name].dims == (dim, f"{dim}_to")
        np.testing.assert_array_equal(graphs[name].data.todense(), summed)
        edges = graphs.edges(name)  # the stored edge list: duplicates and order kept
        for part, values in zip("abw", (a, b, w), strict=True):
            np.testing.assert_array_equal(edges[part].values, values, err_msg=part)
        for fmt in ("csr", "csc", "coo"):
            matrix = graphs.to_scipy(name, fmt)
            assert matrix.format == fmt
            np.testing.assert_array_equal(matrix.toarray(), summed)
    knn = ds.loom.col_graphs
    assert knn.to_scipy("KNN")[0, 1] == 3.0  # the two (0, 1) edges, 1.0 and 2.0
    with pytest.raises(LoomNameError, match=r"no graph 'KNN' in row_graphs; found \['coexpr'\]"):
        ds.loom.row_graphs.edges("KNN")
    with pytest.raises(LoomNameError, match="no graph 'nope' in col_graphs"):
        knn.to_scipy("nope")


def test_graph_membership_reads_nothing(loompy_file, monkeypatch):
    reads = []
    original = LoomBackendArray._raw_getitem

    def spy(self, key):
        reads.append(self.info.h5path)
        return original(self, key)

    monkeypatch.setattr(LoomBackendArray, "_raw_getitem", spy)
    ds = loomx.open_loom(loompy_file["path"])
    assert "KNN" in ds.loom.col_graphs and "coexpr" not in ds.loom.col_graphs
    assert "coexpr" in ds.loom.row_graphs
    assert reads == []


@pytest.mark.parametrize("space", ["row", "col"])
def test_graph_assign_writes_what_loompy_reads(tmp_path, loompy_file, space):
    import loompy

    ds = loomx.open_loom(loompy_file["path"])
    n = ds.sizes[space]
    adjacency = sp.random(n, n, density=0.02, random_state=3, format="coo")
    graphs = ds.loom.graphs(space)
    out = graphs.assign("SNN", adjacency)
    assert "SNN" in out.loom.graphs(space) and "SNN" not in ds.loom.graphs(space)
    path = tmp_path / "with_snn.loom"
    out.loom.to_loom(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with loompy.connect(str(path), "r") as lp:
            theirs = (lp.row_graphs if space == "row" else lp.col_graphs)["SNN"]
            np.testing.assert_allclose(theirs.toarray(), adjacency.toarray())
    with pytest.raises(LoomFormatError, match=rf"graph has shape \(3, 3\); expected \({n}, {n}\)"):
        graphs.assign("bad", np.ones((3, 3)))


@pytest.mark.parametrize("dims", [("row", "col"), ("gene", "cell")])
def test_graph_dim_that_is_neither_axis_is_refused(loompy_file, dims):
    """A dim that is neither the row nor the column dim is refused (it used to give the
    column graphs), for reading and for assigning alike, naming the dims expected."""
    ds = loomx.open_loom(loompy_file["path"], dims=dims)
    a, b, _ = stored_graph(loompy_file["path"], "/col_graphs/KNN")
    edges = ds.loom.graphs(dims[1]).edges("KNN")
    np.testing.assert_array_equal(edges["a"].values, a)
    np.testing.assert_array_equal(edges["b"].values, b)
    np.testing.assert_array_equal(ds.loom.graphs(dims[0])["coexpr"].shape, (150, 150))
    expected = rf"no graphs on dim 'typo': .* row dim '{dims[0]}' or the column dim '{dims[1]}'"
    with pytest.raises(LoomNameError, match=expected):
        ds.loom.graphs("typo").edges("KNN")
    with pytest.raises(LoomNameError, match=expected):
        ds.loom.graphs("typo").assign("KNN", sp.eye(ds.sizes[dims[1]]))


def test_pick_refuses_mixed_dtypes_with_a_type_error(loompy_file):
    ds = loomx.open_loom(loompy_file["path"])
    with pytest.raises(LoomTypeError) as caught:
        ds.loom.pick("CellID", "ClusterID")
    assert isinstance(caught.value, TypeError) and not isinstance(caught.value, KeyError)
    message = str(caught.value)
    assert "'CellID' <U" in message or "'CellID' object" in message
    assert f"'ClusterID' {loompy_file['col_attrs']['ClusterID'].dtype}" in message
    assert "expected all numbers" in message
    with pytest.raises(LoomNameError, match="none of"):  # a missing name stays a KeyError
        ds.loom.pick("Nope", "Nada")


def test_map_vectors_is_the_one_name(loompy_file):
    ds = loomx.open_loom(loompy_file["path"], chunks={"row": 64, "col": 64})
    assert not hasattr(ds.loom, "map")
    with h5py.File(loompy_file["path"], "r") as f:
        matrix = f["matrix"][:]
    ours = ds.loom.map_vectors([np.mean, np.max], dim="col", layer="matrix")
    module = operations.map_vectors(ds, [np.mean, np.max], "col", "matrix")
    for got, same, expected in zip(
        ours, module, (matrix.mean(axis=1), matrix.max(axis=1)), strict=True
    ):
        np.testing.assert_allclose(got.values, expected, rtol=1e-6)
        np.testing.assert_array_equal(got.values, same.values)


def test_assign_qc_matches_scanpy_and_the_module_function(tmp_path):
    sc = pytest.importorskip("scanpy")
    anndata = pytest.importorskip("anndata")
    path = make_counts_loom(tmp_path / "counts.loom", 200, 150, seed=2)
    ds = loomx.open_loom(path)
    assert not hasattr(ds.loom, "qc")
    out = ds.loom.assign_qc(mito_prefixes=["MT-"], percent_top=[50])
    assert "total_counts_mt" in out.coords and "total_counts_mt" not in ds.coords
    xr.testing.assert_identical(
        out,
        loomx.assign_qc(
            ds, *loomx.calculate_qc_metrics(ds, "matrix", mito_prefixes=["MT-"], percent_top=[50])
        ),
    )
    with h5py.File(path, "r") as f:
        adata = anndata.AnnData(np.ascontiguousarray(f["matrix"][:].T))
        adata.var["mt"] = np.char.startswith(f["row_attrs/Gene"][:].astype(str), "MT-")
    obs, var = sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=[50])
    for name in obs.columns:
        column = f"col_attrs:{name}" if name in var.columns else name
        np.testing.assert_allclose(out[column].values, obs[name], rtol=1e-6, err_msg=name)
    for name in var.columns:
        row = f"row_attrs:{name}" if name in obs.columns else name
        np.testing.assert_allclose(out[row].values, var[name], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("cls", [LoomAccessor, GraphMapping])
def test_public_accessor_api_is_documented_with_examples(cls):
    own = [n for n in vars(cls) if not n.startswith("_")]
    assert own
    for name in own:
        doc = inspect.getdoc(getattr(cls, name)) or ""
        assert "Examples\n--------\n>>> " in doc, f"{cls.__name__}.{name} has no example"


@pytest.mark.parametrize("module", [accessor, operations])
def test_all_lists_existing_public_names(module):
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert not name.startswith("_") and hasattr(module, name)

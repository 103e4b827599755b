"""loomx._write.append: columns appended to a Loom file equal the concatenation (numpy,
and loompy's ``add_columns``), rows aligned by a key, graphs offset, fill values; errors and
failures midway leave the file byte for byte as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import (
    ACCESSIONS,
    adjacency,
    cells_content,
    chunk_places,
    dense_graph,
    sha256,
    write_cells,
)

import loomx
from loomx._hdf5.filesystem import TEMPORARY_TAG as TMP_TAG
from loomx._read import chunking
from loomx._write import append as _append
from loomx._write import stream as _stream
from loomx.errors import LoomFormatError, LoomNameError, LoomWriteError
from loomx.testing import assert_loom_identical

N, M, K = len(ACCESSIONS), 90, 50


def as_dataset(c: dict) -> xr.Dataset:
    """The content of ``c`` as a Dataset built by hand (loomx's model)."""
    layers = {
        ("matrix" if k == "" else k): (("row", "col"), v.copy()) for k, v in c["layers"].items()
    }
    coords: dict = {k: ("row", v) for k, v in c["row_attrs"].items()}
    for k, v in c["col_attrs"].items():
        coords[k] = ("col", v) if v.ndim == 1 else (("col", f"{k}_dim_1"), v)
    ds = xr.Dataset(layers, coords=coords)
    for name, (a, b, w) in c.get("col_graphs", {}).items():
        ds = ds.loom.col_graphs.assign(name, adjacency(a, b, w, len(c["col_attrs"]["CellID"])))
    return ds


def temp_objects(path: Path) -> list[str]:
    found: list[str] = []
    with h5py.File(path, "r") as f:
        f.visit(lambda name: found.append(name) if TMP_TAG in name else None)
    return found


@pytest.mark.parametrize(
    ("version", "chunks"),
    [("3.0.0", (64, 64)), ("3.0.0", (16, 24)), ("2.0.1", (64, 64)), ("3.0.0", None)],
)
def test_append_equals_concatenation(tmp_path: Path, version: str, chunks) -> None:
    c1, c2 = cells_content(1, M), cells_content(2, K, offset=M)
    path = write_cells(tmp_path / "a.loom", c1, version=version, chunks=chunks)
    loomx.append(path, as_dataset(c2))
    ds = loomx.open_loom(path)
    for name, values in c1["layers"].items():
        got = ds["matrix" if name == "" else name]
        expected = np.hstack([values, c2["layers"][name]])
        assert got.dtype == values.dtype
        np.testing.assert_array_equal(got.values, expected)
    for name, values in c1["col_attrs"].items():
        expected = np.concatenate([values, c2["col_attrs"][name]])
        np.testing.assert_array_equal(ds[name].values, expected.astype(ds[name].dtype))
    assert ds["CellID"].values[-1] == c2["col_attrs"]["CellID"][-1]
    for name, values in c1["row_attrs"].items():
        np.testing.assert_array_equal(ds[name].values, values)
    assert ds.attrs["Title"] == "βeta"
    with h5py.File(path, "r") as f:
        assert f["matrix"].shape == (N, M + K)
        if chunks is not None:
            assert f["matrix"].chunks == tuple(
                min(c, s) for c, s in zip(chunks, (N, M), strict=True)
            )
            assert f["matrix"].compression == "gzip"
        assert not [k for k in f if k.startswith(TMP_TAG)]
        assert not [k for k in f["col_attrs"] if k.startswith(TMP_TAG)]
    if version == "3.0.0":
        import loompy

        assert loompy.LoomValidator().validate(str(path))


def test_append_twice_and_from_open_file(tmp_path: Path) -> None:
    c1, c2 = cells_content(1, M), cells_content(2, K)
    path = write_cells(tmp_path / "a.loom", c1)
    other = write_cells(tmp_path / "b.loom", c2)
    alive = loomx.open_loom(path)
    assert float(alive["matrix"].sum()) == c1["layers"][""].sum()
    source = loomx.open_loom(other)
    loomx.append(path, source)
    loomx.append(path, source)
    ds = loomx.open_loom(path)
    expected = np.hstack([c1["layers"][""], c2["layers"][""], c2["layers"][""]])
    np.testing.assert_array_equal(ds["matrix"].values, expected)
    assert ds.sizes["col"] == M + 2 * K


def test_append_aligned_by_key(tmp_path: Path) -> None:
    c1, c2 = cells_content(1, M), cells_content(2, K)
    path = write_cells(tmp_path / "a.loom", c1)
    order = np.random.default_rng(5).permutation(N)
    shuffled = as_dataset(c2).isel(row=order).drop_vars("Gene")
    before = sha256(path)
    with pytest.raises(LoomFormatError, match="Accession"):
        loomx.append(path, shuffled)
    assert sha256(path) == before
    loomx.append(path, shuffled, key="Accession")
    ds = loomx.open_loom(path)
    for name in ("matrix", "spliced"):
        raw = "" if name == "matrix" else name
        expected = np.hstack([c1["layers"][raw], c2["layers"][raw]])
        np.testing.assert_array_equal(ds[name].values, expected)
    np.testing.assert_array_equal(ds["Accession"].values, ACCESSIONS)


def test_append_from_loompy_file_by_key(tmp_path: Path) -> None:
    import loompy

    c1, c2 = cells_content(1, M), cells_content(2, K)
    path = write_cells(tmp_path / "a.loom", c1)
    order = np.random.default_rng(6).permutation(N)
    other = str(tmp_path / "b.loom")
    loompy.create(
        other,
        {k: v[order] for k, v in c2["layers"].items()},
        {"Accession": ACCESSIONS[order]},
        {k: v for k, v in c2["col_attrs"].items()},
    )
    loomx.append(path, loomx.open_loom(other), key="Accession")
    ds = loomx.open_loom(path)
    np.testing.assert_array_equal(
        ds["matrix"].values, np.hstack([c1["layers"][""], c2["layers"][""]])
    )


def test_graphs_offset(tmp_path: Path) -> None:
    c1, c2 = cells_content(1, M), cells_content(2, K)
    c1["col_graphs"]["OnlyOld"] = (np.array([0, M - 1]), np.array([1, 0]), np.array([2.0, 3.0]))
    path = write_cells(tmp_path / "a.loom", c1)
    new = as_dataset(c2)
    new = new.loom.col_graphs.assign("OnlyNew", adjacency([0, K - 1], [K - 1, 2], [4.0, 5.0], K))
    loomx.append(path, new)
    total = M + K
    a0, b0, w0 = c1["col_graphs"]["KNN"]
    a1, b1, w1 = c2["col_graphs"]["KNN"]
    expected = adjacency(a0, b0, w0, total) + adjacency(a1 + M, b1 + M, w1, total)
    np.testing.assert_allclose(dense_graph(path, "KNN"), expected)
    only_old = adjacency([0, M - 1], [1, 0], [2.0, 3.0], total)
    np.testing.assert_allclose(dense_graph(path, "OnlyOld"), only_old)
    only_new = adjacency([M, M + K - 1], [M + K - 1, M + 2], [4.0, 5.0], total)
    np.testing.assert_allclose(dense_graph(path, "OnlyNew"), only_new)


def test_append_fill_values(tmp_path: Path) -> None:
    c1, c2 = cells_content(1, M), cells_content(2, K)
    path = write_cells(tmp_path / "a.loom", c1)
    new = (
        as_dataset(c2).drop_vars(["spliced", "ClusterID"]).assign_coords(Batch=("col", ["b2"] * K))
    )
    new["extra"] = new["matrix"] + 1
    fills = {"spliced": 7, "ClusterID": -1, "Batch": "b1", "extra": 0.5}
    loomx.append(path, new, fill_values=fills)
    ds = loomx.open_loom(path)
    np.testing.assert_array_equal(ds["spliced"].values[:, M:], 7)
    np.testing.assert_array_equal(ds["spliced"].values[:, :M], c1["layers"]["spliced"])
    np.testing.assert_array_equal(ds["ClusterID"].values[M:], -1)
    assert list(ds["Batch"].values) == ["b1"] * M + ["b2"] * K
    np.testing.assert_array_equal(ds["extra"].values[:, :M], 0.5)
    np.testing.assert_array_equal(ds["extra"].values[:, M:], c2["layers"][""] + 1)
    path2 = write_cells(tmp_path / "b.loom", c1)
    loomx.append(path2, as_dataset(c2).drop_vars("ClusterID"), fill_values="auto")
    np.testing.assert_array_equal(loomx.open_loom(path2)["ClusterID"].values[M:], 0)


def _bad_inputs() -> dict:
    c2 = cells_content(2, K)
    good = as_dataset(c2)
    other_genes = good.assign_coords(Gene=("row", np.array([f"X{i}" for i in range(N)])))
    return {
        "rows": (good.isel(row=slice(0, N - 1)), LoomFormatError, "rows"),
        "row attr": (other_genes, LoomFormatError, "Gene"),
        "new row attr": (good.assign_coords(Chr=("row", np.ones(N))), LoomFormatError, "Chr"),
        "missing layer": (good.drop_vars("spliced"), LoomFormatError, "spliced"),
        "extra layer": (good.assign(extra=good["matrix"]), LoomFormatError, "extra"),
        "missing attr": (good.drop_vars("ClusterID"), LoomFormatError, "ClusterID"),
        "extra attr": (good.assign_coords(New=("col", np.ones(K))), LoomFormatError, "New"),
        "attr kind": (
            good.assign_coords(ClusterID=("col", ["x"] * K)),
            LoomFormatError,
            "ClusterID",
        ),
        "dtype": (good.assign(spliced=good["spliced"].astype("float64")), LoomFormatError, "cast"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_errors_leave_file_identical(tmp_path: Path, case: str) -> None:
    path = write_cells(tmp_path / "a.loom", cells_content(1, M))
    bad, error, match = _bad_inputs()[case]
    before = sha256(path)
    with pytest.raises(error, match=match):
        loomx.append(path, bad)
    assert sha256(path) == before


@pytest.mark.parametrize(
    ("key", "change", "error"),
    [
        ("Nope", None, LoomNameError),
        ("Gene", "dup", LoomFormatError),
        ("Accession", "missing", LoomFormatError),
    ],
)
def test_bad_key_leaves_file_identical(tmp_path: Path, key: str, change, error) -> None:
    c1 = cells_content(1, M)
    if change == "dup":
        c1["row_attrs"]["Gene"] = np.array(["same"] * N)
    path = write_cells(tmp_path / "a.loom", c1)
    new = as_dataset(cells_content(2, K)).drop_vars("Gene")
    if change == "missing":
        new = new.assign_coords(Accession=("row", np.array([f"Z{i}" for i in range(N)])))
    elif change == "dup":
        new = new.assign_coords(Gene=("row", np.array(["same"] * N)))
    before = sha256(path)
    with pytest.raises(error):
        loomx.append(path, new, key=key)
    assert sha256(path) == before


def _raise_after(monkeypatch, target, attr: str, calls: int) -> list:
    original = getattr(target, attr)
    seen: list = []

    def flaky(*args, **kwargs):
        seen.append(1)
        if len(seen) == calls + 1:
            raise OSError("disk on fire")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, attr, flaky)
    return seen


@pytest.mark.parametrize(
    ("target", "attr", "calls"),
    [
        (_stream.Sink, "__setitem__", 1),  # some new columns were already written
        (_append, "create_attr", 2),  # every layer complete, some attributes written
        (h5py.File, "flush", 0),  # everything staged, not yet committed
    ],
)
def test_failure_midway_keeps_original(tmp_path: Path, monkeypatch, target, attr, calls) -> None:
    monkeypatch.setattr(chunking, "BLOCK_BYTES", 4096)  # many small blocks
    c1, c2 = cells_content(1, M), cells_content(2, K)
    path = write_cells(tmp_path / "a.loom", c1, chunks=(16, 16))
    before = tmp_path / "before.loom"
    shutil.copy(path, before)
    seen = _raise_after(monkeypatch, target, attr, calls)
    with pytest.raises(LoomWriteError, match="disk on fire"):
        loomx.append(path, as_dataset(c2))
    assert len(seen) > calls
    monkeypatch.undo()
    assert temp_objects(path) == []  # nothing staged is left behind
    assert_loom_identical(path, before)
    ds = loomx.open_loom(path)
    np.testing.assert_array_equal(ds["matrix"].values, c1["layers"][""])
    np.testing.assert_array_equal(ds["CellID"].values, c1["col_attrs"]["CellID"])
    loomx.append(path, as_dataset(c2))  # and the file still takes the append
    assert loomx.open_loom(path).sizes["col"] == M + K


def test_append_creates_missing_file(tmp_path: Path) -> None:
    c2 = cells_content(2, K)
    path = tmp_path / "new.loom"
    loomx.append(path, as_dataset(c2))
    np.testing.assert_array_equal(loomx.open_loom(path)["matrix"].values, c2["layers"][""])


def test_batches_appended_in_place_like_loompy_add_columns(tmp_path: Path) -> None:
    """Batch after batch: earlier chunks keep their bytes and place; the file equals
    loompy's ``new`` + ``add_columns`` loop."""
    import loompy

    ours, theirs = tmp_path / "ours.loom", tmp_path / "theirs.loom"
    batches = [cells_content(30 + i, w, offset=100 * i) for i, w in enumerate((50, 70, 64, 1, 90))]
    for i, c in enumerate(batches):  # ASCII: loompy's add_columns drops other characters
        del c["col_graphs"]
        c["row_attrs"] = {"Accession": np.array([f"ENSG{j:05d}" for j in range(N)])}
        c["col_attrs"]["CellID"] = np.array(
            [f"b{i}c{j}" for j in range(len(c["col_attrs"]["Valid"]))]
        )
    with loompy.new(str(theirs)) as lp:
        for c in batches:
            layers = {k: v for k, v in c["layers"].items()}
            lp.add_columns(layers, c["col_attrs"], row_attrs=c["row_attrs"])
    width = 0
    for c in batches:
        grown = ("matrix", "layers/spliced", "col_attrs/ClusterID", "col_attrs/CellID")
        before = {h: chunk_places(ours, h) for h in grown} if width else {}
        loomx.append(ours, as_dataset(c))
        for h5path, places in before.items():
            after = chunk_places(ours, h5path)
            with h5py.File(ours, "r") as f:
                step = f[h5path].chunks[-1 if "layers" in h5path or h5path == "matrix" else 0]
            edge = width // step * step  # the chunk column holding the old edge is rewritten
            axis = 0 if "col_attrs" in h5path else 1
            kept = {k: v for k, v in places.items() if k[axis] < edge}
            assert {k: after[k] for k in kept} == kept, h5path
        width += c["layers"][""].shape[1]
        with h5py.File(ours, "r") as f:
            assert f["matrix"].shape == (N, width)
            assert not [k for k in f["layers"] if TMP_TAG in k]
    assert_loom_identical(ours, theirs, ignore_globals=("CreationDate", "last_modified"))

"""loomx._write.combine: files concatenated along columns equal numpy's concatenation and
loompy.combine on the same files (rows aligned by a key), graphs offset, aligned chunks
copied raw; bad input leaves no output."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import (
    ACCESSIONS,
    adjacency,
    cells_content,
    dense_graph,
    write_cells,
)

import loomx
from loomx._write import combine as cb
from loomx.errors import LoomFormatError, LoomNameError

N, M, K = len(ACCESSIONS), 90, 50


def loompy_files(tmp_path: Path, sizes=(60, 45, 80)) -> tuple[list[str], list[dict], list]:
    """Files written by loompy, rows of the second and later ones shuffled."""
    import loompy

    paths, contents, orders = [], [], []
    for i, m in enumerate(sizes):
        c = cells_content(10 + i, m, offset=sum(sizes[:i]))
        order = np.arange(N) if i == 0 else np.random.default_rng(i).permutation(N)
        path = str(tmp_path / f"in{i}.loom")
        loompy.create(
            path,
            {k: v[order] for k, v in c["layers"].items()},
            {k: v[order] for k, v in c["row_attrs"].items()},
            {k: v for k, v in c["col_attrs"].items() if v.ndim == 1},
        )
        paths.append(path)
        contents.append(c)
        orders.append(order)
    return paths, contents, orders


def test_combine_vs_numpy_and_loompy(tmp_path: Path) -> None:
    import loompy

    paths, contents, _ = loompy_files(tmp_path)
    out = tmp_path / "out.loom"
    cb.combine(paths, out, key="Accession", batch_size=64)
    ds = loomx.open_loom(out)
    for raw, name in (("", "matrix"), ("spliced", "spliced")):
        expected = np.hstack([c["layers"][raw] for c in contents])
        np.testing.assert_array_equal(ds[name].values, expected)
    for name in ("CellID", "ClusterID", "Valid"):
        expected = np.concatenate([c["col_attrs"][name] for c in contents])
        np.testing.assert_array_equal(ds[name].values, expected.astype(ds[name].dtype))
    np.testing.assert_array_equal(ds["Accession"].values, ACCESSIONS)
    assert loompy.LoomValidator().validate(str(out))

    reference = str(tmp_path / "loompy.loom")
    loompy.combine(paths, reference, key="Accession")
    with loompy.connect(reference, "r") as ref:
        ref_ds = loomx.open_loom(reference)
        np.testing.assert_array_equal(ds["matrix"].values, ref[:, :])
        np.testing.assert_array_equal(ds["spliced"].values, ref.layers["spliced"][:, :])
        np.testing.assert_array_equal(ds["ClusterID"].values, ref.ca["ClusterID"])
        ascii_only = [s.encode("ascii", "ignore").decode() for s in ds["CellID"].values]
        np.testing.assert_array_equal(ascii_only, ref_ds["CellID"].values)  # loompy drops the rest
        np.testing.assert_array_equal(ds["Accession"].values, ref_ds["Accession"].values)


def test_combine_graphs_and_loomx_files(tmp_path: Path) -> None:
    sizes = (M, K, 30)
    contents = [cells_content(20 + i, m) for i, m in enumerate(sizes)]
    del contents[1]["col_graphs"]
    paths = [write_cells(tmp_path / f"g{i}.loom", c) for i, c in enumerate(contents)]
    out = tmp_path / "out.loom"
    cb.combine(paths, out)
    total = sum(sizes)
    expected = np.zeros((total, total))
    for c, start in zip(contents, np.cumsum((0, *sizes[:-1])), strict=True):
        if "col_graphs" in c:
            a, b, w = c["col_graphs"]["KNN"]
            expected += adjacency(a + start, b + start, w, total)
    np.testing.assert_allclose(dense_graph(out, "KNN"), expected)
    ds = loomx.open_loom(out)
    np.testing.assert_array_equal(
        ds["PCA"].values, np.vstack([c["col_attrs"]["PCA"] for c in contents])
    )
    assert ds.attrs["Title"] == "βeta"


def test_combine_errors(tmp_path: Path) -> None:
    paths, _, _ = loompy_files(tmp_path, sizes=(20, 30))
    out = tmp_path / "out.loom"
    with pytest.raises(LoomNameError, match="Nope"):
        cb.combine(paths, out, key="Nope")
    with pytest.raises(LoomFormatError, match="also an input"):
        cb.combine(paths, paths[1])
    write_cells(
        tmp_path / "x.loom", {**cells_content(3, 10), "layers": {"": np.ones((N, 10), "f4")}}
    )
    with pytest.raises(LoomFormatError, match="spliced"):
        cb.combine([*paths, str(tmp_path / "x.loom")], out)
    assert not out.exists()


@pytest.mark.parametrize("key", [None, "Accession"])
def test_combine_copies_aligned_chunks_raw(tmp_path: Path, monkeypatch, key) -> None:
    """Inputs at chunk-aligned offsets with the same storage are copied raw, others streamed."""
    sizes, chunks = (128, 64, 70, 64), [(64, 64), (64, 64), (64, 64), (32, 32)]
    contents = [cells_content(30 + i, m) for i, m in enumerate(sizes)]
    paths = [
        write_cells(tmp_path / f"r{i}.loom", c, chunks=ch)
        for i, (c, ch) in enumerate(zip(contents, chunks, strict=True))
    ]
    copied: list = []
    original = cb.raw_copy

    def spy(src, dst, col0):
        copied.append(original(src, dst, col0))
        return copied[-1]

    monkeypatch.setattr(cb, "raw_copy", spy)
    out = tmp_path / "out.loom"
    cb.combine(paths, out, key=key, batch_size=48)
    # per layer: files 0, 1, 2 (offsets 0, 128, 192) raw; file 3 (offset 262, other chunks)
    # streamed, also over the part of file 2's last chunk that lies beyond its columns
    assert copied == [True, True, True, False] * 2
    ds = loomx.open_loom(out)
    for raw, name in (("", "matrix"), ("spliced", "spliced")):
        expected = np.hstack([c["layers"][raw] for c in contents])
        np.testing.assert_array_equal(ds[name].values, expected)
    with h5py.File(out, "r") as f:
        assert f["matrix"].chunks == (64, 64) and f["matrix"].compression == "gzip"
        assert f["matrix"].maxshape == (N, None)


@pytest.mark.parametrize("fail", [False, True])
def test_streamed_inputs_are_written_by_the_writer_thread(tmp_path: Path, monkeypatch, fail):
    """Realigned inputs are packed while one writer thread writes the chunks (the output is
    a new file no reader sees until it is complete); a failing chunk write fails the
    combine and leaves no output."""
    from conftest import record_writer_threads, temp_files

    contents = [cells_content(40 + i, m) for i, m in enumerate((70, 64, 90))]
    paths = [write_cells(tmp_path / f"w{i}.loom", c) for i, c in enumerate(contents)]
    writers = record_writer_threads(monkeypatch, fail_at=2 if fail else None)
    out = tmp_path / "out.loom"
    if fail:
        with pytest.raises(OSError, match="disk full"):
            cb.combine(paths, out, key="Accession", batch_size=32)
        assert not out.exists() and temp_files(tmp_path) == []
        return
    cb.combine(paths, out, key="Accession", batch_size=32)
    assert writers and set(writers) == {"loomx-writer"}
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(
            f["matrix"][:], np.hstack([c["layers"][""] for c in contents])
        )

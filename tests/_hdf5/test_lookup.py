"""The chunk index built as reads need it: a read of a few columns of a many-chunk layer
looks up only their cells (local and remote), a big read walks the whole tree once, and
what is found equals h5py's own chunk index; values are compared with h5py."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import chunk_places

from loomx._hdf5 import handles
from loomx._hdf5.chunks import ChunkIndex, read_through_handle
from loomx._hdf5.files import open_h5
from loomx._hdf5.lookup import UNKNOWN, check_known, needed_cells, resolve
from loomx._hdf5.remote import RemoteSource
from loomx.errors import LoomFileError
from loomx.testing.servers import RangeHTTPServer

SHAPE, CHUNKS = (256, 2048), (8, 8)  # 32 x 256 = 8192 chunks


def fine_file(path: Path, holes: bool = False) -> tuple[Path, np.ndarray]:
    """A layer of many small chunks (deflate + shuffle); with ``holes``, some chunks never
    written (they read as the fill value, 3)."""
    rng = np.random.default_rng(1)
    data = (rng.random(SHAPE) * (rng.random(SHAPE) < 0.3) * 100).astype("float32")
    with h5py.File(path, "w") as f:
        dset = f.create_dataset(
            "matrix", SHAPE, "float32", chunks=CHUNKS, compression=2, shuffle=True, fillvalue=3
        )
        if holes:
            dset[:, :1000] = data[:, :1000]
            dset[100:200, 1500:] = data[100:200, 1500:]
            data[:, 1000:] = 3
            data[100:200, 1500:] = dset[100:200, 1500:]
        else:
            dset[...] = data
    return path, data


def cached_index(path: Path) -> ChunkIndex:
    st = os.stat(path)
    key = (os.getpid(), "fd", st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, "/matrix")
    found = handles.CHUNK_INDEXES.get(key, lambda: None)
    assert found is not None
    return found


def local_read(path: Path, key: tuple[slice, ...], picks=None) -> np.ndarray:
    return read_through_handle(
        lambda: open_h5(str(path), "r"), "/matrix", key, str(path), None, picks
    )


def known(index: ChunkIndex) -> int:
    return int((index.offsets != UNKNOWN).sum())


def test_a_few_columns_look_up_only_their_cells(tmp_path):
    path, data = fine_file(tmp_path / "fine.h5")
    out = local_read(path, (slice(None), slice(None)), (1, np.array([700, 5, 703])))
    np.testing.assert_array_equal(out, data[:, [700, 5, 703]])
    index = cached_index(path)
    assert not index.complete
    assert (index.offsets[:, [0, 87]] != UNKNOWN).all()  # two chunk columns, 32 rows each
    found = known(index)
    assert found < 32 * 256 // 2  # their B-tree leaves, not the whole tree
    assert_index_as_h5py(index, path)
    box = (slice(8, 24), slice(16, 40))
    np.testing.assert_array_equal(local_read(path, box), data[box])
    assert known(index) <= found + 2 * 64  # at most two more leaves
    box = (slice(248, 256), slice(2000, 2048))
    np.testing.assert_array_equal(local_read(path, box), data[box])
    assert found < known(index) and not index.complete
    assert_index_as_h5py(index, path)


def assert_index_as_h5py(index: ChunkIndex, path: Path) -> None:
    """Every cell the index knows holds what h5py's chunk index says (-1: no chunk)."""
    places = chunk_places(path, "/matrix")
    for cell in zip(*np.nonzero(index.offsets != UNKNOWN), strict=True):
        r, c = (int(i) * 8 for i in cell)
        offset, size = places.get((r, c), (-1, 0))
        assert (index.offsets[cell], index.sizes[cell]) == (offset, size), cell


def test_a_big_read_walks_the_whole_tree_once(tmp_path):
    path, data = fine_file(tmp_path / "big.h5")
    np.testing.assert_array_equal(local_read(path, (slice(None), slice(0, 200))), data[:, :200])
    index = cached_index(path)
    assert index.complete and known(index) == 32 * 256
    expected = chunk_places(path, "/matrix")
    assert {
        (r * 8, c * 8): (int(index.offsets[r, c]), int(index.sizes[r, c]))
        for r, c in np.ndindex(32, 256)
    } == expected
    np.testing.assert_array_equal(local_read(path, (slice(None), slice(None))), data)


def test_unwritten_chunks_read_as_the_fill_value(tmp_path):
    path, data = fine_file(tmp_path / "holes.h5", holes=True)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["matrix"][()], data)
    cols = np.array([3, 1200, 1600, 2047])
    np.testing.assert_array_equal(local_read(path, (slice(None),), (1, cols)), data[:, cols])
    index = cached_index(path)
    assert not index.complete
    assert (index.offsets[:, 150] == -1).all()  # looked up: not stored
    assert_index_as_h5py(index, path)
    np.testing.assert_array_equal(
        local_read(path, (slice(90, 210), slice(1490, 1530))), data[90:210, 1490:1530]
    )


def test_reading_cells_not_looked_up_is_refused(tmp_path):
    path, data = fine_file(tmp_path / "lazy.h5")
    with h5py.File(path, "r") as f:
        index = ChunkIndex.from_dataset(f["matrix"], lazy=True)
        assert index is not None and known(index) == 0
        with open(path, "rb") as fh:

            def read_at(offset: int, nbytes: int) -> bytes:
                fh.seek(offset)
                return fh.read(nbytes)

            key = (slice(0, 16), slice(0, 16))
            with pytest.raises(LoomFileError, match="incomplete"):
                index.read(read_at, key)
            with pytest.raises(LoomFileError, match="incomplete"):
                index.read_picks(read_at, key, 1, np.array([9]))
            resolve(index, f["matrix"].id, needed_cells(index, key), read_at)
            check_known(index, needed_cells(index, key))
            np.testing.assert_array_equal(index.read(read_at, key), data[:16, :16])
            np.testing.assert_array_equal(index.read(read_at, key, inflater="zlib"), data[:16, :16])
            with pytest.raises(LoomFileError, match="incomplete"):
                index.read(read_at, (slice(200, 256), slice(2000, 2048)), inflater="zlib")


def test_needed_cells_of_boxes_and_picks():
    index = ChunkIndex((100, 50), np.dtype("f4"), (10, 8), 0, (), *(np.zeros((10, 7)),) * 3)
    assert needed_cells(index, (slice(5, 25), slice(None))) == (slice(0, 3), slice(0, 7))
    rows, cols = needed_cells(index, (slice(0, 1), slice(None)), (1, np.array([49, 0, 7, 8])))
    assert rows == slice(0, 1)
    np.testing.assert_array_equal(cols, [0, 1, 6])


def test_remote_first_column_costs_its_own_cells(tmp_path):
    """Over HTTP, the first read of one column fetches the B-tree nodes of its 32 cells and
    its chunks, fewer requests than walking the whole tree; reading it again fetches its
    chunks only (the index is not fetched again)."""
    pytest.importorskip("aiohttp")
    path, data = fine_file(tmp_path / "fine.h5")
    shutil.copy(path, tmp_path / "copy.h5")
    column = [size for (_, c), (_, size) in chunk_places(path, "/matrix").items() if c == 696]
    with RangeHTTPServer(tmp_path) as server:
        source = RemoteSource(server.url("fine.h5"))
        f = source.open_h5()

        def read(col: int) -> np.ndarray:
            key, picks = (slice(None), slice(None)), (1, np.array([col]))
            return read_through_handle(
                lambda: contextlib.nullcontext(f), "/matrix", key, "", source, picks
            )

        server.counts.reset()
        np.testing.assert_array_equal(read(700), data[:, [700]])
        first, _ = server.counts.reset()
        np.testing.assert_array_equal(read(701), data[:, [701]])
        again, again_bytes = server.counts.reset()
        with RemoteSource(server.url("copy.h5")).open_h5() as other:
            server.counts.reset()
            ChunkIndex.from_dataset(other["matrix"])
            whole_tree, _ = server.counts.reset()
        f.close()
    assert len(column) == 32
    assert again <= 32 and sum(column) <= again_bytes <= 2 * sum(column)
    assert first <= 1 + 1 + 3 + 32 + 32 < whole_tree  # header, root, inner, leaves, chunks


def test_other_chunk_indexes_are_walked_by_hdf5(tmp_path):
    """Files in HDF5's newest format (version-2 object headers, other chunk indexes) and
    1-D layers read what h5py reads."""
    rng = np.random.default_rng(2)
    data = rng.random((256, 2048)).astype("float32")
    vector = rng.random(20000)
    with h5py.File(tmp_path / "new.h5", "w", libver="latest") as f:
        f.create_dataset("matrix", data=data, chunks=CHUNKS, compression=1)
    with h5py.File(tmp_path / "vector.h5", "w") as f:
        f.create_dataset("matrix", data=vector, chunks=(8,), compression=1)
    cols = np.array([9, 1999])
    out = local_read(tmp_path / "new.h5", (slice(None),), (1, cols))
    np.testing.assert_array_equal(out, data[:, cols])
    assert cached_index(tmp_path / "new.h5").complete
    out = local_read(tmp_path / "vector.h5", (slice(100, 130),))
    np.testing.assert_array_equal(out, vector[100:130])
    index = cached_index(tmp_path / "vector.h5")
    assert not index.complete and known(index) < 2500 // 2
    assert_index_as_h5py_1d(index, tmp_path / "vector.h5")


def assert_index_as_h5py_1d(index: ChunkIndex, path: Path) -> None:
    places = chunk_places(path, "/matrix")
    for (i,) in zip(*np.nonzero(index.offsets != UNKNOWN), strict=True):
        assert (index.offsets[i], index.sizes[i]) == places[(int(i) * 8,)]


def test_a_damaged_b_tree_node_is_an_error_not_fill_values(tmp_path):
    path, _ = fine_file(tmp_path / "damaged.h5")
    raw = bytearray(path.read_bytes())
    nodes = [i for i in range(len(raw)) if raw[i : i + 4] == b"TREE"]
    for at in nodes[2:]:  # the root and the first inner node intact
        raw[at : at + 4] = b"XXXX"
    path.write_bytes(bytes(raw))
    with pytest.raises(LoomFileError, match="no B-tree node"):
        local_read(path, (slice(None),), (1, np.array([1500])))


def test_full_b_tree_nodes_of_a_loom_file(tmp_path):
    """A Loom file's B-tree has full nodes (64 entries): the walk reads them whole."""
    from loomx._hdf5.chunkio import FileReader
    from loomx.testing import make_example_loom

    path = Path(make_example_loom(tmp_path / "full.loom", 300, 3000, density=0.3))
    raw = path.read_bytes()
    assert 64 in [int.from_bytes(raw[i + 6 : i + 8], "little") for i in _nodes_in(raw)]
    places = chunk_places(path, "/matrix")
    with h5py.File(path, "r") as f:
        for col in range(0, 3000, 64):
            index = ChunkIndex.from_dataset(f["matrix"], lazy=True)
            cells = needed_cells(index, (slice(None), slice(col, col + 1)))
            resolve(index, f["matrix"].id, cells, FileReader.of(path), small_grid=0)
            assert not index.complete and (index.offsets[:, col // 64] >= 0).all()
            for cell in zip(*np.nonzero(index.offsets != UNKNOWN), strict=True):
                r, c = (int(i) * 64 for i in cell)
                assert (index.offsets[cell], index.sizes[cell]) == places.get((r, c), (-1, 0))


def _nodes_in(raw: bytes) -> list[int]:
    """Where B-tree nodes of chunks ("TREE", type 1) start in a file's bytes."""
    found, at = [], raw.find(b"TREE")
    while at >= 0:
        if raw[at + 4] == 1:
            found.append(at)
        at = raw.find(b"TREE", at + 1)
    return found


def test_a_big_remote_read_walks_to_its_cells_a_level_at_a_time(tmp_path):
    """Over HTTP (5 ms per request), a read of a quarter of the columns looks up its cells by
    the B-tree walk, each level's nodes in flight together: no more requests than header,
    root, inner nodes and two leaves per chunk row, many at once; most other cells stay
    unknown (HDF5's own walk would fetch every node of the tree, one at a time)."""
    pytest.importorskip("aiohttp")
    path, data = fine_file(tmp_path / "fine.h5")
    cells_in = [c for (_, c) in chunk_places(path, "/matrix") if c < 512]
    with RangeHTTPServer(tmp_path, delay=0.005) as server:
        source = RemoteSource(server.url("fine.h5"))
        with source.open_h5() as f:
            index = ChunkIndex.from_dataset(f["matrix"], lazy=True)
            server.counts.reset()
            cells = needed_cells(index, (slice(None), slice(0, 512)))
            resolve(index, f["matrix"].id, cells, source)
            in_flight = server.counts.max_in_flight
            requests, _ = server.counts.reset()
            key = (slice(None), slice(0, 512))
            np.testing.assert_array_equal(index.read(source, key), data[key])
            assert_index_as_h5py(index, path)
    assert len(cells_in) == 32 * 64  # a quarter of the 8192 cells
    assert (index.offsets[:, :64] != UNKNOWN).all() and not index.complete
    assert known(index) < 8192 // 2  # the leaves of its cells, not the whole tree
    assert requests <= 2 + 1 + 3 + 2 * 32 and in_flight >= 8  # header, root, inner, leaves

"""loomx._hdf5.batched: the compiled read path (every chunk a read needs gathered, decoded
and placed in one kernel call): boxes and picked rows or columns of 1-D and 2-D datasets,
compared with h5py's reads of the same files for several filter pipelines."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import indexed_dataset, read_region
from hypothesis import given, settings
from hypothesis import strategies as st

from loomx._hdf5.batched import read_box, read_picks
from loomx._hdf5.chunkio import FileReader
from loomx._hdf5.chunks import ChunkIndex
from loomx._hdf5.grid import slice_bounds


@settings(deadline=None, max_examples=60)
@given(
    shape=st.tuples(st.integers(1, 90), st.integers(1, 90)),
    chunks=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    dtype=st.sampled_from(["float32", "int16", "uint8", "float64", ">i4"]),
    shuffle=st.booleans(),
    fletcher32=st.booleans(),
    box=st.tuples(st.integers(0, 89), st.integers(0, 89), st.integers(1, 90), st.integers(1, 90)),
    seed=st.integers(0, 2**16),
)
def test_batched_reads_equal_h5py_and_the_chunkwise_path(
    tmp_path_factory, shape, chunks, dtype, shuffle, fletcher32, box, seed
) -> None:
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) * 100 * (rng.random(shape) < 0.3)).astype(dtype)
    chunks = (min(chunks[0], shape[0]), min(chunks[1], shape[1]))
    path = tmp_path_factory.mktemp("k") / "f.h5"
    index, expected = indexed_dataset(
        path, data, chunks=chunks, compression="gzip", shuffle=shuffle, fletcher32=fletcher32
    )
    r0, c0 = box[0] % shape[0], box[1] % shape[1]
    key = (slice(r0, min(shape[0], r0 + box[2])), slice(c0, min(shape[1], c0 + box[3])))
    got = index.read(FileReader.of(path), key)
    assert got.tobytes() == expected[key].tobytes() and got.dtype == expected.dtype
    slow = index.read(FileReader.of(path), key, inflater="zlib")
    assert slow.tobytes() == got.tobytes()


def test_one_dimensional_and_contiguous_datasets(tmp_path) -> None:
    values = np.arange(1000, dtype=np.int64) * 7
    index, _ = indexed_dataset(tmp_path / "a.h5", values, chunks=(64,), compression="gzip")
    np.testing.assert_array_equal(
        index.read(FileReader.of(tmp_path / "a.h5"), slice(5, 990)), values[5:990]
    )
    matrix = np.arange(120.0).reshape(12, 10)
    index, _ = indexed_dataset(tmp_path / "b.h5", matrix)
    got = index.read(FileReader.of(tmp_path / "b.h5"), (slice(2, 11), slice(3, 9)))
    np.testing.assert_array_equal(got, matrix[2:11, 3:9])


def test_reads_of_every_filter_pipeline_match_h5py_through_read_region(tmp_path) -> None:
    data = np.arange(50 * 70, dtype="<u2").reshape(50, 70) % 17
    for i, kwargs in enumerate(
        [{"compression": "gzip", "shuffle": True, "fletcher32": True}, {"shuffle": True}, {}]
    ):
        path = tmp_path / f"r{i}.h5"
        indexed_dataset(path, data, chunks=(16, 16), **kwargs)
        got = read_region(path, "x", (slice(3, 47), slice(9, 70)))
        np.testing.assert_array_equal(got, data[3:47, 9:70])


@settings(deadline=None, max_examples=60)
@given(
    shape=st.tuples(st.integers(1, 80), st.integers(1, 80)),
    chunks=st.tuples(st.integers(1, 30), st.integers(1, 30)),
    axis=st.integers(0, 1),
    n_picks=st.integers(0, 40),
    shuffle=st.booleans(),
    unwritten=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_picked_rows_and_columns_equal_h5py(
    tmp_path_factory, shape, chunks, axis, n_picks, shuffle, unwritten, seed
) -> None:
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) * 100).astype("float32")
    chunks = (min(chunks[0], shape[0]), min(chunks[1], shape[1]))
    path = tmp_path_factory.mktemp("p") / "f.h5"
    with h5py.File(path, "w") as f:
        dset = f.create_dataset(
            "x",
            shape,
            "float32",
            chunks=chunks,
            compression="gzip",
            shuffle=shuffle,
            fillvalue=-1.5,
        )
        if unwritten:  # only the first half of the rows is ever written
            dset[: shape[0] // 2] = data[: shape[0] // 2]
        else:
            dset[...] = data
    with h5py.File(path, "r") as f:
        expected_all = f["x"][...]
        index = ChunkIndex.from_dataset(f["x"])
    picks = rng.integers(0, shape[axis], n_picks)
    lo = int(rng.integers(0, shape[1 - axis]))
    hi = int(rng.integers(lo, shape[1 - axis])) + 1
    key = (slice(None), slice(lo, hi)) if axis == 0 else (slice(lo, hi), slice(None))
    got = index.read_picks(FileReader.of(path), key, axis, picks)
    expected = expected_all[key]
    expected = expected[picks] if axis == 0 else expected[:, picks]
    assert got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


def test_picks_read_only_the_chunks_that_hold_them(tmp_path) -> None:
    data = np.arange(64 * 640, dtype="int32").reshape(64, 640)
    index, _ = indexed_dataset(tmp_path / "p.h5", data, chunks=(32, 64), compression="gzip")
    calls: list[tuple[int, int]] = []
    reader = FileReader.of(tmp_path / "p.h5")

    class Counting:
        def __call__(self, offset: int, nbytes: int) -> bytes:
            calls.append((offset, nbytes))
            return reader(offset, nbytes)

    picks = np.array([5, 70, 3, 600, 65])  # chunk columns 0, 1 and 9
    got = index.read_picks(Counting(), (slice(None), slice(None)), 1, picks)
    np.testing.assert_array_equal(got, data[:, picks])
    held = index.sizes[:, [0, 1, 9]].sum()
    assert sum(n for _, n in calls) == held
    with pytest.raises(IndexError, match=r"positions in 0\.\.639"):
        index.read_picks(reader, (slice(None), slice(None)), 1, np.array([640]))


PIPELINES = {
    "no filter": {"chunks": True},
    "contiguous": {},
    "shuffle": {"chunks": True, "shuffle": True},
    "fletcher32": {"chunks": True, "fletcher32": True},
    "gzip": {"chunks": True, "compression": "gzip", "compression_opts": 1},
    "shuffle gzip": {"chunks": True, "compression": "gzip", "shuffle": True},
    "shuffle gzip fletcher32": {
        "chunks": True,
        "compression": "gzip",
        "compression_opts": 9,
        "shuffle": True,
        "fletcher32": True,
    },
}


def _dataset(
    path: Path, shape: tuple[int, ...], dtype: str, pipeline: str, partial: bool
) -> tuple[ChunkIndex, np.ndarray]:
    """A dataset with one filter pipeline (chunked 7 x 9 or 10), with only its first
    third written when ``partial`` (a contiguous one: nothing written), the rest reading
    as the fill value 7; and h5py's read of it."""
    kwargs = dict(PIPELINES[pipeline])
    chunked = kwargs.pop("chunks", False)
    if chunked:
        kwargs["chunks"] = (7, 9) if len(shape) == 2 else (10,)
    rng = np.random.default_rng(len(shape))
    data = (rng.random(shape) * 200 * (rng.random(shape) < 0.6)).astype(dtype)
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("x", shape, dtype, fillvalue=7, **kwargs)
        if partial and chunked:
            dset[: shape[0] // 3] = data[: shape[0] // 3]
        elif not partial:
            dset[...] = data
    with h5py.File(path, "r") as f:
        index = ChunkIndex.from_dataset(f["x"])
        assert index is not None
        return index, f["x"][...]


BOXES_2D = [(slice(None), slice(None)), (slice(3, 40), slice(8, 9)), (slice(60, 61), slice(5, 50))]
BOXES_1D = [(slice(None),), (slice(9, 11),), (slice(31, 97),)]


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "int16", ">f8"])
@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_boxes_of_every_pipeline_equal_h5py(
    tmp_path: Path, pipeline: str, dtype: str, partial: bool
) -> None:
    for shape, boxes in [((61, 50), BOXES_2D), ((97,), BOXES_1D)]:
        index, expected = _dataset(tmp_path / "b.h5", shape, dtype, pipeline, partial)
        reader = FileReader.of(tmp_path / "b.h5")
        for key in boxes:
            starts, stops = slice_bounds(index.shape, key)
            out = np.empty([b - a for a, b in zip(starts, stops, strict=True)], index.dtype)
            got = read_box(index, reader, starts, stops, out)
            assert got is out
            assert got.dtype == expected.dtype and got.shape == expected[key].shape
            assert got.tobytes() == expected[key].tobytes(), (shape, key)


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_picks_of_every_pipeline_equal_h5py(tmp_path: Path, pipeline: str, partial: bool) -> None:
    index, expected = _dataset(tmp_path / "p.h5", (61, 50), "<f4", pipeline, partial)
    reader = FileReader.of(tmp_path / "p.h5")
    picks = np.array([60, 0, 13, 13, 6, 7, 44, 2], np.int64)  # unsorted, repeated, edges
    for axis, other in [(0, slice(4, 47)), (1, slice(2, 61)), (0, slice(None)), (1, slice(0, 1))]:
        key = (slice(None), other) if axis == 0 else (other, slice(None))
        starts, stops = slice_bounds(index.shape, key)
        chosen = picks[picks < index.shape[axis]]
        got = read_picks(index, reader, starts, stops, axis, chosen)
        want = expected[key][chosen] if axis == 0 else expected[key][:, chosen]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes(), (axis, other)
    empty = read_picks(index, reader, [0, 0], [61, 50], 1, np.zeros(0, np.int64))
    assert empty.shape == (61, 0)

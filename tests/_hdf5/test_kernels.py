"""Tests for loomx._hdf5.kernels: the compiled batch kernels behind reading and packing chunks.

Values are checked against h5py (reads) and zlib + numpy (packing); the per-chunk Python
paths (``ChunkIndex.read(..., inflater=...)``, ``pack_block(..., codec="zlib")``) must
agree with the kernels bit for bit.
"""

from __future__ import annotations

import threading
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import read_region
from hypothesis import given, settings
from hypothesis import strategies as st

from loomx._hdf5 import codecs as _codecs
from loomx._hdf5 import kernels as _kernels
from loomx._hdf5.chunkio import FileReader
from loomx._hdf5.chunks import ChunkIndex
from loomx.errors import LoomFileError


def test_kernels_are_the_default_paths() -> None:
    """numba and deflate are dependencies: the kernels must run wherever loomx installs."""
    assert _kernels.available()
    assert _codecs.DEFAULT_CODEC == "libdeflate"


def _file(path: Path, data: np.ndarray, **kwargs) -> tuple[ChunkIndex, np.ndarray]:
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data, **kwargs)
    with h5py.File(path, "r") as f:
        index = ChunkIndex.from_dataset(f["x"])
        assert index is not None
        return index, f["x"][...]


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
    index, expected = _file(
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
    index, _ = _file(tmp_path / "a.h5", values, chunks=(64,), compression="gzip")
    np.testing.assert_array_equal(
        index.read(FileReader.of(tmp_path / "a.h5"), slice(5, 990)), values[5:990]
    )
    matrix = np.arange(120.0).reshape(12, 10)
    index, _ = _file(tmp_path / "b.h5", matrix)
    got = index.read(FileReader.of(tmp_path / "b.h5"), (slice(2, 11), slice(3, 9)))
    np.testing.assert_array_equal(got, matrix[2:11, 3:9])


def _corrupt_first_chunk(path: Path, index: ChunkIndex, at: int, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(int(index.offsets.flat[0]) + at)
        f.write(bytes([value]))


@pytest.mark.parametrize(
    ("kwargs", "where", "message"),
    [
        ({"compression": "gzip"}, 3, "cannot be decoded: invalid deflate stream"),
        ({"compression": "gzip", "fletcher32": True}, 40, "fletcher32 checksum"),
        ({"fletcher32": True}, 0, "fletcher32 checksum"),
    ],
)
def test_damaged_chunks_raise_with_the_chunk_offset(tmp_path, kwargs, where, message) -> None:
    rng = np.random.default_rng(1)
    data = rng.random((64, 64)).astype("float32")
    index, _ = _file(tmp_path / "c.h5", data, chunks=(32, 32), **kwargs)
    _corrupt_first_chunk(tmp_path / "c.h5", index, where, 0xFF ^ 0x5A)
    with pytest.raises(LoomFileError, match=message) as err:
        index.read(FileReader.of(tmp_path / "c.h5"))
    assert f"chunk at byte {int(index.offsets.flat[0])}" in str(err.value)


@pytest.mark.parametrize(
    ("size", "message"), [(60, "decodes to 60 bytes, not 64"), (100, "decodes to more than")]
)
def test_chunks_decoding_to_the_wrong_size_raise(tmp_path, size, message) -> None:
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("x", (8, 8), "int32", chunks=(4, 4), compression="gzip")
        for r in (0, 4):
            for c in (0, 4):
                dset.id.write_direct_chunk((r, c), zlib.compress(b"\1" * size))
    with h5py.File(path, "r") as f:
        index = ChunkIndex.from_dataset(f["x"])
    with pytest.raises(LoomFileError, match=message):
        index.read(FileReader.of(path))


def _share_run_beside(monkeypatch, name: str, work) -> float:
    """While kernel ``name`` runs in another thread, the share of its running time in
    which the calling thread also ran Python code: each call is cut into 10 equal parts and
    a part counts when the calling thread ran in it.  A kernel holding the GIL leaves the
    calling thread at most the first part (the hand-over of the GIL as the call starts)."""
    kernel = getattr(_kernels, name)
    spans: list[tuple[int, int]] = []

    def timed(*args):
        start = time.perf_counter_ns()
        kernel(*args)
        spans.append((start, time.perf_counter_ns()))

    monkeypatch.setattr(_kernels, name, timed)
    stamps: list[int] = []
    thread = threading.Thread(target=work)
    thread.start()
    while thread.is_alive():
        stamps.append(time.perf_counter_ns())
    thread.join()
    assert spans, f"{name} was not called"
    ran = np.asarray(stamps)
    parts = [np.linspace(a, b, 11) for a, b in spans]
    occupied = [
        np.unique(np.searchsorted(p, ran[(ran > a) & (ran < b)])).size
        for p, (a, b) in zip(parts, spans, strict=True)
    ]
    return sum(occupied) / (10 * len(spans))


def test_decoding_releases_the_gil(tmp_path, monkeypatch) -> None:
    """Python code in another thread runs while the kernel decodes a read's chunks."""
    rng = np.random.default_rng(2)
    data = (rng.random((4096, 2048)) * (rng.random((4096, 2048)) < 0.2)).astype("float32")
    index, _ = _file(tmp_path / "g.h5", data, chunks=(32, 32), compression="gzip")
    reader = FileReader.of(tmp_path / "g.h5")
    index.read(reader)  # compiled or loaded from the cache before the measured calls

    def work() -> None:
        for _ in range(5):
            index.read(reader)

    assert _share_run_beside(monkeypatch, "decode_chunks", work) >= 0.5


def test_packing_releases_the_gil(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    values = (rng.random((2048, 2048)) * (rng.random((2048, 2048)) < 0.2)).astype("float32")
    _codecs.pack_block(values[:64, :64], (0, 0), (32, 32), values.dtype, 2)

    def work() -> None:
        for _ in range(3):
            _codecs.pack_block(values, (0, 0), (32, 32), values.dtype, 2)

    assert _share_run_beside(monkeypatch, "encode_chunks", work) >= 0.5


@settings(deadline=None, max_examples=40)
@given(
    shape=st.tuples(st.integers(1, 120), st.integers(1, 120)),
    chunk_shape=st.tuples(st.integers(1, 50), st.integers(1, 50)),
    dtype=st.sampled_from(["float32", "int16", "uint8", "float64"]),
    level=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_batched_packing_equals_the_chunkwise_codecs(
    shape, chunk_shape, dtype, level, seed
) -> None:
    rng = np.random.default_rng(seed)
    values = (rng.random(shape) * 9 * (rng.random(shape) < 0.3)).astype(dtype)
    rows = rng.permutation(shape[0])
    fast = _codecs.pack_block(values, (0, 0), chunk_shape, values.dtype, level, rows=rows)
    slow = _codecs.pack_block(
        values, (0, 0), chunk_shape, values.dtype, level, codec="zlib", rows=rows
    )
    assert fast.grid == slow.grid and fast.zeros == slow.zeros
    assert [zlib.decompress(c) for c in fast.chunks] == [zlib.decompress(c) for c in slow.chunks]


def test_reads_of_every_filter_pipeline_match_h5py_through_read_region(tmp_path) -> None:
    data = np.arange(50 * 70, dtype="<u2").reshape(50, 70) % 17
    for i, kwargs in enumerate(
        [{"compression": "gzip", "shuffle": True, "fletcher32": True}, {"shuffle": True}, {}]
    ):
        path = tmp_path / f"r{i}.h5"
        _file(path, data, chunks=(16, 16), **kwargs)
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
    index, _ = _file(tmp_path / "p.h5", data, chunks=(32, 64), compression="gzip")
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

"""Tests for loomx._hdf5.chunks: the chunk index and the fast read path, checked against h5py."""

from __future__ import annotations

import io
import itertools
import os
import pickle
import zlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from conftest import read_region
from hypothesis import given
from hypothesis import strategies as st

from loomx._hdf5 import chunkio as _chunkio
from loomx._hdf5 import handles as _handles
from loomx._hdf5 import pydecode as _pydecode
from loomx._hdf5.chunkio import FileReader
from loomx._hdf5.chunks import DEFAULT_INFLATER, INFLATERS, ChunkIndex
from loomx.errors import LoomFileError

DTYPES = [
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", ">i2", ">i8", ">u4", ">f4", ">f8",
]  # fmt: skip


def _data(shape: tuple[int, ...], dtype: Any, seed: int = 0) -> np.ndarray:
    """Sparse-ish data using the dtype's full range (NaN and inf for floats)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    a = raw.view(dtype).reshape(shape).copy()
    a[rng.random(shape) < 0.6] = 0
    if dtype.kind == "f":
        flat = a.reshape(-1)
        flat[:3] = [np.nan, np.inf, -np.inf][: flat.size]
    return a


def _write(path: Path, data: np.ndarray, name: str = "matrix", **kwargs: Any) -> Path:
    with h5py.File(path, "a") as f:
        f.create_dataset(name, data=data, **kwargs)
    return path


def _assert_identical(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


def _check(path: Path, key: tuple[slice, ...] = (), name: str = "matrix", **kw: Any) -> None:
    with h5py.File(path, "r") as f:
        dset = f[name]
        index = ChunkIndex.from_dataset(dset)
        expected = dset[key] if key else dset[...]
    assert index is not None
    _assert_identical(index.read(FileReader.of(path), key, **kw), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_gzip(tmp_path: Path, dtype: str) -> None:
    path = _write(tmp_path / "a.h5", _data((150, 130), dtype), chunks=(64, 64), compression=2)
    _check(path)
    _check(path, (slice(3, 140), slice(60, 70)))


@pytest.mark.parametrize("dtype", ["int8", "uint16", "int32", "float16", "float64", ">f4"])
def test_every_dtype_contiguous(tmp_path: Path, dtype: str) -> None:
    path = _write(tmp_path / "a.h5", _data((37, 21), dtype))
    with h5py.File(path) as f:
        assert f["matrix"].chunks is None
    _check(path)
    _check(path, (slice(5, 30), slice(2, 19)))


@pytest.mark.parametrize("inflater", INFLATERS)
@pytest.mark.parametrize("level", [1, 2, 9])
def test_gzip_levels_and_inflaters(tmp_path: Path, level: int, inflater: str) -> None:
    path = _write(
        tmp_path / "a.h5", _data((200, 300), "float32"), chunks=(64, 64), compression=level
    )
    _check(path, inflater=inflater)
    _check(path, (slice(50, 190), slice(1, 299)), inflater=inflater)


FILTERS = {
    "none": {},
    "shuffle": {"shuffle": True},
    "fletcher32": {"fletcher32": True},
    "shuffle+gzip": {"shuffle": True, "compression": "gzip"},
    "shuffle+gzip+fletcher32": {"shuffle": True, "compression": "gzip", "fletcher32": True},
    "gzip+fletcher32": {"compression": "gzip", "compression_opts": 9, "fletcher32": True},
}


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32", ">f8", "uint64"])
@pytest.mark.parametrize("filters", FILTERS)
def test_filter_combinations(tmp_path: Path, filters: str, dtype: str) -> None:
    data = _data((90, 77), dtype, seed=3)
    path = _write(tmp_path / "a.h5", data, chunks=(20, 32), **FILTERS[filters])
    _check(path)
    _check(path, (slice(19, 41), slice(31, 33)))


@pytest.mark.parametrize("chunks", [(64, 64), (20, 64), (7, 13), (123, 457), (1, 457), (123, 1)])
def test_chunk_shapes_and_edges(tmp_path: Path, chunks: tuple[int, int]) -> None:
    path = _write(tmp_path / "a.h5", _data((123, 457), "float32"), chunks=chunks, compression=2)
    _check(path)
    for key in [
        (slice(0, 1), slice(456, 457)),
        (slice(122, 123), slice(None)),
        (slice(6, 8), slice(12, 14)),
        (slice(-10, None), slice(-100, -3)),
        (slice(5, 5), slice(None)),
        (slice(60, 70),),
    ]:
        _check(path, key)


@pytest.mark.parametrize("kwargs", [{}, {"chunks": (10,), "compression": 2, "shuffle": True}])
def test_one_dimensional(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    path = _write(tmp_path / "a.h5", _data((95,), "int32"), **kwargs)
    _check(path)
    _check(path, (slice(9, 21),))
    _check(path, (slice(94, 95),))


def test_three_dimensional(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.h5", _data((9, 10, 11), "uint16"), chunks=(4, 3, 5), compression=1)
    _check(path)
    _check(path, (slice(1, 8), slice(2, 3), slice(4, 11)))


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_unallocated_chunks_read_as_fill_value(tmp_path: Path, compression: str | None) -> None:
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            "matrix", (100, 90), "float32", chunks=(16, 16), fillvalue=5, compression=compression
        )
        d[0:10, 0:10] = 1.5
        d[40:70, 33:50] = np.arange(30 * 17, dtype="float32").reshape(30, 17)
    with h5py.File(path) as f:
        index = ChunkIndex.from_dataset(f["matrix"])
    assert index is not None
    assert 0 < int((index.offsets >= 0).sum()) < index.offsets.size
    _check(path)
    _check(path, (slice(8, 50), slice(5, 40)))
    got = index.read(FileReader.of(path), (slice(80, 100), slice(60, 90)))
    assert (got == 5).all()


def test_resized_dataset(tmp_path: Path) -> None:
    path = tmp_path / "a.h5"
    data = _data((40, 30), "uint16")
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            "matrix", data=data, chunks=(16, 16), maxshape=(None, None), compression="gzip"
        )
        d.resize((70, 30))
        d[60:70] = 9
        d.resize((65, 50))
    _check(path)
    _check(path, (slice(30, 65), slice(20, 50)))


def test_unwritten_contiguous_dataset_reads_as_fill_value(tmp_path: Path) -> None:
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", (12, 7), "int16", fillvalue=-3)
    _check(path)
    _check(path, (slice(2, 3), slice(1, 6)))


def test_filter_mask_skips_filters_per_chunk(tmp_path: Path) -> None:
    path = tmp_path / "a.h5"
    block = np.arange(64, dtype="<i4").reshape(8, 8)
    with h5py.File(path, "w") as f:
        d = f.create_dataset("matrix", (16, 8), "<i4", chunks=(8, 8), compression="gzip")
        d.id.write_direct_chunk((0, 0), zlib.compress(block.tobytes()), filter_mask=0)
        d.id.write_direct_chunk((8, 0), (block * 7).tobytes(), filter_mask=1)
    with h5py.File(path) as f:
        index = ChunkIndex.from_dataset(f["matrix"])
        expected = f["matrix"][...]
    assert index is not None
    assert index.masks.ravel().tolist() == [0, 1]
    np.testing.assert_array_equal(expected, np.vstack([block, block * 7]))
    _check(path)


def _low_level(path: Path, data: np.ndarray, chunks: tuple[int, ...], *filters: str) -> None:
    with h5py.File(path, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(chunks)
        for name in filters:
            if name == "deflate":
                dcpl.set_deflate(4)
            else:
                getattr(dcpl, f"set_{name}")()
        space = h5py.h5s.create_simple(data.shape)
        tid = h5py.h5t.py_create(data.dtype)
        dsid = h5py.h5d.create(f.id, b"matrix", tid, space, dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, data)


@pytest.mark.parametrize(
    "pipeline",
    [
        ("fletcher32", "shuffle", "deflate"),
        ("fletcher32", "deflate", "shuffle"),
        ("deflate", "deflate"),
        ("deflate", "shuffle"),
    ],
)
def test_pipeline_order_is_honoured(tmp_path: Path, pipeline: tuple[str, ...]) -> None:
    path = tmp_path / "a.h5"
    _low_level(path, _data((50, 40), "int32"), (16, 16), *pipeline)
    with h5py.File(path) as f:
        index = ChunkIndex.from_dataset(f["matrix"])
    assert index is not None
    assert [code for code, _ in index.filters] == [
        {"deflate": 1, "shuffle": 2, "fletcher32": 3}[p] for p in pipeline
    ]
    _check(path)
    _check(path, (slice(15, 33), slice(3, 17)))


def test_fletcher32_detects_corruption(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.h5", _data((32, 32), "int32", 4), chunks=(16, 16), fletcher32=True)
    with h5py.File(path) as f:
        index = ChunkIndex.from_dataset(f["matrix"])
    assert index is not None
    _check(path)
    offset = int(index.offsets[1, 0])
    with open(path, "r+b") as fh:
        fh.seek(offset + 10)
        byte = fh.read(1)
        fh.seek(offset + 10)
        fh.write(bytes([byte[0] ^ 0x40]))
    with h5py.File(path) as f, pytest.raises(OSError):
        f["matrix"][16:32, 0:16]
    with pytest.raises(LoomFileError, match="fletcher32"):
        index.read(FileReader.of(path), (slice(16, 32), slice(0, 16)))
    np.testing.assert_array_equal(
        index.read(FileReader.of(path), (slice(0, 16),)), _data((32, 32), "int32", 4)[:16]
    )


def test_fletcher32_accepts_byte_swapped_checksum_of_old_writers(tmp_path: Path) -> None:
    block = np.arange(1, 65, dtype="<u2").reshape(8, 8) * 977
    raw = np.frombuffer(block.tobytes(), np.uint8)
    value = _pydecode.fletcher32(raw)
    swapped = ((value & 0x00FF00FF) << 8) | ((value >> 8) & 0x00FF00FF)
    assert swapped != value
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("matrix", (8, 8), "<u2", chunks=(8, 8), fletcher32=True)
        d.id.write_direct_chunk((0, 0), raw.tobytes() + swapped.to_bytes(4, "little"))
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["matrix"][...], block)
    _check(path)


@pytest.mark.parametrize("pattern", ["random", "ones", "zeros"])
@pytest.mark.parametrize("nbytes", [1, 2, 3, 719, 720, 721, 5000])
def test_fletcher32_matches_hdf5(tmp_path: Path, nbytes: int, pattern: str) -> None:
    rng = np.random.default_rng(nbytes)
    raw = rng.integers(0, 256, nbytes, dtype=np.uint8)
    raw[: nbytes // 3] = 255
    if pattern != "random":
        raw[:] = 255 if pattern == "ones" else 0
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("m", (nbytes,), "u1", chunks=(nbytes,), fletcher32=True)
        d[: len(raw)] = raw
    with h5py.File(path) as f:
        info = f["m"].id.get_chunk_info(0)
    with open(path, "rb") as fh:
        fh.seek(info.byte_offset)
        stored = fh.read(info.size)
    data = np.frombuffer(stored[:-4], np.uint8)
    assert _pydecode.fletcher32(data) == int.from_bytes(stored[-4:], "little")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"compression": "lzf", "chunks": (8, 8)},
        {"scaleoffset": 0, "chunks": (8, 8)},
        {"compression": "gzip", "chunks": (8, 8), "dtype": "bool"},
    ],
)
def test_unsupported_datasets_fall_back(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    data = _data((20, 30), "int16", 5)
    path = _write(tmp_path / "a.h5", data, **kwargs)
    with h5py.File(path) as f:
        assert ChunkIndex.from_dataset(f["matrix"]) is None
        expected = f["matrix"][2:15, 3:4]
    _assert_identical(read_region(path, "matrix", (slice(2, 15), slice(3, 4))), expected)


def test_file_type_must_match_the_numpy_type(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.h5", _data((8, 8), "int32"), chunks=(4, 4))

    class OtherType:
        def __init__(self, dsid: Any) -> None:
            self._dsid = dsid

        def get_type(self) -> Any:
            return h5py.h5t.STD_I32BE

        def __getattr__(self, name: str) -> Any:
            return getattr(self._dsid, name)

    class Wrapped:
        def __init__(self, dset: h5py.Dataset) -> None:
            self._dset = dset
            self.id = OtherType(dset.id)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._dset, name)

    with h5py.File(path) as f:
        assert ChunkIndex.from_dataset(f["matrix"]) is not None
        assert ChunkIndex.from_dataset(Wrapped(f["matrix"])) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("inflater", INFLATERS)
@pytest.mark.parametrize(
    "stored", [np.arange(60, dtype="<i4"), np.arange(70, dtype="<i4"), b"garbage!"]
)
def test_chunks_of_the_wrong_size_or_garbage_raise(
    tmp_path: Path, stored: Any, inflater: str
) -> None:
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("matrix", (16, 8), "<i4", chunks=(8, 8), compression="gzip")
        d[0:8] = 1
        payload = stored if isinstance(stored, bytes) else zlib.compress(stored.tobytes())
        d.id.write_direct_chunk((8, 0), payload)
    with h5py.File(path) as f:
        index = ChunkIndex.from_dataset(f["matrix"])
    assert index is not None
    reader = FileReader.of(path)
    assert (index.read(reader, (slice(0, 8),), inflater=inflater) == 1).all()
    with pytest.raises(LoomFileError, match="chunk at byte"):
        index.read(reader, (slice(8, 16),), inflater=inflater)


def test_unsupported_layouts_and_types(tmp_path: Path) -> None:
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("strings", data=np.array([b"a", b"bc"]))
        f.create_dataset("compound", (4,), dtype=[("a", "i4"), ("b", "f8")])
        f.create_dataset("scalar", data=3.0)
        f.create_dataset("external", (10,), "i4", external=[(str(tmp_path / "raw.bin"), 0, 40)])
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        space = h5py.h5s.create_simple((6,))
        h5py.h5d.create(f.id, b"compact", h5py.h5t.NATIVE_INT32, space, dcpl=dcpl)
        layout = h5py.VirtualLayout((10,), "i4")
        layout[:] = h5py.VirtualSource(".", "external", shape=(10,))
        f.create_virtual_dataset("virtual", layout)
        f.create_dataset("fine", (6,), "i4")
        for name in ["strings", "compound", "scalar", "external", "compact", "virtual"]:
            assert ChunkIndex.from_dataset(f[name]) is None, name
        assert ChunkIndex.from_dataset(f["fine"]) is not None


class _CountingReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, nbytes: int) -> bytes:
        self.calls.append((offset, nbytes))
        return self.data[offset : offset + nbytes]


def _image(data: np.ndarray, **kwargs: Any) -> tuple[bytes, ChunkIndex, h5py.File]:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("matrix", data=data, **kwargs)
    image = buf.getvalue()
    f = h5py.File(io.BytesIO(image), "r")
    index = ChunkIndex.from_dataset(f["matrix"])
    assert index is not None
    return image, index, f


def test_every_needed_chunk_is_read_exactly_once() -> None:
    image, index, f = _image(_data((300, 200), "float32"), chunks=(64, 64), compression=2)
    with f:
        key = (slice(70, 250), slice(10, 130))
        reader = _CountingReader(image)
        _assert_identical(index.read(reader, key), f["matrix"][key])
    needed = index.offsets[1:4, 0:3].ravel()
    sizes = index.sizes[1:4, 0:3].ravel()
    covered = sorted(reader.calls)
    for (a, n), (b, _) in itertools.pairwise(covered):
        assert a + n <= b
    assert sum(n for _, n in reader.calls) == sizes.sum()
    for off, size in zip(needed.tolist(), sizes.tolist(), strict=True):
        assert any(a <= off and off + size <= a + n for a, n in reader.calls)


def test_adjacent_chunks_are_read_in_bounded_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    image, index, f = _image(_data((256, 256), "int16"), chunks=(32, 32), compression=1)
    with f:
        expected = f["matrix"][...]
    reader = _CountingReader(image)
    _assert_identical(index.read(reader), expected)
    assert len(reader.calls) < index.offsets.size // 4
    monkeypatch.setattr(_chunkio, "_MAX_RUN", 1000)
    reader = _CountingReader(image)
    _assert_identical(index.read(reader), expected)
    assert sum(n for _, n in reader.calls) == index.sizes.sum()
    assert max(n for _, n in reader.calls) <= 1000 + index.sizes.max()
    assert len(reader.calls) > index.sizes.sum() // 2000


class _BatchReader(_CountingReader):
    """A reader that also fetches many ranges per call, as remote readers do."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.batches: list[list[tuple[int, int]]] = []

    def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        self.batches.append(list(ranges))
        return [self.data[a : a + n] for a, n in ranges]


def test_readers_with_read_ranges_get_every_run_in_one_call() -> None:
    image, index, f = _image(_data((300, 200), "float32"), chunks=(16, 16), compression=2)
    with f:
        key = (slice(5, 290), slice(3, 190))
        reader = _BatchReader(image)
        _assert_identical(index.read(reader, key), f["matrix"][key])
    assert len(reader.batches) == 1 and not reader.calls
    assert sum(n for _, n in reader.batches[0]) == index.sizes[0:19, 0:12].sum()


def test_contiguous_reads_in_bounded_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    image, index, f = _image(_data((50, 9), "float64"))
    with f:
        expected = f["matrix"][7:43, 2:5]
    monkeypatch.setattr(_chunkio, "_MAX_RUN", 3 * 9 * 8)
    reader = _CountingReader(image)
    _assert_identical(index.read(reader, (slice(7, 43), slice(2, 5))), expected)
    assert sum(n for _, n in reader.calls) == 36 * 9 * 8
    assert 12 <= len(reader.calls) <= 13
    assert all(n <= 4 * 9 * 8 for _, n in reader.calls)


def test_short_reads_raise() -> None:
    image, index, f = _image(_data((64, 64), "float32"), chunks=(16, 16), compression=2)
    f.close()
    with pytest.raises(LoomFileError, match="short read"):
        index.read(lambda offset, nbytes: image[offset : offset + nbytes - 1])


def test_key_validation() -> None:
    image, index, f = _image(_data((10, 10), "int8"), chunks=(4, 4))
    reader = _CountingReader(image)
    with f:
        with pytest.raises(ValueError, match="step-1"):
            index.read(reader, (slice(0, 10, 2), slice(None)))
        with pytest.raises(TypeError, match="slices"):
            index.read(reader, (3, slice(None)))
        with pytest.raises(IndexError):
            index.read(reader, (slice(None),) * 3)
        assert index.read(reader, (slice(7, 3), slice(None))).shape == (0, 10)
        assert reader.calls == []


def test_index_and_reader_pickle(tmp_path: Path) -> None:
    data = _data((70, 50), "float64")
    path = _write(tmp_path / "a.h5", data, chunks=(16, 16), compression=2, shuffle=True)
    with h5py.File(path) as f:
        index = ChunkIndex.from_dataset(f["matrix"])
    assert index is not None
    reader = FileReader.of(path)
    index.read(reader)
    index2, reader2 = pickle.loads(pickle.dumps((index, reader)))
    assert b"FileHandle" not in pickle.dumps(reader)
    np.testing.assert_array_equal(index2.read(reader2), data)
    assert len(pickle.dumps(index)) < 4096


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_reader_reopens_after_fork(tmp_path: Path) -> None:
    data = _data((40, 40), "int32")
    path = _write(tmp_path / "a.h5", data, chunks=(8, 8), compression=2)
    reader = FileReader.of(path)
    expected = read_region(path, "matrix", (slice(3, 30),))
    parent_fd = reader.handle.fd
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        ok = (
            reader(0, 8) == path.read_bytes()[:8]
            and np.array_equal(read_region(path, "matrix", (slice(3, 30),)), expected)
            and any(key[0] == os.getpid() for key in _handles._DESCRIPTORS)
        )
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reader.handle.fd == parent_fd
    os.fstat(parent_fd)  # the child closed none of the parent's descriptors
    np.testing.assert_array_equal(expected, data[3:30])


def test_chunk_reader_caches_the_index_per_file_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data((30, 30), "int32", 1)
    path = _write(tmp_path / "a.h5", data, chunks=(8, 8), compression=2)
    builds = []
    original = ChunkIndex.from_dataset.__func__  # type: ignore[attr-defined]

    def counting(
        cls: type[ChunkIndex], dset: h5py.Dataset, lazy: bool = False
    ) -> ChunkIndex | None:
        builds.append(dset.name)
        return original(cls, dset, lazy)

    monkeypatch.setattr(ChunkIndex, "from_dataset", classmethod(counting))
    np.testing.assert_array_equal(read_region(path, "matrix"), data)
    np.testing.assert_array_equal(read_region(str(path), "matrix", (slice(2, 9),)), data[2:9])
    assert len(builds) == 1
    np.testing.assert_array_equal(read_region(path, "/matrix", (slice(3, 4),)), data[3:4])
    assert len(builds) == 2
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    np.testing.assert_array_equal(read_region(path, "matrix"), data)
    assert len(builds) == 3
    np.testing.assert_array_equal(read_region(path, "matrix", (slice(3, 4),)), data[3:4])
    assert len(builds) == 3


def test_chunk_reader_cache_follows_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "a.h5"
    first = _data((30, 30), "int32", 1)
    _write(path, first, chunks=(8, 8), compression=2)
    np.testing.assert_array_equal(read_region(path, "matrix"), first)
    stat = path.stat()
    path.unlink()
    second = _data((30, 30), "int32", 2)
    _write(path, second, chunks=(8, 8), compression=2)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    np.testing.assert_array_equal(read_region(path, "matrix"), second)
    np.testing.assert_array_equal(read_region(path, "matrix", (slice(1, 2),)), second[1:2])


def test_inflaters_listed_fastest_first() -> None:
    assert "zlib" in INFLATERS
    assert INFLATERS[0] == DEFAULT_INFLATER
    order = ["libdeflate", "isal", "zlib"]
    assert list(INFLATERS) == [name for name in order if name in INFLATERS]


def test_index_built_with_get_chunk_info_when_chunk_iter_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("matrix", (50, 50), "f4", chunks=(16, 16), compression=2)
        d[20:50] = _data((30, 50), "float32")

    class NoChunkIter:
        def __init__(self, dsid: Any) -> None:
            self._dsid = dsid

        def chunk_iter(self, callback: Any) -> None:
            raise NotImplementedError

        def __getattr__(self, name: str) -> Any:
            return getattr(self._dsid, name)

    class Wrapped:
        def __init__(self, dset: h5py.Dataset) -> None:
            self._dset = dset
            self.id = NoChunkIter(dset.id)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._dset, name)

    with h5py.File(path) as f:
        fast = ChunkIndex.from_dataset(f["matrix"])
        slow = ChunkIndex.from_dataset(Wrapped(f["matrix"]))  # type: ignore[arg-type]
    assert fast is not None and slow is not None
    np.testing.assert_array_equal(fast.offsets, slow.offsets)
    np.testing.assert_array_equal(fast.sizes, slow.sizes)
    assert (fast.offsets[0] == -1).all()


@st.composite
def _cases(draw: st.DrawFn) -> tuple[np.ndarray, dict[str, Any], tuple[slice, ...]]:
    ndim = draw(st.integers(1, 2))
    shape = tuple(draw(st.integers(1, 60)) for _ in range(ndim))
    dtype = draw(st.sampled_from(DTYPES))
    kwargs: dict[str, Any] = {}
    if draw(st.booleans()):
        kwargs["chunks"] = tuple(draw(st.integers(1, n)) for n in shape)
        kwargs["compression"] = draw(st.sampled_from([None, 1, 2, 9]))
        kwargs["shuffle"] = draw(st.booleans())
        kwargs["fletcher32"] = draw(st.booleans())
    key = []
    for n in shape:
        a = draw(st.integers(-n - 2, n + 2))
        b = draw(st.one_of(st.none(), st.integers(-n - 2, n + 2)))
        key.append(slice(a, b))
    data = _data(shape, dtype, draw(st.integers(0, 3)))
    return data, kwargs, tuple(key)


@given(case=_cases())
def test_random_regions_match_h5py(case: tuple[np.ndarray, dict[str, Any], tuple]) -> None:
    data, kwargs, key = case
    image, index, f = _image(data, **kwargs)
    with f:
        expected = f["matrix"][key]
    reader = _CountingReader(image)
    _assert_identical(index.read(reader, key), expected)
    _assert_identical(index.read(reader), data)


@pytest.mark.parametrize("inflater", [None, DEFAULT_INFLATER])
def test_chunk_offsets_past_the_end_of_the_file_name_the_file(tmp_path, inflater) -> None:
    path = _write(tmp_path / "t.h5", _data((64, 64), "float32"), chunks=(16, 16), compression=2)
    with h5py.File(path, "r") as f:
        index = ChunkIndex.from_dataset(f["matrix"])
    assert index is not None
    index.offsets = index.offsets + os.path.getsize(path)  # an index of a longer file
    with pytest.raises(LoomFileError, match="truncated or corrupt") as err:
        index.read(FileReader.of(path), inflater=inflater)
    assert str(path) in str(err.value)

"""loomx._hdf5.chunkio: the stored bytes of chunks, read in runs of file-adjacent chunks by
every kind of reader, compared with the bytes h5py gives for each chunk
(``get_chunk_info``, ``read_direct_chunk``); reads past the end of the file."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from loomx._hdf5 import chunkio as _chunkio
from loomx._hdf5.chunkio import FileReader, gather_chunks
from loomx.errors import LoomFileError


def _chunked_file(path: Path) -> Path:
    """A gzip-compressed dataset of 8 x 6 chunks of different stored sizes."""
    rng = np.random.default_rng(0)
    data = (rng.random((120, 90)) * 50 * (rng.random((120, 90)) < 0.5)).astype("float32")
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data, chunks=(15, 15), compression="gzip", shuffle=True)
    return path


def _stored_chunks(path: Path) -> list[tuple[int, int, bytes]]:
    """Offset in the file, stored size and stored bytes of every chunk, as h5py gives
    them, by offset in the file."""
    out = []
    with h5py.File(path, "r") as f:
        dset = f["x"]
        for i in range(dset.id.get_num_chunks()):
            info = dset.id.get_chunk_info(i)
            _mask, data = dset.id.read_direct_chunk(info.chunk_offset)
            out.append((info.byte_offset, info.size, bytes(data)))
    return sorted(out)


class _PerRun:
    """A plain ``read_at`` over the file's bytes that records every call."""

    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, nbytes: int) -> bytes:
        self.calls.append((offset, nbytes))
        return self.data[offset : offset + nbytes]


class _Ranges(_PerRun):
    """A reader that fetches every run in one call, as remote readers do."""

    def read_ranges(self, runs: list[tuple[int, int]]) -> list[bytes]:
        self.calls.extend(runs)
        return [self.data[a : a + n] for a, n in runs]


def _assert_gathered(read_at, chunks: list[tuple[int, int, bytes]]) -> None:
    offsets = np.array([c[0] for c in chunks], np.int64)
    sizes = np.array([c[1] for c in chunks], np.int64)
    src, starts = gather_chunks(read_at, offsets, sizes)
    assert src.dtype == np.uint8 and starts.shape == offsets.shape
    for (_, size, stored), start in zip(chunks, starts.tolist(), strict=True):
        assert src[start : start + size].tobytes() == stored


@pytest.mark.parametrize("reader", ["file", "per run", "ranges"])
@pytest.mark.parametrize("which", ["all", "every other", "last"])
def test_gathered_chunks_are_the_stored_bytes(tmp_path: Path, reader: str, which: str) -> None:
    path = _chunked_file(tmp_path / "c.h5")
    chunks = _stored_chunks(path)
    chunks = {"all": chunks, "every other": chunks[::2], "last": chunks[-1:]}[which]
    read_at = {"file": FileReader.of, "per run": _PerRun, "ranges": _Ranges}[reader](path)
    _assert_gathered(read_at, chunks)


def test_adjacent_chunks_are_read_in_one_run(tmp_path: Path) -> None:
    path = _chunked_file(tmp_path / "c.h5")
    chunks = _stored_chunks(path)
    ends = [off + size for off, size, _ in chunks]
    adjacent = sum(nxt == end for end, (nxt, _, _) in zip(ends, chunks[1:], strict=False))
    assert adjacent > len(chunks) // 2  # h5py wrote most chunks one after another
    reader = _PerRun(path)
    _assert_gathered(reader, chunks)
    assert len(reader.calls) == len(chunks) - adjacent  # one read per run
    assert sum(n for _, n in reader.calls) == sum(size for _, size, _ in chunks)
    reader = _PerRun(path)
    _assert_gathered(reader, chunks[::2])  # gaps between all of them: one read each
    assert sorted(reader.calls) == [(off, size) for off, size, _ in chunks[::2]]


def test_runs_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _chunked_file(tmp_path / "c.h5")
    chunks = _stored_chunks(path)
    largest = max(size for _, size, _ in chunks)
    monkeypatch.setattr(_chunkio, "_MAX_RUN", 3 * largest)
    for reader in (_PerRun(path), _Ranges(path)):
        _assert_gathered(reader, chunks)
        assert max(n for _, n in reader.calls) <= 4 * largest
        assert sum(n for _, n in reader.calls) == sum(size for _, size, _ in chunks)
    _assert_gathered(FileReader.of(path), chunks)


def test_file_reader_reads_the_stored_bytes(tmp_path: Path) -> None:
    path = _chunked_file(tmp_path / "c.h5")
    reader = FileReader.of(path)
    clone = pickle.loads(pickle.dumps(reader))  # pickles as the file's path
    for offset, size, stored in _stored_chunks(path):
        assert reader(offset, size) == stored
        assert clone(offset, size) == stored


def test_a_read_past_the_end_of_the_file_names_the_file(tmp_path: Path) -> None:
    path = _chunked_file(tmp_path / "c.h5")
    size = path.stat().st_size
    reader = FileReader.of(path)
    assert reader(size - 10, 10) == path.read_bytes()[-10:]
    for offset, nbytes in [(size - 10, 11), (size, 1), (size + 100, 5)]:
        with pytest.raises(LoomFileError, match="truncated or corrupt") as err:
            reader(offset, nbytes)
        assert err.value.path == str(path) and str(path) in str(err.value)
        with pytest.raises(LoomFileError, match="truncated or corrupt") as err:
            gather_chunks(reader, np.array([0, offset]), np.array([8, nbytes]))
        assert err.value.path == str(path) and str(path) in str(err.value)


def test_a_negative_size_or_offset_is_a_loomx_error(tmp_path: Path) -> None:
    path = _chunked_file(tmp_path / "c.h5")
    reader = FileReader.of(path)
    for offsets, sizes in [([0, 100], [8, -5]), ([-8, 100], [8, 5])]:
        with pytest.raises(LoomFileError, match="non-negative offset and size") as err:
            gather_chunks(reader, np.array(offsets), np.array(sizes))
        assert err.value.path == str(path)


def test_a_short_read_is_an_error(tmp_path: Path) -> None:
    path = _chunked_file(tmp_path / "c.h5")
    chunks = _stored_chunks(path)[:3]
    data = path.read_bytes()
    offsets = np.array([c[0] for c in chunks])
    sizes = np.array([c[1] for c in chunks])
    with pytest.raises(LoomFileError, match="short read"):
        gather_chunks(lambda offset, nbytes: data[offset : offset + nbytes - 1], offsets, sizes)

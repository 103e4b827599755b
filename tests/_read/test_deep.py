"""``loomx validate --deep``: every chunk read with its checksum verified, every string
decoded, in a child process; damaged files compared with what h5py itself reports."""

from __future__ import annotations

import subprocess

import h5py
import numpy as np
import pytest
from conftest import LOOMX_SCRIPT

from loomx._read import deep
from loomx._read.deep import validate_deep
from loomx._read.validate import validate_loom
from loomx.testing import make_counts_loom


def damage_chunk(path, h5path: str, index: int) -> tuple[int, ...]:
    """Add 1 to bytes in the middle of chunk ``index`` of ``h5path``; its offset.  (Not a
    bit flip: fletcher32 cannot tell 0x0000 from 0xFFFF, as h5py's own reads show.)"""
    with h5py.File(path, "r") as f:
        info = f[h5path].id.get_chunk_info(index)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        data = fh.read(4)
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes((b + 1) % 256 for b in data))
    return info.chunk_offset


def h5py_unreadable(path, h5path: str) -> set[tuple[int, ...]]:
    """The chunks h5py fails to read, one by one."""
    bad = set()
    with h5py.File(path, "r") as f:
        dset = f[h5path]
        for index in range(dset.id.get_num_chunks()):
            offset = dset.id.get_chunk_info(index).chunk_offset
            region = tuple(slice(o, o + c) for o, c in zip(offset, dset.chunks, strict=True))
            try:
                dset[region]
            except OSError:
                bad.add(offset)
    return bad


def reported_chunks(problems, h5path: str) -> set[tuple[int, ...]]:
    found = set()
    for problem in problems:
        if problem.h5path == h5path and problem.message.startswith("chunk at ("):
            inside = problem.message[len("chunk at (") : problem.message.index(")")]
            found.add(tuple(int(v) for v in inside.split(", ")))
    return found


@pytest.fixture
def counts(tmp_path):
    return make_counts_loom(tmp_path / "counts.loom", 300, 200, seed=3)


def test_a_valid_file_has_no_problems_and_reports_progress(counts):
    seen = []
    assert validate_deep(counts, progress=lambda done, total: seen.append((done, total))) == []
    assert seen[-1][0] == seen[-1][1] > 0
    with h5py.File(counts, "r+") as f:  # declared, never written: nothing stored to read
        f.create_dataset("layers/empty", shape=(300, 200), dtype="f4", chunks=(64, 64))
    again = []
    assert validate_deep(counts, progress=lambda done, total: again.append((done, total))) == []
    assert again[-1] == seen[-1]


def test_damaged_gzip_chunks_are_the_ones_h5py_cannot_read(counts, monkeypatch):
    monkeypatch.setattr(deep, "BLOCK_BYTES", 1 << 30)  # one block: found chunk by chunk
    offsets = {damage_chunk(counts, "/matrix", i) for i in (0, 5)}
    assert validate_loom(counts) == []  # the shallow check reads no layer data
    problems = validate_deep(counts)
    assert reported_chunks(problems, "/matrix") == h5py_unreadable(counts, "/matrix") == offsets


def test_a_fletcher32_checksum_mismatch_is_found(tmp_path):
    path = make_counts_loom(tmp_path / "f32.loom", 100, 80, seed=1)
    with h5py.File(path, "r+") as f:
        values = f["matrix"][()]
        f.create_dataset("layers/checked", data=values, chunks=(16, 16), fletcher32=True)
    offset = damage_chunk(path, "/layers/checked", 3)
    problems = validate_deep(path)
    assert reported_chunks(problems, "/layers/checked") == {offset}
    assert h5py_unreadable(path, "/layers/checked") == {offset}
    assert all(p.h5path == "/layers/checked" for p in problems)


def test_edges_lengths_and_strings_are_listed_with_their_paths(counts):
    with h5py.File(counts, "r+") as f:
        n = f["matrix"].shape[1]
        f["col_graphs/knn/a"] = np.array([0, 1], dtype=np.int64)
        f["col_graphs/knn/b"] = np.array([1, n], dtype=np.int64)  # out of range
        f["col_graphs/knn/w"] = np.ones(2, dtype=np.float32)
        f["row_attrs/Short"] = np.arange(3)  # wrong length
        names = np.array([b"ok", b"\xff\xfe"] + [b"x"] * (n - 2), dtype=object)
        f.create_dataset("col_attrs/Names", data=names, dtype=h5py.string_dtype())
        f["matrix"].attrs["note"] = b"\xc3("  # an attribute string that is not UTF-8
    found = {(p.h5path, p.message.split(" ")[0]) for p in validate_deep(counts)}
    assert ("/col_graphs/knn/b", "vertex") in found
    assert ("/row_attrs/Short", "shape") in found
    assert ("/col_attrs/Names", "string") in found
    assert ("/matrix/@note", "string") in found
    with h5py.File(counts, "r") as f:  # what h5py reads agrees
        assert f["col_graphs/knn/b"][()].max() >= n and f["row_attrs/Short"].shape[0] != 300
        with pytest.raises(UnicodeDecodeError):
            f["col_attrs/Names"].asstr()[()]


def test_a_file_that_crashes_hdf5_is_a_problem_and_the_caller_survives(crashing):
    problems = validate_deep(crashing)
    assert any("crashed (signal" in p.message for p in problems)
    assert problems[-1].h5path.startswith("/")


def test_the_cli_lists_problems_and_exits_1(counts):
    command = [str(LOOMX_SCRIPT), "validate", "--deep", str(counts)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0 and "every chunk and string" in done.stdout
    offset = damage_chunk(counts, "/matrix", 2)
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 1
    assert f"/matrix: chunk at ({offset[0]}, {offset[1]})" in done.stdout

"""Tests for loomx._hdf5.kernels: the compiled batch kernels behind reading and packing chunks.

Damaged chunks are checked against what the filters promise (a failing inflate, a failing
fletcher32 checksum, a wrong size); packing against zlib + numpy, where the per-chunk
Python path (``pack_block(..., codec="zlib")``) must agree with the kernel bit for bit;
and both kernels must release the GIL.  Reads through the kernels are compared with h5py
in test_batched.py.
"""

from __future__ import annotations

import json
import os
import random
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import indexed_dataset, python_process
from hypothesis import given, settings
from hypothesis import strategies as st

from loomx._hdf5 import codecs as _codecs
from loomx._hdf5 import kernels as _kernels
from loomx._hdf5.chunkio import FileReader
from loomx._hdf5.chunks import ChunkIndex
from loomx.errors import LoomFileError
from loomx.testing.fuzz import _kernel_case


def test_kernels_are_the_default_paths() -> None:
    """numba and deflate are dependencies: the kernels must run wherever loomx installs."""
    assert _kernels.available()
    assert _codecs.DEFAULT_CODEC == "libdeflate"


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
def test_damaged_chunks_raise_with_the_chunk_offset(
    tmp_path, decode_path, kwargs, where, message
) -> None:
    rng = np.random.default_rng(1)
    data = rng.random((64, 64)).astype("float32")
    index, _ = indexed_dataset(tmp_path / "c.h5", data, chunks=(32, 32), **kwargs)
    _corrupt_first_chunk(tmp_path / "c.h5", index, where, 0xFF ^ 0x5A)
    with pytest.raises(LoomFileError, match=message) as err:
        index.read(FileReader.of(tmp_path / "c.h5"))
    assert f"chunk at byte {int(index.offsets.flat[0])}" in str(err.value)


@pytest.mark.parametrize(
    ("size", "message"), [(60, "decodes to 60 bytes, not 64"), (100, "decodes to more than 64")]
)
def test_chunks_decoding_to_the_wrong_size_raise(tmp_path, decode_path, size, message) -> None:
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
    index, _ = indexed_dataset(tmp_path / "g.h5", data, chunks=(32, 32), compression="gzip")
    reader = FileReader.of(tmp_path / "g.h5")
    _kernels.load()  # compiled or loaded from the cache before the measured calls

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


def test_the_deflate_library_is_found_through_the_modules_in_every_wheel_layout():
    """deflate 0.7 is one extension module (``deflate.so``); 0.8 on is a package whose
    ``_deflate`` submodule is the extension: both are found, neither by a file name."""
    import importlib.machinery
    import types

    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    flat = types.ModuleType("deflate")
    flat.__file__ = f"/site/deflate{suffix}"
    assert _kernels.extension_files(flat) == [flat.__file__]
    package = types.ModuleType("deflate")
    package.__file__ = "/site/deflate/__init__.py"
    package._deflate = types.ModuleType("deflate._deflate")
    package._deflate.__file__ = f"/site/deflate/_deflate{suffix}"
    package.os = types.ModuleType("os")  # a module without a compiled file
    assert _kernels.extension_files(package) == [package._deflate.__file__]
    deflate = pytest.importorskip("deflate")
    assert _kernels.extension_files(deflate)


def test_numba_is_imported_in_one_place():
    """Every compiled loop goes through :func:`kernels.compiled` (numba stays optional)."""
    import ast

    package = Path(__file__).resolve().parents[2] / "loomx"
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "numba" or n.startswith("numba.") for n in names):
                importers.add(path.relative_to(package).as_posix())
    assert importers == {"_hdf5/kernels.py"}


# --------------------------------------------------------------------------- bounds

BOUNDSCHECKED_FUZZ = """
import json, random, sys
import numpy as np
from loomx._hdf5 import kernels
from loomx.testing.fuzz import _kernel_case, fuzz_kernels

# bounds checking is on: an index out of range inside the kernel raises IndexError
args, _ = _kernel_case(random.Random(0))
args[12:17] = [1, np.zeros(6, np.int64), np.array([0, 1]), np.array([0]), np.array([40])]
try:
    kernels._decode_compiled(*args)
    raise SystemExit("numba's bounds checking is off")
except IndexError:
    pass
print(json.dumps(fuzz_kernels(int(sys.argv[1]), int(sys.argv[2]))))
"""


def test_fuzzed_kernel_inputs_never_index_out_of_bounds(tmp_path) -> None:
    """Every mutated input either decodes, sets the kernel's error status or is refused
    before the call; with numba's bounds checking on, no index goes out of range."""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    child = python_process(BOUNDSCHECKED_FUZZ, "400", "7", env=env)
    out, err = child.communicate(timeout=600)
    assert child.returncode == 0, err[-3000:]
    counts = json.loads(out.splitlines()[-1])
    assert sum(counts.values()) == 400
    by_kind: dict[str, set[str]] = {}
    for name in counts:
        kind, outcome = name.split(": ")
        by_kind.setdefault(kind, set()).add(outcome)
    assert by_kind["none"] == {"ok"}
    assert by_kind["span"] == by_kind["codes"] == {"refused"}
    assert by_kind["more"] <= {"status 1", "status 2"}  # more than a chunk: never placed
    assert by_kind["less"] == {"status 2"}
    assert "refused" in by_kind["pick"] and "refused" in by_kind["place"]


def _valid_args() -> list:
    args, kind = _kernel_case(random.Random(3))
    while kind != "none":
        args, kind = _kernel_case(random.Random(random.random()))
    return args


def _set(position: int, value) -> Callable[[list], None]:
    def change(args: list) -> None:
        args[position] = value

    return change


def _edit(position: int, at: tuple, value: int) -> Callable[[list], None]:
    def change(args: list) -> None:
        args[position] = args[position].copy()
        args[position][at] = value

    return change


def _picks(axis: int, pin: list[int], pout: list[int], ptr=None) -> Callable[[list], None]:
    def change(args: list) -> None:
        args[12] = axis
        args[13] = np.zeros(args[1].size, np.int64)
        args[14] = np.array(ptr or [0, len(pin)], np.int64)
        args[15], args[16] = np.array(pin, np.int64), np.array(pout, np.int64)

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_edit(1, (2,), 10**6), "stored chunk starts"),
        (_edit(2, (5,), 200), "lies at bytes"),
        (_edit(2, (0,), -1), "stored chunk sizes"),
        (_edit(4, (0,), 7), "filter codes"),
        (_edit(5, (0,), 0), "shuffle element sizes"),
        (_edit(9, (1, 0), 10), "output rows written"),  # a box past the output's last row
        (_edit(9, (0, 1), 40), "output bytes written"),
        (_edit(9, (0, 2), 1), "chunk rows copied"),
        (_edit(9, (0, 3), 4), "chunk bytes copied"),
        (_edit(9, (0, 4), -2), "placement"),
        (_set(6, 0), "a chunk of 0 rows"),
        (_set(8, 5), "of 5-byte items"),
        (_set(10, np.zeros((12, 48), np.float32)), "dst must be"),
        (_set(10, np.zeros((12, 96), np.uint8)[:, ::2]), "contiguous bytes"),
        (_set(10, np.zeros((1, 48), np.uint8)[:, ::-1]), "contiguous bytes"),
        (_set(11, np.zeros(2, np.int64)), "status holds 2"),
        (_set(1, np.zeros(6, np.int32)), "starts must be"),
        (_set(3, np.zeros(5, np.int64)), "masks holds 5"),
        (_set(12, 3), "pick_axis 3"),
        (_picks(1, [0, 6], [0, 1]), "picked chunk columns"),
        (_picks(1, [0, 0], [0, 12]), "picked output columns"),
        (_picks(2, [4], [0]), "picked chunk rows"),
        (_picks(2, [0], [-1]), "picked output rows"),
        (_picks(1, [0], [0], ptr=[0, 3]), "pick_ptr ranges"),
        (_picks(1, [0, 1], [0, 1], ptr=[0, 2, 1]), "pick_ptr decreases"),
    ],
)
def test_out_of_range_inputs_are_refused_before_the_kernel(change, message) -> None:
    args = _valid_args()
    _kernels.decode_chunks(*args)  # the unchanged case decodes
    assert args[11][0] == 0
    change(args)
    before = args[10].copy() if isinstance(args[10], np.ndarray) else None
    with pytest.raises(LoomFileError, match=message):
        _kernels.decode_chunks(*args)
    if before is not None:
        np.testing.assert_array_equal(args[10], before)  # nothing written


def test_overlapping_picks_decode_in_bounds() -> None:
    args = _valid_args()
    _picks(1, [0, 0, 5, 5], [3, 3, 3, 11])(args)
    args[9][:, [1, 3, 5]] = 0
    _kernels.decode_chunks(*args)
    assert args[11][0] == 0


def test_encoding_inputs_are_checked() -> None:
    values = np.zeros((8, 32), np.uint8)
    rows = np.arange(8, dtype=np.int64)
    bound = _kernels.encode_bound(2, 4 * 16)
    good = (values, rows, 4, 16, 2, np.empty(4 * bound, np.uint8), np.zeros(5, np.int64))
    _kernels.encode_chunks(*good, np.zeros(4, np.uint8))
    for position, value, message in [
        (1, np.array([0, 8], np.int64), "rows ranges"),
        (5, np.empty(4 * bound - 1, np.uint8), "out holds"),
        (6, np.zeros(4, np.int64), "bounds/zeros"),
        (4, 13, "at level 13"),
        (2, 0, "chunks of 0"),
    ]:
        args = list(good)
        args[position] = value
        with pytest.raises(LoomFileError, match=message):
            _kernels.encode_chunks(*args, np.zeros(4, np.uint8))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("size", 10**7, "points at bytes"),  # past the end of the file
        ("size", 20, "cannot be decoded|decodes to"),  # a truncated stream
        ("size", 0, "cannot be decoded|decodes to|too short"),
        ("mask", 2, "decodes to|cannot be decoded"),
        ("mask", 0xFFFFFFFF, "decodes to"),  # every filter skipped
    ],
)
def test_a_crafted_chunk_index_in_the_file_gives_a_loomx_error(tmp_path, field, value, message):
    """The chunk B-tree of the file says where a chunk lies, how large it is and which
    filters it skipped: crafted, it gives a loomx error (never a crash or a wrong read)."""
    path = tmp_path / "crafted.h5"
    data = np.arange(64, dtype=np.int32).reshape(8, 8)
    index, _ = indexed_dataset(path, data, chunks=(4, 4), compression="gzip", shuffle=True)
    raw = bytearray(path.read_bytes())
    at = raw.find(int(index.offsets.flat[0]).to_bytes(8, "little"))
    key = at - 32  # size u32, filter mask u32, three offsets u64, then the chunk's address
    assert struct.unpack_from("<I", raw, key)[0] == int(index.sizes.flat[0])
    struct.pack_into("<I", raw, key + (0 if field == "size" else 4), value)
    path.write_bytes(bytes(raw))
    with h5py.File(path, "r") as f:
        crafted = ChunkIndex.from_dataset(f["x"])
    with pytest.raises(LoomFileError, match=message):
        crafted.read(FileReader.of(path))


def test_a_chunk_whose_mask_skips_the_shuffle_reads_as_hdf5_reads_it(tmp_path, decode_path):
    path = tmp_path / "crafted.h5"
    data = np.arange(64, dtype=np.int32).reshape(8, 8)
    index, _ = indexed_dataset(path, data, chunks=(4, 4), compression="gzip", shuffle=True)
    raw = bytearray(path.read_bytes())
    at = raw.find(int(index.offsets.flat[0]).to_bytes(8, "little"))
    struct.pack_into("<I", raw, at - 28, 1)  # filter 0 (shuffle) skipped
    path.write_bytes(bytes(raw))
    with h5py.File(path, "r") as f:
        crafted, expected = ChunkIndex.from_dataset(f["x"]), f["x"][...]
    assert not np.array_equal(expected, data)  # the mask is honoured by HDF5 too
    np.testing.assert_array_equal(crafted.read(FileReader.of(path)), expected)

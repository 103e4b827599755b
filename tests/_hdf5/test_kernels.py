"""Tests for loomx._hdf5.kernels: the compiled batch kernels behind reading and packing chunks.

Damaged chunks are checked against what the filters promise (a failing inflate, a failing
fletcher32 checksum, a wrong size); packing against zlib + numpy, where the per-chunk
Python path (``pack_block(..., codec="zlib")``) must agree with the kernel bit for bit;
and both kernels must release the GIL.  Reads through the kernels are compared with h5py
in test_batched.py.
"""

from __future__ import annotations

import threading
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import indexed_dataset
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
    index, _ = indexed_dataset(tmp_path / "c.h5", data, chunks=(32, 32), **kwargs)
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
    index, _ = indexed_dataset(tmp_path / "g.h5", data, chunks=(32, 32), compression="gzip")
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

"""Tests for loomx._hdf5.pydecode: the compiled decode kernel's Python twin, which serves a
process's first small reads.

The twin is compared with the compiled kernel on the fuzzer's cases (valid and damaged:
the same bytes written and the same status), reads through it with h5py, and the rule that
picks it (:func:`loomx._hdf5.first_calls.runs_in_python_first`) in fresh processes.  Damaged and
crafted chunks go through both paths in test_kernels.py (fixture ``decode_path``).
"""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from conftest import indexed_dataset, python_process
from hypothesis import given, settings
from hypothesis import strategies as st

from loomx._hdf5 import first_calls as _first_calls
from loomx._hdf5 import kernels as _kernels
from loomx._hdf5 import pydecode as _pydecode
from loomx._hdf5.chunkio import FileReader
from loomx.errors import LoomFileError
from loomx.testing.fuzz import _kernel_case


@pytest.fixture
def python_path(monkeypatch):
    """Every read of the test goes through the twin."""
    monkeypatch.setattr(_pydecode, "takes_python_path", lambda n: True)


def _copied(args: list) -> list:
    return [a.copy() if isinstance(a, np.ndarray) else a for a in args]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 2**31))
def test_the_twin_writes_what_the_kernel_writes(seed) -> None:
    """On every fuzzed case, valid or damaged, the twin and the kernel refuse the same
    inputs, or write the same bytes and report the same status."""
    args, kind = _kernel_case(random.Random(seed))
    compiled, twin = _copied(args), _copied(args)
    try:
        _kernels.decode_chunks(*compiled)
    except LoomFileError as refused:
        with pytest.raises(LoomFileError, match=re.escape(str(refused))):
            _pydecode.decode_chunks(*twin)
        return
    _pydecode.decode_chunks(*twin)
    np.testing.assert_array_equal(twin[11], compiled[11], err_msg=kind)  # status
    np.testing.assert_array_equal(twin[10], compiled[10], err_msg=kind)  # output bytes


@pytest.mark.parametrize(
    "storage",
    [
        {"compression": "gzip", "compression_opts": 2},
        {"compression": "gzip", "shuffle": True, "fletcher32": True},
        {"fletcher32": True},
        {},
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "int64", ">f8", "uint16"])
def test_reads_through_the_twin_equal_h5py(tmp_path, python_path, storage, dtype) -> None:
    rng = np.random.default_rng(5)
    data = (rng.random((130, 70)) * 100 * (rng.random((130, 70)) < 0.3)).astype(dtype)
    index, expected = indexed_dataset(tmp_path / "t.h5", data, chunks=(16, 8), **storage)
    reader = FileReader.of(tmp_path / "t.h5")
    np.testing.assert_array_equal(index.read(reader), expected)
    np.testing.assert_array_equal(
        index.read(reader, (slice(3, 97), slice(5, 66))), expected[3:97, 5:66]
    )
    cols = np.array([69, 0, 8, 8, 33, 15])
    rows = np.array([129, 4, 17, 64, 0])
    np.testing.assert_array_equal(
        index.read_picks(reader, (slice(7, 120), slice(None)), 1, cols), expected[7:120][:, cols]
    )
    np.testing.assert_array_equal(
        index.read_picks(reader, (slice(None), slice(2, 61)), 0, rows), expected[rows, 2:61]
    )


def test_a_one_dimensional_read_through_the_twin_equals_h5py(tmp_path, python_path) -> None:
    data = np.arange(1000, dtype="float64") ** 1.5
    index, expected = indexed_dataset(tmp_path / "v.h5", data, chunks=(64,), compression="gzip")
    np.testing.assert_array_equal(
        index.read(FileReader.of(tmp_path / "v.h5"), (slice(10, 990),)), expected[10:990]
    )


def test_python_work_is_budgeted_until_a_kernel_is_loaded(monkeypatch) -> None:
    monkeypatch.setattr(_first_calls, "_python_seconds", 0.0)
    monkeypatch.setattr(_first_calls, "loaded", lambda: False)
    budget = _first_calls.LOAD_SECONDS
    assert _first_calls.runs_in_python_first(budget * 0.6)
    assert not _first_calls.runs_in_python_first(budget * 0.6)  # over the budget: compiled
    assert _first_calls.runs_in_python_first(budget * 0.3)  # a smaller one still fits
    assert _pydecode.takes_python_path(0)
    # charged by the bytes decoded: a few large chunks cost as much as many small ones
    left = budget - _first_calls._python_seconds
    assert not _pydecode.takes_python_path(int(left / _pydecode.BYTE_SECONDS) + 1)
    monkeypatch.setattr(_first_calls, "_python_seconds", 0.0)
    monkeypatch.setattr(_first_calls, "loaded", lambda: True)
    assert not _first_calls.runs_in_python_first(0.0)  # once loaded, everything is compiled


def test_every_compiled_function_counts_as_loaded() -> None:
    """The rule looks at every function compiled through ``kernels.compiled``."""
    from loomx._read import layer
    from loomx.ops import loader, qc_kernels

    registered = {getattr(d, "__name__", "") for d in _first_calls._DISPATCHERS}
    assert {"_decode_compiled", "_moments_along_rows", "_transpose_compiled"} <= registered
    assert layer and loader and qc_kernels


FIRST_READS = """
import json, sys
import h5py, numpy as np
import loomx
from loomx._hdf5 import first_calls, kernels

path = sys.argv[1]
ds = loomx.open_loom(path)
m = ds["matrix"]
with h5py.File(path, "r") as f:
    expected = f["matrix"][...]
cols = [3, 700, 2999]
picked = m.isel(col=cols)
first = {"values": bool((picked.values == expected[:, cols]).all()),
         "sums": picked.sum("row").values.tolist(), "loaded": first_calls.loaded()}
first_calls.LOAD_SECONDS = 0.01  # a smaller budget: the whole file is past it
total = m.sum("row").values
second = {"loaded": first_calls.loaded(), "sums": total[cols].tolist(),
          "all": bool(np.array_equal(total, expected.sum(axis=0, dtype=np.float64)))}
print(json.dumps({"first": first, "second": second}))
"""


def test_a_fresh_process_reads_a_few_columns_without_loading_the_kernels(tmp_path) -> None:
    """In a new process, three columns of a 3000-cell file are read and summed in Python
    (no compiled function runs); a read past the budget after them loads the kernels;
    both agree with h5py."""
    from loomx.testing import make_counts_loom

    path = make_counts_loom(tmp_path / "f.loom", 500, 3000, seed=4)
    child = python_process(FIRST_READS, str(path))
    out, err = child.communicate(timeout=600)
    assert child.returncode == 0, err[-3000:]
    report = json.loads(out.splitlines()[-1])
    assert report["first"] == {**report["first"], "values": True, "loaded": False}
    assert report["second"]["loaded"] and report["second"]["all"]
    assert report["first"]["sums"] == report["second"]["sums"]

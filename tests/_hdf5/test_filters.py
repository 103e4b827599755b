"""loomx._hdf5.filters: the table of HDF5 filter codes against h5py's constants and the
filters HDF5 itself records in files, and the filters loomx decodes against what its chunk
reader really reads (the others go to h5py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from loomx._hdf5 import filters as _filters
from loomx._hdf5.chunkio import FileReader
from loomx._hdf5.chunks import ChunkIndex

H5PY_CODES = {
    "DEFLATE": h5py.h5z.FILTER_DEFLATE,
    "SHUFFLE": h5py.h5z.FILTER_SHUFFLE,
    "FLETCHER32": h5py.h5z.FILTER_FLETCHER32,
    "SZIP": h5py.h5z.FILTER_SZIP,
    "NBIT": h5py.h5z.FILTER_NBIT,
    "SCALEOFFSET": h5py.h5z.FILTER_SCALEOFFSET,
    "LZF": h5py.h5z.FILTER_LZF,
}

ONE_FILTER: dict[str, dict[str, Any]] = {
    "deflate": {"compression": "gzip"},
    "shuffle": {"shuffle": True},
    "fletcher32": {"fletcher32": True},
    "szip": {"compression": "szip"},
    "scaleoffset": {"scaleoffset": 0},
    "lzf": {"compression": "lzf"},
}
"""h5py's arguments for a dataset with that one filter (h5py cannot make nbit datasets)."""


@pytest.mark.parametrize("name", sorted(H5PY_CODES))
def test_every_code_is_h5pys(name: str) -> None:
    assert getattr(_filters, name) == H5PY_CODES[name]


def test_the_table_holds_exactly_the_filters_h5py_names() -> None:
    expected = {code: name.lower() for name, code in H5PY_CODES.items()}
    assert expected == _filters.BUILTIN_FILTERS


def _one_filter_file(path: Path, kwargs: dict[str, Any]) -> Path:
    data = np.arange(40 * 30, dtype="int32").reshape(40, 30) % 23
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data, chunks=(16, 8), **kwargs)
    return path


@pytest.mark.parametrize("name", sorted(ONE_FILTER))
def test_the_code_and_name_hdf5_records_in_the_file(tmp_path: Path, name: str) -> None:
    path = _one_filter_file(tmp_path / "f.h5", ONE_FILTER[name])
    with h5py.File(path, "r") as f:
        plist = f["x"].id.get_create_plist()
        recorded = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    assert len(recorded) == 1
    code, _flags, _values, hdf5_name = recorded[0]
    assert _filters.BUILTIN_FILTERS[code] == hdf5_name.decode() == name


@pytest.mark.parametrize("name", sorted(ONE_FILTER))
def test_decoded_filters_are_those_the_chunk_reader_reads(tmp_path: Path, name: str) -> None:
    """A dataset with a filter outside DECODED_FILTERS has no chunk index (h5py reads it);
    one with a filter inside reads through the index exactly as h5py reads it."""
    path = _one_filter_file(tmp_path / "f.h5", ONE_FILTER[name])
    with h5py.File(path, "r") as f:
        code = f["x"].id.get_create_plist().get_filter(0)[0]
        index = ChunkIndex.from_dataset(f["x"])
        expected = f["x"][...]
    assert (index is not None) == (code in _filters.DECODED_FILTERS)
    if index is not None:
        got = index.read(FileReader.of(path))
        assert got.tobytes() == expected.tobytes()
        slow = index.read(FileReader.of(path), inflater="zlib")  # the per-chunk Python path
        assert slow.tobytes() == expected.tobytes()


def test_decoded_filters_are_deflate_shuffle_and_fletcher32() -> None:
    decoded = {h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_FLETCHER32}
    assert decoded == _filters.DECODED_FILTERS
    assert set(_filters.BUILTIN_FILTERS) >= _filters.DECODED_FILTERS

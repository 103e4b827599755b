"""loomx._read.references: kerchunk references of a Loom file's layers.

Every chunk key points at the byte offset and stored size h5py reports for that chunk
(``dataset.id.chunk_iter``), and the values zarr reads through fsspec's reference
filesystem (and xarray's kerchunk engine) equal h5py's, for a file loompy wrote; the
chunk indexes read back from the references are h5py's; layers zarr cannot decode and
files with an unfinished write are refused.
"""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
import xarray as xr

import loomx
from loomx._hdf5.filesystem import TEMPORARY_TAG
from loomx._read import references as _references
from loomx.errors import LoomFileError, LoomFormatError

zarr = pytest.importorskip("zarr")
fsspec = pytest.importorskip("fsspec")

LAYERS = {
    "matrix": "/matrix",
    "counts_u16": "/layers/counts_u16",
    "counts_i64": "/layers/counts_i64",
    "norm": "/layers/norm",
}


def h5py_chunks(path, h5path: str) -> dict[tuple[int, ...], tuple[int, int]]:
    """Offset and stored size of every allocated chunk, by chunk grid position (h5py)."""
    out = {}
    with h5py.File(path, "r") as f:
        dset = f[h5path]

        def visit(info) -> None:
            cell = tuple(o // c for o, c in zip(info.chunk_offset, dset.chunks, strict=True))
            out[cell] = (info.byte_offset, info.size)

        dset.id.chunk_iter(visit)
    return out


def test_chunk_references_are_h5pys_offsets_and_sizes(loompy_file):
    path = loompy_file["path"]
    refs = loomx.to_kerchunk(path)["refs"]
    with h5py.File(path, "r") as f:
        for name, h5path in LAYERS.items():
            dset = f[h5path]
            meta = _references._meta(refs[f"{name}/.zarray"])
            assert meta["shape"] == list(dset.shape) and meta["chunks"] == list(dset.chunks)
            assert np.dtype(meta["dtype"]) == dset.dtype
            expected = {
                f"{name}/{'.'.join(map(str, cell))}": [os.path.abspath(path), offset, size]
                for cell, (offset, size) in h5py_chunks(path, h5path).items()
            }
            assert expected  # loompy's layers are stored in chunks
            found = {k: v for k, v in refs.items() if k.startswith(f"{name}/") and "/." not in k}
            assert found == expected


def test_values_read_through_the_references_equal_h5pys(loompy_file):
    path = loompy_file["path"]
    refs = loomx.to_kerchunk(path, dims=("gene", "cell"))
    fs = fsspec.filesystem(
        "reference",
        fo=refs,
        remote_protocol="file",
        asynchronous=True,
        remote_options={"asynchronous": True},
    )
    group = zarr.open_group(zarr.storage.FsspecStore(fs, read_only=True), mode="r", zarr_format=2)
    pytest.importorskip("kerchunk")
    opened = xr.open_dataset(refs, engine="kerchunk")
    with h5py.File(path, "r") as f:
        for name, h5path in LAYERS.items():
            np.testing.assert_array_equal(group[name][:], f[h5path][()])
            assert group[name].dtype == f[h5path].dtype
            np.testing.assert_array_equal(opened[name].values, f[h5path][()])
            assert opened[name].dims == ("gene", "cell")


def test_chunk_indexes_read_from_references_are_h5pys(loompy_file):
    path = loompy_file["path"]
    refs = loomx.to_kerchunk(path)
    indexes = _references.indexes_from_references(_references.load_references(refs), path)
    assert set(indexes) == set(LAYERS.values())
    with h5py.File(path, "r") as f:
        for h5path, index in indexes.items():
            assert index.shape == f[h5path].shape and index.chunks == f[h5path].chunks
            stored = h5py_chunks(path, h5path)
            assert {
                cell: (int(index.offsets[cell]), int(index.sizes[cell])) for cell in stored
            } == stored
            assert int((index.offsets >= 0).sum()) == len(stored)


def test_layers_zarr_cannot_decode_are_refused(loompy_file, tmp_path):
    path = tmp_path / "lzf.loom"
    shutil.copy(loompy_file["path"], path)
    with h5py.File(path, "r+") as f:
        f["layers"].create_dataset(
            "packed", data=f["matrix"][()], chunks=(64, 64), compression="lzf"
        )
    with pytest.raises(LoomFormatError, match="zarr cannot decode") as info:
        loomx.to_kerchunk(path)
    assert "/layers/packed" in str(info.value) and str(path) in str(info.value)


def test_a_file_with_an_unfinished_write_is_refused(loompy_file, tmp_path):
    path = tmp_path / "pending.loom"
    shutil.copy(loompy_file["path"], path)
    m = loompy_file["layers"][""].shape[1]
    tag = f"{TEMPORARY_TAG}1-0ddba11a-"
    with h5py.File(path, "r+") as f:  # a commit recorded, not carried out
        f["col_attrs"].create_dataset(tag + "Score", data=np.zeros(m))
        rows = np.array([["/col_attrs", tag + "Score", "Score"]], dtype=object)
        f.create_dataset(tag[:-1] + ".journal", data=rows, dtype=h5py.string_dtype())
    with pytest.raises(LoomFileError, match="unfinished write"):
        loomx.to_kerchunk(path)

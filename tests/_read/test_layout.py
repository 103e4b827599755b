"""loomx._read.layout, the layout as data: object addresses equal HDF5's own (read with
``h5py.h5o.get_info``), ``h5_errors`` turns what h5py raises into ``LoomFileError``
naming the file and HDF5 path, and a dataset's facts and ``encoding`` are what h5py reports
of the same dataset.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from loomx._read.layout import (
    H5_ERRORS,
    DatasetInfo,
    generation_of,
    h5_errors,
    link_address,
    object_address,
)
from loomx._read.pending import GENERATION
from loomx.errors import LoomFileError, LoomFormatError


@pytest.fixture
def h5file(tmp_path):
    """Datasets in each storage loomx reads, and links of each kind."""
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", data=np.arange(60.0).reshape(6, 10), chunks=(4, 4))
        f.create_dataset(
            "layers/packed",
            data=np.arange(60, dtype=np.uint16).reshape(6, 10),
            chunks=(3, 5),
            compression="gzip",
            compression_opts=7,
            shuffle=True,
            fletcher32=True,
        )
        f.create_dataset("row_attrs/Score", data=np.arange(6.0))
        f["layers/soft"] = h5py.SoftLink("/matrix")
        f["layers/external"] = h5py.ExternalLink("other.h5", "/x")
    with h5py.File(path, "r+") as f:
        yield f


def hdf5_address(obj: h5py.HLObject) -> int:
    return h5py.h5o.get_info(obj.id).addr


@pytest.mark.parametrize("h5path", ["/matrix", "/layers/packed", "/row_attrs/Score", "/layers"])
def test_addresses_are_hdf5s(h5file, h5path):
    obj = h5file[h5path]
    parent, _, name = h5path.rpartition("/")
    assert object_address(h5file, h5path) == hdf5_address(obj)
    assert link_address(h5file[parent or "/"], name) == hdf5_address(obj)


def test_addresses_of_no_hard_link_are_none(h5file):
    layers = h5file["layers"]
    assert link_address(layers, "soft") is None  # names /matrix, but through a path
    assert link_address(layers, "external") is None
    assert link_address(layers, "missing") is None
    assert object_address(h5file, "/nowhere/matrix") is None
    assert object_address(h5file, "/matrix/inside") is None  # the parent is a dataset


def test_a_replaced_object_has_a_new_address(h5file):
    before = object_address(h5file, "/row_attrs/Score")
    del h5file["row_attrs/Score"]
    h5file.create_dataset("row_attrs/Other", data=np.zeros(6))  # may reuse the space
    h5file.create_dataset("row_attrs/Score", data=np.ones(6))
    assert object_address(h5file, "/row_attrs/Score") == hdf5_address(h5file["row_attrs/Score"])
    assert object_address(h5file, "/row_attrs/Score") != before


@pytest.mark.parametrize(
    "raised", [OSError("truncated"), KeyError("b-tree"), RuntimeError("bad"), ValueError("x")]
)
def test_h5py_errors_become_file_errors_naming_file_and_path(raised):
    with pytest.raises(LoomFileError) as info, h5_errors("a.loom", "/matrix", "read the layer"):
        raise raised
    err = info.value
    assert isinstance(err, OSError)
    assert (err.path, err.h5path) == ("a.loom", "/matrix")
    assert str(err).startswith("'a.loom', /matrix: cannot read the layer")
    assert type(raised).__name__ in str(err)
    assert "truncated or corrupt" in str(err)
    assert err.__cause__ is raised


def test_h5_errors_names_the_path_the_body_reached():
    where = ["/layers"]
    with pytest.raises(LoomFileError) as info, h5_errors("a.loom", where, "read the layout"):
        where[0] = "/layers/spliced"
        raise OSError("bad object header")
    assert info.value.h5path == "/layers/spliced"


def test_h5_errors_says_what_a_memory_error_means():
    with (
        pytest.raises(LoomFileError, match="more data than fits in memory"),
        h5_errors("a.loom", "/matrix", "read"),
    ):
        raise MemoryError()


def test_h5_errors_passes_loomx_errors_and_others_unchanged():
    own = LoomFormatError("bad", path="b.loom", h5path="/x")
    with pytest.raises(LoomFormatError) as info, h5_errors("a.loom", "/matrix", "read"):
        raise own
    assert info.value is own
    # a bug, not damage: not disguised
    with pytest.raises(ZeroDivisionError), h5_errors("a.loom", "/matrix", "read"):
        raise ZeroDivisionError
    assert not issubclass(ZeroDivisionError, H5_ERRORS)


def test_h5_errors_covers_what_h5py_raises_on_a_truncated_file(tmp_path):
    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", data=np.arange(1000.0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(LoomFileError) as info, h5_errors(str(path), "/", "open the file"):
        h5py.File(path, "r")
    assert isinstance(info.value.__cause__, H5_ERRORS)


@pytest.mark.parametrize("h5path", ["/matrix", "/layers/packed", "/row_attrs/Score"])
def test_dataset_facts_and_encoding_are_h5pys(h5file, h5path):
    dset = h5file[h5path]
    info = DatasetInfo.of(dset, hdf5_address(dset))
    encoding = info.encoding("x.loom")
    assert encoding == {
        "source": "x.loom",
        "loom_path": h5path,
        "chunksizes": dset.chunks,
        "compression": dset.compression,
        "compression_opts": dset.compression_opts,
        "shuffle": dset.shuffle,
        "fletcher32": dset.fletcher32,
        "loom_object_address": hdf5_address(dset),
        "dtype": dset.dtype,
    }
    assert (info.shape, info.generation) == (dset.shape, 0)
    parent, _, link = h5path.rpartition("/")
    assert DatasetInfo.of_plain(h5file[parent or "/"], link, h5path) == info


def test_of_plain_leaves_links_and_unknown_storage_to_of(h5file):
    layers = h5file["layers"]
    assert DatasetInfo.of_plain(layers, "soft", "/layers/soft") is None
    assert DatasetInfo.of_plain(layers, "external", "/layers/external") is None
    assert DatasetInfo.of_plain(layers, "missing", "/layers/missing") is None
    assert DatasetInfo.of_plain(h5file, "layers", "/layers") is None  # a group
    h5file["matrix"].attrs[GENERATION] = 3
    assert DatasetInfo.of_plain(h5file, "matrix", "/matrix") is None


def test_generation_is_the_attribute_h5py_reads(h5file):
    dset = h5file["matrix"]
    assert generation_of(dset) == 0
    dset.attrs[GENERATION] = np.int64(4)
    assert generation_of(dset) == int(h5file["matrix"].attrs[GENERATION]) == 4
    dset.attrs[GENERATION] = "not a number"
    assert generation_of(dset) == -1

"""Bad input gives a clear loomx error naming the file, the HDF5 path and the problem."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import loomx
from loomx.errors import LoomFileError, LoomFormatError, LoomxError
from loomx.testing import write_loom_h5py


def minimal(path, **extra):
    write_loom_h5py(path, {"": np.ones((4, 5), dtype=np.float32)}, **extra)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(LoomFileError, match="no such file") as info:
        loomx.open_loom(tmp_path / "nope.loom")
    assert isinstance(info.value, OSError) and isinstance(info.value, LoomxError)


def test_not_hdf5(tmp_path):
    path = tmp_path / "text.loom"
    path.write_text("gene\tcell\n")
    with pytest.raises(LoomFileError, match="not an HDF5 file") as info:
        loomx.open_loom(path)
    assert str(path) in str(info.value)


def test_truncated_file(tmp_path):
    path = minimal(tmp_path / "full.loom")
    data = path.read_bytes()
    cut = tmp_path / "cut.loom"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(LoomFileError, match="truncated or corrupt"):
        loomx.open_loom(cut)


def test_hdf5_but_not_loom(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.ones(3)
    with pytest.raises(LoomFormatError, match=r"/matrix.*not a Loom file.*\['data'\]"):
        loomx.open_loom(path)


def test_matrix_not_2d(tmp_path):
    path = tmp_path / "m1d.loom"
    with h5py.File(path, "w") as f:
        f["matrix"] = np.ones(3)
    with pytest.raises(LoomFormatError, match=r"/matrix: found shape \(3,\), expected a 2-D"):
        loomx.open_loom(path)


def test_layer_shape_mismatch(tmp_path):
    path = minimal(tmp_path / "l.loom")
    with h5py.File(path, "a") as f:
        f["layers/bad"] = np.ones((4, 6))
    with pytest.raises(LoomFormatError, match=r"/layers/bad: layer shape \(4, 6\).*\(4, 5\)"):
        loomx.open_loom(path)


def test_non_numeric_layer(tmp_path):
    path = minimal(tmp_path / "s.loom")
    with h5py.File(path, "a") as f:
        f.create_dataset("layers/text", data=np.full((4, 5), b"x"))
    with pytest.raises(LoomFormatError, match=r"/layers/text: layer dtype .* not numeric"):
        loomx.open_loom(path)


@pytest.mark.parametrize(("space", "length"), [("row_attrs", 3), ("col_attrs", 4)])
def test_attribute_length_mismatch(tmp_path, space, length):
    path = minimal(tmp_path / "a.loom")
    with h5py.File(path, "a") as f:
        f[f"{space}/Bad"] = np.arange(length)
    expected = 4 if space == "row_attrs" else 5
    with pytest.raises(LoomFormatError, match=rf"/{space}/Bad.*\({length},\).*{expected}"):
        loomx.open_loom(path)


def test_graph_unequal_lengths(tmp_path):
    path = minimal(tmp_path / "g.loom")
    with h5py.File(path, "a") as f:
        g = f.create_group("col_graphs/KNN")
        g["a"], g["b"], g["w"] = np.array([0, 1]), np.array([1, 2, 3]), np.ones(2)
    with pytest.raises(LoomFormatError, match="/col_graphs/KNN: graph edge lists have unequal"):
        loomx.open_loom(path)


def test_graph_missing_part(tmp_path):
    path = minimal(tmp_path / "g.loom")
    with h5py.File(path, "a") as f:
        g = f.create_group("row_graphs/R")
        g["a"], g["b"] = np.array([0]), np.array([1])
    with pytest.raises(LoomFormatError, match="/row_graphs/R: graph has no 'w'"):
        loomx.open_loom(path)


def test_graph_vertex_out_of_range_when_used(tmp_path):
    path = minimal(tmp_path / "g.loom", col_graphs={"KNN": ([0, 5], [1, 2], [1.0, 1.0])})
    ds = loomx.open_loom(path)  # graphs are read only when used
    with pytest.raises(LoomFormatError, match=r"/col_graphs/KNN/a: vertex indices \[5\]"):
        ds.loom.col_graphs["KNN"]


def test_graph_float_vertices_not_whole(tmp_path):
    path = minimal(tmp_path / "g.loom", col_graphs={"KNN": ([0.5, 1.0], [1.0, 2.0], [1.0, 1.0])})
    with pytest.warns(loomx.LoomFormatWarning, match="float64"):
        ds = loomx.open_loom(path)
    with pytest.raises(LoomFormatError, match="not whole numbers"):
        ds.loom.col_graphs["KNN"]


def test_external_link_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.ones(5)
    path = minimal(tmp_path / "ext.loom")
    with h5py.File(path, "a") as f:
        f["col_attrs/Ext"] = h5py.ExternalLink(str(other), "x")
    with pytest.raises(LoomFormatError, match="/col_attrs/Ext: found a ExternalLink"):
        loomx.open_loom(path)


def test_external_storage_refused(tmp_path):
    raw = tmp_path / "raw.bin"
    np.ones((4, 5), dtype=np.float32).tofile(raw)
    path = minimal(tmp_path / "exts.loom")
    with h5py.File(path, "a") as f:
        f.create_dataset("layers/ext", shape=(4, 5), dtype="f4", external=[(str(raw), 0, 80)])
    with pytest.raises(LoomFormatError, match="/layers/ext: found a dataset with external"):
        loomx.open_loom(path)


def test_invalid_utf8_string(tmp_path):
    path = minimal(tmp_path / "u.loom")
    with h5py.File(path, "a") as f:
        dt = h5py.string_dtype("utf-8")
        f.create_dataset(
            "row_attrs/Bad", data=np.array([b"ok", b"\xff", b"a", b"b"], dtype=object), dtype=dt
        )
    ds = loomx.open_loom(path)  # attributes are read on first use
    with pytest.raises(LoomFormatError, match="/row_attrs/Bad: strings are not valid UTF-8"):
        _ = ds["Bad"].values


def test_name_error_is_keyerror(example_loom):
    ds = loomx.open_loom(example_loom)
    with pytest.raises(KeyError, match="no graph 'nope'") as info:
        ds.loom.col_graphs["nope"]
    assert isinstance(info.value, loomx.LoomNameError)


def test_unfinished_writer_objects_are_hidden(tmp_path):
    path = minimal(tmp_path / "tmp.loom")
    with h5py.File(path, "a") as f:
        f["layers/.loomx-tmp-123-abc-norm"] = np.ones((4, 5))
        f["col_attrs/.loomx-tmp-123-abc-n"] = np.ones(5)
    ds = loomx.open_loom(path)
    assert list(ds.data_vars) == ["matrix"]
    assert not any("loomx-tmp" in str(name) for name in ds.variables)


STORAGE = {
    "contiguous": {},
    "gzip": {"chunks": (2, 3), "compression": "gzip", "compression_opts": 7},
    "gzip_shuffle_fletcher": {
        "chunks": (3, 2),
        "compression": "gzip",
        "shuffle": True,
        "fletcher32": True,
    },
    "shuffle": {"chunks": (4, 4), "shuffle": True},
    "fletcher32": {"chunks": (1, 5), "fletcher32": True},
    "lzf": {"chunks": (2, 2), "compression": "lzf"},
    "scaleoffset": {"chunks": (2, 2), "scaleoffset": 0},
}


@pytest.mark.parametrize(
    ("storage", "dtype"),
    [
        (storage, dtype)
        for storage in STORAGE
        for dtype in ("f4", "i8", "S4")
        if storage != "scaleoffset" or dtype == "f4"  # scaleoffset 0 here is for floats
    ],
)
def test_dataset_facts_without_h5py_dataset_match_h5py(tmp_path, storage, dtype):
    """The low-level layout reading gives what h5py.Dataset gives, or leaves it to it."""
    from loomx._read.layout import DatasetInfo, link_address

    with h5py.File(tmp_path / "f.h5", "w") as f:
        values = np.arange(20).reshape(4, 5).astype(dtype)
        f.create_dataset("d", data=values, **STORAGE[storage])
        f.create_dataset("g/counted", data=values, **STORAGE[storage])
        f["g/counted"].attrs["loomx_generation"] = 3
        for group, name in ((f, "d"), (f["g"], "counted")):
            slow = DatasetInfo.of(group[name], link_address(group, name))
            fast = DatasetInfo.of_plain(group, name, group[name].name)
            plain = storage not in ("lzf", "scaleoffset") and name == "d"
            assert fast == (slow if plain else None)
            if name == "counted":
                assert slow.generation == 3
        f["soft"] = h5py.SoftLink("/d")
        assert DatasetInfo.of_plain(f, "soft", "/soft") is None
        assert DatasetInfo.of_plain(f, "g", "/g") is None
        assert DatasetInfo.of_plain(f, "missing", "/missing") is None

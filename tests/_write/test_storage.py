"""Storage chosen like xarray's writers: each variable's encoding, to_loom(encoding=...),
the writer's defaults; append and combine keep the target's storage."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import xarray as xr

import loomx
from loomx.errors import LoomFormatError
from loomx.testing import write_loom_h5py

N, M = 90, 140


def storage(path, h5path: str) -> tuple:
    with h5py.File(path, "r") as f:
        d = f[h5path]
        return (d.chunks, d.compression, d.compression_opts, d.shuffle, d.fletcher32, d.dtype)


def values(path, h5path: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[h5path][()]


@pytest.fixture
def source(tmp_path):
    """An h5py-written file whose storage differs from loompy's on every setting."""
    rng = np.random.default_rng(3)
    matrix = rng.poisson(1.0, (N, M)).astype(np.float32)
    path = tmp_path / "source.loom"
    write_loom_h5py(
        path,
        {"": matrix, "counts": matrix.astype(np.uint16)},
        {"Gene": np.array([f"g{i}" for i in range(N)])},
        {"CellID": np.array([f"c{j}" for j in range(M)])},
        chunks=(30, 20),
        compression="gzip",
        compression_opts=7,
    )
    with h5py.File(path, "r+") as f:  # one layer with shuffle and checksums, one lzf
        cells = f["col_attrs/CellID"][()]
        del f["col_attrs/CellID"]
        f["col_attrs"].create_dataset("CellID", data=cells, compression="gzip", compression_opts=5)
        for name, kwargs in (
            ("shuffled", {"compression": "gzip", "compression_opts": 3, "shuffle": True}),
            ("fast", {"compression": "lzf", "fletcher32": True}),
        ):
            f["layers"].create_dataset(
                name, data=matrix * 2, chunks=(45, 35), maxshape=(N, None), **kwargs
            )
    return path, matrix


def test_open_then_write_keeps_the_source_storage(source, tmp_path):
    path, _ = source
    out = tmp_path / "out.loom"
    loomx.to_loom(loomx.open_loom(path), out)
    for h5path in ("/matrix", "/layers/counts", "/layers/shuffled", "/layers/fast"):
        assert storage(out, h5path) == storage(path, h5path), h5path
        assert values(out, h5path).tobytes() == values(path, h5path).tobytes()


def test_explicit_encoding_overrides_the_variables_own(source, tmp_path):
    path, matrix = source
    out = tmp_path / "out.loom"
    encoding = {
        "matrix": {"chunksizes": (16, 16), "compression": "lzf"},
        "counts": {"chunks": (8, 70), "compression_opts": 1, "shuffle": True},
        "shuffled": {"compression": None},
        "Gene": {"compression": None},
    }
    loomx.to_loom(loomx.open_loom(path), out, encoding=encoding)
    assert storage(out, "/matrix")[:3] == ((16, 16), "lzf", None)
    assert storage(out, "/layers/counts")[:4] == ((8, 70), "gzip", 1, True)
    assert storage(out, "/layers/shuffled")[1] is None
    assert storage(out, "/row_attrs/Gene")[1] is None
    assert storage(out, "/col_attrs/CellID")[1:3] == ("gzip", 5)  # as read
    np.testing.assert_array_equal(values(out, "/matrix"), matrix)


def test_encoding_dtype_is_applied(source, tmp_path):
    path, matrix = source
    out = tmp_path / "out.loom"
    ds = loomx.open_loom(path)
    loomx.to_loom(ds, out, encoding={"matrix": {"dtype": "float64"}, "counts": {"dtype": "i4"}})
    assert values(out, "/matrix").dtype == np.float64
    assert values(out, "/layers/counts").dtype == np.int32
    np.testing.assert_array_equal(values(out, "/layers/counts"), matrix.astype(np.int32))


def test_the_variables_own_dtype_is_kept_within_its_kind(source, tmp_path):
    path, matrix = source
    out = tmp_path / "out.loom"
    ds = loomx.open_loom(path)
    doubled = ds["matrix"].copy(data=ds["matrix"].data.astype(np.float64) * 2)
    loomx.to_loom(ds.assign(matrix=doubled), out)  # encoding (float32 on disk) travels along
    assert values(out, "/matrix").dtype == np.float32
    np.testing.assert_array_equal(values(out, "/matrix"), matrix * 2)


def test_variables_without_encoding_get_the_writer_defaults(tmp_path):
    out = tmp_path / "new.loom"
    ds = xr.Dataset({"matrix": (("row", "col"), np.ones((N, M), np.float32))})
    loomx.to_loom(ds, out, chunks=(32, 48), compression_opts=5)
    assert storage(out, "/matrix")[:3] == ((32, 48), "gzip", 5)
    loomx.to_loom(ds, out)
    assert storage(out, "/matrix")[:3] == ((64, 64), "gzip", 2)  # loompy's


@pytest.mark.parametrize(
    ("encoding", "message"),
    [
        (
            {"matrix": {"level": 3}},
            r"unexpected encoding parameters for 'loom' backend: \['level'\]",
        ),
        ({"nope": {"compression": None}}, r"variables not in the dataset: \['nope'\]"),
        ({"matrix": {"compression": "zstd"}}, "compression must be"),
        ({"matrix": {"compression_opts": 12}}, "compression_opts must be an int from 0 to 9"),
        ({"matrix": {"chunksizes": (0, 4)}}, "positive ints"),
        ({"matrix": {"dtype": "complex64"}}, "not a layer dtype"),
    ],
)
def test_bad_encoding_is_refused_before_writing(source, tmp_path, encoding, message):
    path, _ = source
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message) as info:
        loomx.to_loom(loomx.open_loom(path), path, mode="a", encoding=encoding)
    assert isinstance(info.value, LoomFormatError)
    assert path.read_bytes() == before


def test_write_back_of_a_new_layer_uses_its_encoding(source):
    path, matrix = source
    ds = loomx.open_loom(path)
    ds["norm"] = np.log1p(ds["matrix"])
    loomx.to_loom(ds, path, mode="a", encoding={"norm": {"chunksizes": (45, 70)}})
    assert storage(path, "/layers/norm")[:3] == ((45, 70), "gzip", 2)
    np.testing.assert_allclose(values(path, "/layers/norm"), np.log1p(matrix), rtol=1e-6)


def test_append_and_combine_keep_the_targets_storage(source, tmp_path):
    path, matrix = source
    target = tmp_path / "target.loom"
    target.write_bytes(path.read_bytes())
    more = loomx.open_loom(path)
    more = more.assign(extra=more["matrix"] + 1)
    loomx.append(target, more, fill_values="auto")
    for h5path in ("/matrix", "/layers/counts", "/layers/shuffled", "/layers/fast"):
        assert storage(target, h5path)[:5] == _expected(h5path), h5path
    assert values(target, "/matrix").shape == (N, 2 * M)
    # a layer new to the file gets the storage of the file's /matrix
    assert storage(target, "/layers/extra")[:5] == storage(target, "/matrix")[:5]
    out = tmp_path / "combined.loom"
    loomx.combine([target, target], out)
    for h5path in ("/matrix", "/layers/counts", "/layers/shuffled", "/layers/fast"):
        assert storage(out, h5path)[:5] == storage(target, h5path)[:5]
    np.testing.assert_array_equal(values(out, "/matrix")[:, :M], matrix)


def _expected(h5path: str) -> tuple:
    return {
        "/matrix": ((30, 20), "gzip", 7, False, False),
        "/layers/counts": ((30, 20), "gzip", 7, False, False),
        "/layers/shuffled": ((45, 35), "gzip", 3, True, False),
        "/layers/fast": ((45, 35), "lzf", None, False, True),
    }[h5path]


def test_a_variables_own_integer_dtype_never_wraps_values(tmp_path):
    """A variable whose own encoding says int16 but whose values need int32 (combine of an
    int16 and an int32 file; a layer replaced with copy(data=...)): nothing wraps."""
    small = tmp_path / "small.loom"
    large = tmp_path / "large.loom"
    write_loom_h5py(small, {"": np.ones((N, M), np.int16)}, chunks=(30, 20))
    big = np.full((N, M), 70000, np.int32)
    write_loom_h5py(large, {"": big}, chunks=(30, 20))
    out = tmp_path / "out.loom"
    loomx.combine([small, large], out)
    np.testing.assert_array_equal(values(out, "/matrix")[:, M:], big)
    ds = loomx.open_loom(small)  # int16 on disk; copy(data=...) keeps that encoding
    wide = ds["matrix"].copy(data=ds["matrix"].data.astype(np.int32) * 40000)
    assert wide.encoding["dtype"] == np.int16
    loomx.to_loom(ds.assign(matrix=wide), out)
    np.testing.assert_array_equal(values(out, "/matrix"), np.full((N, M), 40000, np.int32))


def test_write_back_with_new_storage_rewrites_an_unchanged_layer(source):
    path, matrix = source
    ds = loomx.open_loom(path)
    loomx.to_loom(ds, path, mode="a", encoding={"matrix": {"compression": None}})
    assert storage(path, "/matrix")[1] is None
    np.testing.assert_array_equal(values(path, "/matrix"), matrix)
    ds = loomx.open_loom(path)
    loomx.to_loom(ds, path, mode="a", encoding={"Gene": {"compression": "lzf"}})
    assert storage(path, "/row_attrs/Gene")[1] == "lzf"


def test_append_takes_layers_with_dims_in_either_order(source, tmp_path):
    path, matrix = source
    target = tmp_path / "target.loom"
    target.write_bytes(path.read_bytes())
    more = loomx.open_loom(path).isel(col=slice(0, 50))
    flipped = more.assign({name: more[name].transpose("col", "row") for name in more.data_vars})
    assert flipped["matrix"].dims == ("col", "row")
    loomx.append(target, flipped)
    np.testing.assert_array_equal(values(target, "/matrix")[:, M:], matrix[:, :50])
    np.testing.assert_array_equal(values(target, "/layers/fast")[:, M:], matrix[:, :50] * 2)


def test_lzf_compression_needs_no_level(tmp_path):
    ds = xr.Dataset({"matrix": (("row", "col"), np.arange(12.0).reshape(3, 4))})
    loomx.to_loom(ds, tmp_path / "lzf.loom", compression="lzf")
    with h5py.File(tmp_path / "lzf.loom", "r") as f:
        assert f["matrix"].compression == "lzf"
    np.testing.assert_array_equal(
        loomx.open_loom(tmp_path / "lzf.loom")["matrix"].values, ds["matrix"].values
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"compression": "foo"}, {"compression_opts": 12}, {"chunks": (0, 64)}, {"chunks": (64,)}],
)
def test_bad_storage_options_refused_before_writing(tmp_path, kwargs):
    ds = xr.Dataset({"matrix": (("row", "col"), np.ones((3, 4)))})
    with pytest.raises(ValueError, match=r"compression|chunks"):
        loomx.to_loom(ds, tmp_path / "x.loom", **kwargs)
    assert list(tmp_path.iterdir()) == []

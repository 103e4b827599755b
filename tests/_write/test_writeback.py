"""Write-back of a layer changed in only one dask block reaches the disk, whichever block.

A writer that compared only some blocks of a layer with the disk (say the last one) to
decide whether it changed would pass tests that change a whole layer; these change one
block: the first, an interior or the last, along rows or along columns.
"""

from __future__ import annotations

import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr

import loomx
from loomx.testing import write_loom_h5py

N, M = 96, 192
BLOCKS = {"row": 32, "col": 64}  # 3 x 3 dask blocks, each 2 x 4 HDF5 chunks of 16 x 16
WHICH = {"first": 0, "interior": 1, "last": 2}


def original() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    matrix = rng.poisson(1.0, (N, M)).astype(np.float32)
    return {"": matrix, "norm": np.log1p(matrix.astype(np.float64))}


def changed_region(dim: str, which: str) -> tuple[slice, slice]:
    start = WHICH[which] * BLOCKS[dim]
    span = slice(start, start + BLOCKS[dim])
    return (span, slice(None)) if dim == "row" else (slice(None), span)


@pytest.mark.parametrize("how", ["xr.where", "one element"])
@pytest.mark.parametrize("which", list(WHICH))
@pytest.mark.parametrize("dim", ["row", "col"])
@pytest.mark.parametrize("layer", ["matrix", "norm"])
def test_change_in_one_block_is_written_back(tmp_path, layer, dim, which, how):
    layers = original()
    path = tmp_path / "wb.loom"
    write_loom_h5py(path, layers, chunks=(16, 16))
    ds = loomx.open_loom(path, chunks=BLOCKS)
    var = ds[layer]
    assert var.data.numblocks == (3, 3)
    expected = layers["" if layer == "matrix" else layer].copy()
    region = changed_region(dim, which)
    if how == "xr.where":
        index = xr.DataArray(np.arange(ds.sizes[dim]), dims=dim)
        span = region[0] if dim == "row" else region[1]
        inside = (index >= span.start) & (index < span.stop)
        new = xr.where(inside, var + 1, var).astype(var.dtype).transpose(*var.dims)
        expected[region] += 1
    else:  # a single value in the middle of the block
        rows, cols = np.arange(N)[region[0]], np.arange(M)[region[1]]
        r, c = rows[len(rows) // 2], cols[len(cols) // 2]
        mask = np.zeros((N, M), bool)
        mask[r, c] = True
        new = var.copy(data=da.where(da.from_array(mask, chunks=var.data.chunks), -7, var.data))
        expected[r, c] = -7
    ds[layer] = new
    loomx.to_loom(ds, path, mode="a")  # with ds, opened from this file, still alive
    with h5py.File(path, "r") as f:
        h5path = "matrix" if layer == "matrix" else f"layers/{layer}"
        assert f[h5path].dtype == expected.dtype
        assert f[h5path][()].tobytes() == expected.tobytes()
        other = "layers/norm" if layer == "matrix" else "matrix"
        unchanged = layers["norm" if layer == "matrix" else ""]
        assert f[other][()].tobytes() == unchanged.tobytes()
    ds.close()


def test_layer_with_transposed_dims_is_written_as_the_layer(tmp_path):
    layers = original()
    path = tmp_path / "t.loom"
    write_loom_h5py(path, layers, chunks=(16, 16))
    ds = loomx.open_loom(path, chunks=BLOCKS)
    inside = xr.DataArray(np.arange(M) < BLOCKS["col"], dims="col")
    ds["norm"] = xr.where(inside, ds["norm"] + 1, ds["norm"])
    assert ds["norm"].dims == ("col", "row")
    expected = layers["norm"].copy()
    expected[:, : BLOCKS["col"]] += 1
    loomx.to_loom(ds, path, mode="a")  # (col, row): xr.where put the column dim first
    ds.close()
    with h5py.File(path, "r") as f:
        assert "norm" not in f["col_attrs"]
        np.testing.assert_array_equal(f["layers/norm"][()], expected)


@pytest.mark.parametrize(
    "new_value",
    [
        pytest.param(np.float64(-0.0), id="0.0 to -0.0"),
        pytest.param(np.array(0x7FF8000000000001, np.uint64).view(np.float64), id="NaN payload"),
    ],
)
def test_change_seen_only_in_the_bits_is_written_back(tmp_path, new_value):
    layers = original()
    layers["norm"][5, 100] = np.nan if np.isnan(new_value) else 0.0
    path = tmp_path / "bits.loom"
    write_loom_h5py(path, layers, chunks=(16, 16))
    ds = loomx.open_loom(path, chunks=BLOCKS)
    expected = layers["norm"].copy()
    expected[5, 100] = new_value
    assert expected.tobytes() != layers["norm"].tobytes()
    ds["norm"] = ds["norm"].copy(data=da.from_array(expected, chunks=ds["norm"].data.chunks))
    loomx.to_loom(ds, path, mode="a")
    ds.close()
    with h5py.File(path, "r") as f:
        assert f["layers/norm"][()].tobytes() == expected.tobytes()

"""xarray's default (NaN-skipping) mean, var and std of loomx layers against numpy."""

from __future__ import annotations

import pickle
import warnings

import dask
import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr

import loomx
from loomx._read import layer as _layer

pytestmark = pytest.mark.filterwarnings("ignore:.*(empty slice|invalid value|Degrees of freedom)")


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    """A float32 layer with NaN, inf, an all-NaN row and an all-NaN column."""
    rng = np.random.default_rng(5)
    values = (rng.random((300, 500)) * 50 * (rng.random((300, 500)) < 0.2)).astype("float32")
    values[rng.random(values.shape) < 0.05] = np.nan
    values[7, :] = np.nan
    values[:, 11] = np.nan
    values[3, 4] = np.inf
    values[:, 20] += 1e4  # a large offset: sums of squares about 0 would lose it
    path = tmp_path_factory.mktemp("reduce") / "awkward.loom"
    loomx.to_loom(xr.Dataset({"matrix": (("row", "col"), values)}), path)
    with h5py.File(path, "r") as f:
        return path, f["matrix"][:]


@pytest.fixture(params=["compiled", "numpy"])
def moments_path(request, monkeypatch):
    """The fused moments compiled, or in NumPy as before a process loads its kernels."""
    from loomx._hdf5 import first_calls

    first = request.param == "numpy"
    monkeypatch.setattr(first_calls, "runs_in_python_first", lambda seconds: first)
    return request.param


@pytest.mark.parametrize("chunks", [{"row": 64, "col": 128}, {"row": 300, "col": 64}, "auto"])
@pytest.mark.parametrize("ddof", [0, 1])
def test_defaults_equal_numpy(awkward, chunks, ddof, moments_path) -> None:
    path, values = awkward
    m = loomx.open_loom(path, chunks=chunks)["matrix"]
    assert isinstance(m.data, _layer.LayerArray)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        expected = {
            ("col", "mean"): np.nanmean(values.astype("f8"), axis=1),
            ("row", "mean"): np.nanmean(values.astype("f8"), axis=0),
            ("col", "var"): np.nanvar(values.astype("f8"), axis=1, ddof=ddof),
            ("row", "var"): np.nanvar(values.astype("f8"), axis=0, ddof=ddof),
            ("col", "std"): np.nanstd(values.astype("f8"), axis=1, ddof=ddof),
            ("row", "std"): np.nanstd(values.astype("f8"), axis=0, ddof=ddof),
        }
    for (dim, stat), want in expected.items():
        kwargs = {} if stat == "mean" else {"ddof": ddof}
        with np.errstate(all="ignore"):
            got = getattr(m, stat)(dim, **kwargs)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got.values, want, rtol=2e-6, equal_nan=True, err_msg=stat)


def test_the_fused_path_runs_once_per_block(awkward, monkeypatch) -> None:
    path, values = awkward
    m = loomx.open_loom(path, chunks={"row": 100, "col": 250})["matrix"]
    calls: list[tuple[int, ...]] = []
    moments = _layer._block_moments

    def counting(block, axis, with_m2):
        calls.append(axis)
        return moments(block, axis, with_m2)

    monkeypatch.setattr(_layer, "_block_moments", counting)
    with np.errstate(all="ignore"):
        mean, std = dask.compute(m.mean("col"), m.std("col"))
    assert calls.count((1,)) == 2 * 3 * 2  # one mean and one moment step per block
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_allclose(mean.values, np.nanmean(values.astype("f8"), axis=1), rtol=2e-6)
        np.testing.assert_allclose(std.values, np.nanstd(values.astype("f8"), axis=1), rtol=2e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("axis", [0, 1])
def test_numpy_moments_equal_the_compiled_ones(dtype, axis) -> None:
    rng = np.random.default_rng(9)
    values = (rng.random((97, 203)) * 300 * (rng.random((97, 203)) < 0.4)).astype(dtype)
    if values.dtype.kind == "f":
        values[rng.random(values.shape) < 0.1] = np.nan
        values[:, 5] = values[13, :] = np.nan
        values[2, 3] = np.inf
        values[40, 41] = -np.inf
    compiled = _layer._moments_along_rows if axis == 1 else _layer._moments_along_cols
    shape = (-1, 1) if axis == 1 else (1, -1)
    for with_m2 in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # inf - inf warns nowhere, as compiled
            numpy_n, numpy_total, numpy_m2 = _layer._moments_in_numpy(values, axis, with_m2)
        n, total, m2 = compiled(values, with_m2)
        np.testing.assert_array_equal(numpy_n, n.reshape(shape))
        np.testing.assert_allclose(numpy_total, total.reshape(shape), rtol=1e-13)
        np.testing.assert_allclose(
            numpy_m2, m2.reshape(shape), rtol=1e-11, atol=1e-9, equal_nan=True
        )


def test_a_float16_layer_reduces_as_numpy(tmp_path) -> None:
    """numba has no float16: such layers take dask's own reductions."""
    values = (np.random.default_rng(8).random((70, 150)) * 9).astype(np.float16)
    values[3, 4] = np.nan
    path = tmp_path / "other.loom"
    loomx.to_loom(xr.Dataset({"matrix": (("row", "col"), values)}), path)
    with h5py.File(path, "r") as f:
        stored = f["matrix"][...]
    m = loomx.open_loom(path, chunks={"row": 32, "col": 64})["matrix"]
    wide = stored.astype("f8")
    for dim, axis in (("col", 1), ("row", 0)):
        np.testing.assert_allclose(m.mean(dim).values, np.nanmean(wide, axis), rtol=2e-3)
        np.testing.assert_allclose(m.sum(dim).values, np.nansum(wide, axis), rtol=2e-3)
        np.testing.assert_allclose(m.std(dim).values, np.nanstd(wide, axis), rtol=2e-3)


def test_derived_arrays_and_other_reductions_are_plain_dask(awkward, monkeypatch) -> None:
    path, values = awkward
    m = loomx.open_loom(path, chunks={"row": 100, "col": 250})["matrix"]
    monkeypatch.setattr(_layer, "_block_moments", _fail)
    shifted = m + 1
    assert type(shifted.data) is da.Array
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(
            shifted.mean("col").values, np.nanmean(values + 1, axis=1), rtol=2e-6
        )
        # both axes at once, integer layers and skipna=False take dask's own path
        np.testing.assert_allclose(m.mean().values, np.nanmean(values), rtol=1e-5)
        np.testing.assert_allclose(
            m.mean("col", skipna=False).values, values.mean(axis=1, dtype="f4"), rtol=1e-5
        )
    assert type(pickle.loads(pickle.dumps(m.data))) is da.Array


def _fail(*args: object) -> None:
    raise AssertionError("the fused step ran for an array it does not cover")


def test_layers_on_real_worker_processes(awkward) -> None:
    path, values = awkward
    m = loomx.open_loom(path, chunks={"row": 100, "col": 250})["matrix"]
    with dask.config.set(scheduler="processes", num_workers=2), np.errstate(all="ignore"):
        std = m.std("row", ddof=1).values
        np.testing.assert_allclose(std, np.nanstd(values.astype("f8"), axis=0, ddof=1), rtol=2e-6)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("chunks", [{"row": 64, "col": 128}, "auto"])
def test_picked_rows_and_columns_equal_h5py(awkward, axis, chunks) -> None:
    path, values = awkward
    m = loomx.open_loom(path, chunks=chunks)["matrix"]
    rng = np.random.default_rng(axis)
    picks = rng.integers(0, values.shape[axis], 150)  # unsorted, with repeats
    dim = m.dims[axis]
    picked = m.isel({dim: picks})
    names = {key[0] for key in picked.data.__dask_graph__()}
    assert all(str(n).startswith("loomx-picked-") for n in names)  # nothing else is read
    expected = values[picks] if axis == 0 else values[:, picks]
    np.testing.assert_array_equal(picked.values, expected)
    other = m.dims[1 - axis]
    part = m.isel({dim: picks, other: slice(13, 211)}).values
    np.testing.assert_array_equal(
        part, values[picks, 13:211] if axis == 0 else values[13:211][:, picks]
    )
    with dask.config.set(scheduler="processes", num_workers=2):
        np.testing.assert_array_equal(picked.values, expected)


def test_picks_of_derived_arrays_and_vectors_on_both_axes_use_dask(awkward) -> None:
    path, values = awkward
    m = loomx.open_loom(path, chunks={"row": 64, "col": 128})["matrix"]
    rows, cols = np.array([5, 1, 250]), np.array([7, 499, 0])
    both = m.isel(row=rows, col=cols)  # xarray picks one axis after the other
    np.testing.assert_array_equal(both.values, values[np.ix_(rows, cols)])
    shifted = (m * 2).isel(col=cols)
    assert not any(str(k[0]).startswith("loomx-picked-") for k in shifted.data.__dask_graph__())
    np.testing.assert_array_equal(shifted.values, values[:, cols] * 2)


def test_picks_see_pending_region_patches(tmp_path) -> None:
    values = np.arange(128 * 256, dtype="float32").reshape(128, 256)
    path = tmp_path / "p.loom"
    loomx.to_loom(xr.Dataset({"matrix": (("row", "col"), values)}), path)
    region = xr.Dataset({"matrix": (("row", "col"), np.full((128, 64), -1, "float32"))})
    loomx.to_loom(region, path, mode="r+", region={"col": slice(64, 128)})
    m = loomx.open_loom(path)["matrix"]
    cols = np.array([200, 70, 3, 127])
    expected = values[:, cols].copy()
    expected[:, [1, 3]] = -1
    np.testing.assert_array_equal(m.isel(col=cols).values, expected)


@pytest.mark.parametrize("dim", ["row", "col"])
def test_default_sums_skip_nan_in_one_pass_and_equal_numpy(awkward, dim) -> None:
    path, values = awkward
    m = loomx.open_loom(path, chunks={"row": 64, "col": 128})["matrix"]
    total = m.sum(dim)
    names = {str(key[0]).rsplit("-", 1)[0] for key in total.data.__dask_graph__()}
    assert "_nansum_chunk" in names or any("nansum_chunk" in n for n in names)
    assert not any(n.startswith(("isnan", "where", "zeros_like")) for n in names)
    axis = m.dims.index(dim)
    expected = np.nansum(values.astype("f8"), axis=axis)
    assert total.dtype == np.float32
    np.testing.assert_allclose(total.values, expected, rtol=2e-6)
    # what the fused path does not cover is dask's own graph, with the same values
    counted = np.where((~np.isnan(values)).sum(axis=axis) > 0, expected, np.nan)
    np.testing.assert_allclose(m.sum(dim, min_count=1).values, counted, rtol=1e-5)
    np.testing.assert_allclose(m.sum().values, np.nansum(values.astype("f8")), rtol=1e-5)
    finite = np.where(np.isnan(values), 0, values)
    np.testing.assert_allclose(
        m.fillna(0).sum(dim).values, finite.sum(axis=axis, dtype="f8"), rtol=1e-5
    )


@pytest.fixture(scope="module")
def few_nans(tmp_path_factory):
    """A float32 layer with NaN in a few rows and columns only (their sums are NaN when
    NaN is not skipped, the others numbers)."""
    rng = np.random.default_rng(8)
    values = (rng.random((150, 260)) * 20).astype("float32")
    values[[4, 90], [30, 200]] = np.nan
    values[120, 7] = np.nan
    path = tmp_path_factory.mktemp("sum") / "few_nans.loom"
    loomx.to_loom(xr.Dataset({"matrix": (("row", "col"), values)}), path)
    with h5py.File(path, "r") as f:
        return path, f["matrix"][:]


@pytest.mark.parametrize("dim", ["row", "col"])
def test_sum_without_skipna_keeps_nan_like_numpy(few_nans, dim) -> None:
    path, values = few_nans
    m = loomx.open_loom(path, chunks={"row": 64, "col": 128})["matrix"]
    assert isinstance(m.data, _layer.LayerArray)
    axis = m.dims.index(dim)
    expected = values.astype("f8").sum(axis=axis)
    assert 0 < np.isnan(expected).sum() < 4  # NaN where a NaN is summed, numbers elsewhere
    got = m.sum(dim, skipna=False)
    np.testing.assert_array_equal(np.isnan(got.values), np.isnan(expected))
    np.testing.assert_allclose(got.values, expected, rtol=2e-6)
    np.testing.assert_allclose(np.sum(m.data, axis=axis).compute(), expected, rtol=2e-6)
    assert np.isnan(m.sum(skipna=False).values)
    skipped = m.sum(dim)  # the default skips NaN
    np.testing.assert_allclose(skipped.values, np.nansum(values.astype("f8"), axis=axis), rtol=2e-6)
    assert not np.isnan(skipped.values).any()


@pytest.mark.parametrize("new", [(300, 64), (37, 500), (128, 100)])
def test_reread_blocks_come_straight_from_the_file_and_equal_h5py(awkward, new) -> None:
    path, values = awkward
    m = loomx.open_loom(path, chunks={"row": 64, "col": 128})["matrix"]
    bands = _layer.reread(m.data, new)
    names = {key[0] for key in bands.__dask_graph__()}
    assert all(str(n).startswith("loomx-reread-") for n in names)  # no old block read
    assert bands.chunks == da.core.normalize_chunks(new, values.shape)
    assert bands.npartitions == len(bands.__dask_graph__())
    np.testing.assert_array_equal(bands.compute(), values)
    np.testing.assert_array_equal(bands[:, [3, 499]].compute(), values[:, [3, 499]])
    with dask.config.set(scheduler="processes", num_workers=2):
        np.testing.assert_array_equal(bands.compute(), values)
    derived = _layer.reread((m * 2).data, new)  # not the layer itself: dask's rechunk
    assert not any(str(k[0]).startswith("loomx-reread-") for k in derived.__dask_graph__())
    np.testing.assert_array_equal(derived.compute(), values * 2)

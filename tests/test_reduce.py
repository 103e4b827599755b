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
from loomx import _reduce


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


@pytest.mark.parametrize("chunks", [{"row": 64, "col": 128}, {"row": 300, "col": 64}, "auto"])
@pytest.mark.parametrize("ddof", [0, 1])
def test_defaults_equal_numpy(awkward, chunks, ddof) -> None:
    path, values = awkward
    m = loomx.open_loom(path, chunks=chunks)["matrix"]
    assert isinstance(m.data, _reduce.LayerArray)
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
    moments = _reduce._block_moments

    def counting(block, axis, with_m2):
        calls.append(axis)
        return moments(block, axis, with_m2)

    monkeypatch.setattr(_reduce, "_block_moments", counting)
    with np.errstate(all="ignore"):
        mean, std = dask.compute(m.mean("col"), m.std("col"))
    assert calls.count((1,)) == 2 * 3 * 2  # one mean and one moment step per block
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_allclose(mean.values, np.nanmean(values.astype("f8"), axis=1), rtol=2e-6)
        np.testing.assert_allclose(std.values, np.nanstd(values.astype("f8"), axis=1), rtol=2e-6)


def test_derived_arrays_and_other_reductions_are_plain_dask(awkward, monkeypatch) -> None:
    path, values = awkward
    m = loomx.open_loom(path, chunks={"row": 100, "col": 250})["matrix"]
    monkeypatch.setattr(_reduce, "_block_moments", _fail)
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

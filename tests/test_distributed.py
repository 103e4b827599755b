"""The same Dataset computes on every dask scheduler, including worker processes."""

from __future__ import annotations

from pathlib import Path

import dask
import h5py
import numpy as np
import pytest

import loomx


@pytest.fixture(scope="module")
def expected(example_loom):
    with h5py.File(example_loom, "r") as f:
        matrix = f["matrix"][:]
    return matrix.sum(axis=1), matrix[:, ::7].mean(axis=0)


def compute(ds):
    sub = ds["matrix"].isel(col=slice(None, None, 7))
    return dask.compute(ds["matrix"].sum("col").data, sub.mean("row").data)


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_local_schedulers(example_loom, expected, scheduler):
    ds = loomx.open_loom(example_loom, chunks={"row": 128, "col": 256})
    ds["matrix"].sum().compute(scheduler="sync")  # a handle is open in this process
    with dask.config.set(scheduler=scheduler, num_workers=2):
        sums, means = compute(ds)
    np.testing.assert_allclose(sums, expected[0], rtol=1e-6)
    np.testing.assert_allclose(means, expected[1], rtol=1e-6)


def test_local_cluster_with_worker_processes(example_loom, expected):
    distributed = pytest.importorskip("distributed")
    ds = loomx.open_loom(example_loom, chunks={"row": 128, "col": 256})
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        pids = set(client.run(lambda: __import__("os").getpid()).values())
        assert len(pids) == 2 and __import__("os").getpid() not in pids
        sums, means = compute(ds)
        graph = ds.loom.col_graphs["KNN"]  # graphs load through the client too
    np.testing.assert_allclose(sums, expected[0], rtol=1e-6)
    np.testing.assert_allclose(means, expected[1], rtol=1e-6)
    assert graph.shape == (700, 700)


def test_write_through_a_client_that_is_not_the_default(example_loom, tmp_path):
    """dask.config.set(scheduler=client) with a Client(set_as_default=False): the writer
    streams blocks through that client (it asked distributed for the default one before)."""
    distributed = pytest.importorskip("distributed")
    ds = loomx.open_loom(example_loom, chunks={"row": 128, "col": 256})
    ds = ds.assign(doubled=ds["matrix"] * 2)
    out = tmp_path / "out.loom"
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
        dask.config.set(scheduler=client),
    ):
        loomx.to_loom(ds, out)
    with h5py.File(example_loom, "r") as f, h5py.File(out, "r") as g:
        np.testing.assert_array_equal(g["layers/doubled"][()], f["matrix"][()] * 2)


def test_append_and_recover_after_workers_read_the_target(example_loom, tmp_path):
    """Worker processes keep read handles on the file they read: append and recover
    release them through the current client before opening it for writing."""
    distributed = pytest.importorskip("distributed")
    target = tmp_path / "target.loom"
    target.write_bytes(Path(example_loom).read_bytes())
    with h5py.File(target, "r") as f:
        before = f["matrix"][()]
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster),
    ):
        ds = loomx.open_loom(target, chunks={"row": 128, "col": 256})
        ds["matrix"].sum().compute()  # the worker now holds the file open
        loomx.append(target, loomx.open_loom(example_loom))
        assert loomx.recover(target) == 0
        ds.close()
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["matrix"][:, : before.shape[1]], before)
        assert f["matrix"].shape == (before.shape[0], 2 * before.shape[1])

"""loomx._write.stream: layer blocks computed on any scheduler and written in one process.

Threads, sync, processes and a ``distributed`` cluster write the same file (compared with
h5py), blocks that do not fall on HDF5 chunk edges are written right, ``queue_columns``
packs only whole chunks, and writing without a cluster never imports ``distributed``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dask
import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import (
    CELLS,
    GENES,
    make_ds,
)

import loomx
from loomx._write import stream as _stream
from loomx._write.writer import to_loom
from loomx.testing import assert_loom_identical

N, M = len(GENES), len(CELLS)


def test_unaligned_blocks_are_written_correctly(tmp_path):
    ds = make_ds(chunks=(7, 33))
    to_loom(ds, tmp_path / "u.loom")
    with h5py.File(tmp_path / "u.loom", "r") as f:
        np.testing.assert_array_equal(f["matrix"][:], ds["matrix"].values)


def _source_and_derived(tmp_path: Path) -> tuple[Path, xr.Dataset]:
    src = tmp_path / "src.loom"
    to_loom(make_ds(), src)
    ds = loomx.open_loom(src, chunks={"row": 64, "col": 64})
    ds["scaled"] = ds["matrix"] * 2 + 1
    return src, ds


@pytest.mark.parametrize("scheduler", ["threads", "sync", "processes"])
def test_local_schedulers_give_identical_files(tmp_path, scheduler):
    src, ds = _source_and_derived(tmp_path)
    reference = tmp_path / "ref.loom"
    with dask.config.set(scheduler="sync"):
        to_loom(ds, reference)
    out = tmp_path / "out.loom"
    with dask.config.set(scheduler=scheduler, num_workers=2):
        to_loom(ds, out)
        to_loom(ds.assign(back=ds["matrix"] - 1), src, mode="a")  # reads src, writes src
    assert_loom_identical(out, reference)
    with h5py.File(src, "r") as f, h5py.File(reference, "r") as r:
        np.testing.assert_array_equal(f["layers/back"][:], r["matrix"][:] - 1)


def _hold_read_handle(path: str, dask_worker: object = None) -> None:
    from loomx._read.store import LoomStore

    store = LoomStore(path)
    with store.open() as f:
        assert f["matrix"].shape == (N, M)
    dask_worker.loomx_test_store = store  # type: ignore[attr-defined]


def test_distributed_cluster_gives_identical_files(tmp_path):
    distributed = pytest.importorskip("distributed")
    src, ds = _source_and_derived(tmp_path)
    reference = tmp_path / "ref.loom"
    with dask.config.set(scheduler="sync"):
        to_loom(ds, reference)
    out = tmp_path / "out.loom"
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        to_loom(ds, out)
        ds["matrix"].sum().compute()
        client.run(_hold_read_handle, str(src))  # as a worker keeping a Dataset alive does
        to_loom(ds.assign(back=ds["matrix"] - 1), src, mode="a")
        delayed = to_loom(ds, tmp_path / "delayed.loom", compute=False)
        delayed.compute()
    assert_loom_identical(out, reference)
    assert_loom_identical(tmp_path / "delayed.loom", reference)
    with h5py.File(src, "r") as f, h5py.File(reference, "r") as r:
        np.testing.assert_array_equal(f["layers/back"][:], r["matrix"][:] - 1)


def test_writing_without_a_cluster_does_not_import_distributed(tmp_path):
    code = (
        "import sys, dask, numpy as np, xarray as xr, loomx\n"
        "ds = xr.Dataset({'matrix': (('row', 'col'), np.ones((100, 300), 'float32'))})\n"
        f"loomx.to_loom(ds.chunk({{'col': 70}}), {str(tmp_path / 'x.loom')!r})\n"
        "with dask.config.set(scheduler='sync'):\n"
        f"    loomx.to_loom(ds.chunk({{'col': 70}}), {str(tmp_path / 'z.loom')!r})\n"
        f"loomx.combine([{str(tmp_path / 'x.loom')!r}] * 2, {str(tmp_path / 'y.loom')!r})\n"
        "print('distributed' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # importing it costs about 0.15 s per process


@pytest.mark.parametrize(
    ("col0", "k"), [(0, 64), (0, 100), (10, 200), (60, 4), (64, 190), (30, 224), (0, 254)]
)
def test_only_whole_chunks_are_packed(tmp_path: Path, col0: int, k: int) -> None:
    """Chunks shared with a neighbouring input go through h5py (read-modify-write); only
    chunks wholly inside the input's columns (or ending at the layer's end) are packed."""

    with h5py.File(tmp_path / "t.h5", "w") as f:
        dset = f.create_dataset("x", (N, 254), "f4", chunks=(64, 64), compression="gzip")
        jobs: list = []
        _stream.queue_columns(jobs, dset, da.ones((N, k), "f4", chunks=(N, 48)), col0, None)
    starts = [sink.col0 for _, sink in jobs]
    assert starts == sorted(starts) and starts[0] == col0
    packed = [piece.dtype == object for piece, _ in jobs]
    for start, stop, pack in zip(starts, [*starts[1:], col0 + k], packed, strict=True):
        assert stop > start
        if pack:
            assert start % 64 == 0 and (stop % 64 == 0 or stop == 254), (start, stop)
    assert any(packed) == (k - (-col0 % 64) >= 64 or (col0 + k == 254 and col0 % 64 == 0))

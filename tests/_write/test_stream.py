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


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
@pytest.mark.parametrize("slow", [False, True])
def test_packed_blocks_are_written_by_one_writer_thread(tmp_path, monkeypatch, scheduler, slow):
    import threading
    import time

    from loomx._hdf5 import codecs as _codecs

    writers: list[str] = []
    real = _codecs.write_packed

    def record(dset, packed, fresh=True):
        writers.append(threading.current_thread().name)
        if slow:  # the write still queued when every block has been computed
            time.sleep(0.2)
        return real(dset, packed, fresh)

    monkeypatch.setattr(_codecs, "write_packed", record)
    ds = make_ds(chunks=(64, 64))
    with dask.config.set(scheduler=scheduler):
        to_loom(ds, tmp_path / "w.loom")
    assert writers and set(writers) == {"loomx-writer"}
    with h5py.File(tmp_path / "w.loom", "r") as f:
        np.testing.assert_array_equal(f["matrix"][:], ds["matrix"].values)


@pytest.mark.parametrize("mode", ["w", "a"])
def test_a_failing_chunk_write_fails_the_write_and_leaves_the_file(tmp_path, monkeypatch, mode):
    from conftest import temp_files

    from loomx._hdf5 import codecs as _codecs

    target = tmp_path / "t.loom"
    if mode == "a":
        to_loom(make_ds(), target)
    before = target.read_bytes() if mode == "a" else None
    calls = []
    real = _codecs.write_packed

    def fail_second(dset, packed, fresh=True):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        return real(dset, packed, fresh)

    monkeypatch.setattr(_codecs, "write_packed", fail_second)
    ds = make_ds(seed=1, chunks=(64, 64))
    ds["extra"] = ds["matrix"] * 3
    with pytest.raises(OSError, match="disk full"):
        to_loom(ds, target, mode=mode)
    if mode == "a":
        assert target.read_bytes() == before
    else:
        assert not target.exists()
    assert temp_files(tmp_path) == []


def test_the_writer_queue_holds_at_most_depth_blocks():
    import threading

    release = threading.Event()
    written = []

    class SlowSink:
        def write_packed(self, packed):
            release.wait()
            written.append(packed)

    writer = _stream.Writer(depth=2)
    sink = SlowSink()
    for k in range(3):  # one in the writer's hands, two queued
        writer.put(sink, k)
    blocked = threading.Thread(target=writer.put, args=(sink, 3))
    blocked.start()
    blocked.join(timeout=0.3)
    assert blocked.is_alive() and writer.queue.qsize() == 2
    release.set()
    blocked.join()
    writer.close()
    assert written == [0, 1, 2, 3] and writer.written == 4

"""Remote Loom files: URLs over a loopback HTTP server with Range requests and a loopback
S3 API server (moto), and open binary file objects.  Values are compared with h5py on the
local copy; the servers count the requests and bytes each read costs."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil

import dask
import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import chunk_places, run_cli

import loomx
from loomx._hdf5 import remote
from loomx._hdf5.remote import BLOCK_SIZE, RemoteSource, coalesce, local_copy
from loomx._write import transaction as _transaction
from loomx.errors import LoomFileError, LoomFileNotFoundError, LoomWriteError
from loomx.testing import make_example_loom
from loomx.testing.servers import RangeHTTPServer, S3Server

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

LAYERS = {"matrix": "/matrix", "spliced": "/layers/spliced", "ambiguous": "/layers/ambiguous"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A folder with an example file, served over loopback HTTP."""
    folder = tmp_path_factory.mktemp("served")
    make_example_loom(folder / "example.loom", 300, 700)
    (folder / "notes.txt").write_text("not an HDF5 file\n" * 10)
    with RangeHTTPServer(folder) as server:
        server.folder = folder
        yield server


@pytest.fixture(scope="module")
def local(served):
    path = served.folder / "example.loom"
    with h5py.File(path, "r") as f:
        arrays = {name: f[h5path][()] for name, h5path in LAYERS.items()}
        arrays["CellID"] = f["col_attrs/CellID"].asstr()[()]
        arrays["Gene"] = f["row_attrs/Gene"].asstr()[()]
    return path, arrays


def column_chunks_bytes(path, h5path: str, col: int, width: int = 64) -> tuple[int, int]:
    """(number, total stored size) of the chunks holding column ``col`` (from h5py)."""
    places = chunk_places(path, h5path)
    held = [size for (r, c), (_, size) in places.items() if c == (col // width) * width]
    return len(held), sum(held)


def test_http_url_reads_what_h5py_reads(served, local):
    path, arrays = local
    ds = loomx.open_loom(served.url("example.loom"))
    for name in LAYERS:
        np.testing.assert_array_equal(ds[name].values, arrays[name])
    np.testing.assert_array_equal(
        ds["matrix"][17:101, 5:650:3].values, arrays["matrix"][17:101, 5:650:3]
    )
    assert list(ds["CellID"].values) == list(arrays["CellID"])
    assert list(ds["Gene"].values) == list(arrays["Gene"])
    knn = ds.loom.col_graphs.edges("KNN")
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(knn["a"], f["col_graphs/KNN/a"][()])
    assert ds.encoding["source"] == served.url("example.loom")


def test_http_read_fetches_only_the_chunks_it_needs(served, local):
    """With the chunk index given (to_kerchunk), one column costs exactly the stored bytes
    of the chunks holding it; a row band costs one request per run of adjacent chunks."""
    path, arrays = local
    url = served.url("example.loom")
    refs = loomx.to_kerchunk(url)
    ds = loomx.open_loom(url, chunk_index=refs, chunks=None)
    assert ds["matrix"][0, 0].values == arrays["matrix"][0, 0]  # the handle is open now
    served.counts.reset()
    np.testing.assert_array_equal(ds["matrix"][:, 200].values, arrays["matrix"][:, 200])
    requests, nbytes = served.counts.reset()
    n_chunks, chunk_bytes = column_chunks_bytes(path, "/matrix", 200)
    assert chunk_bytes <= nbytes <= 2 * chunk_bytes  # gaps joined within the budget
    assert requests <= n_chunks
    places = sorted(v for (r, _), v in chunk_places(path, "/matrix").items() if r == 128)
    runs = 1 + sum(1 for a, b in itertools.pairwise(places) if a[0] + a[1] != b[0])
    np.testing.assert_array_equal(ds["matrix"][128:192].values, arrays["matrix"][128:192])
    requests, nbytes = served.counts.reset()
    needed = sum(size for _, size in places)
    assert needed <= nbytes <= 2 * needed
    assert requests <= runs < len(places)  # adjacent chunks in one range


def test_http_open_and_index_read_a_small_part_of_a_larger_file(tmp_path):
    """Opening reads metadata only; the first column read builds the layer's chunk index
    from HDF5 (small reads), then the chunks of that column.  Given the index
    (to_kerchunk), the first column read fetches its chunks and at most a few metadata
    blocks (the HDF5 chunk index is spread over many)."""
    path = make_example_loom(tmp_path / "wide.loom", 400, 6000, density=0.3)
    size = os.path.getsize(path)
    with h5py.File(path, "r") as f:
        expected = f["matrix"][:, 4321]
    _, chunk_bytes = column_chunks_bytes(path, "/matrix", 4321)
    with RangeHTTPServer(tmp_path) as server:
        url = server.url("wide.loom")
        ds = loomx.open_loom(url, chunk_index=loomx.to_kerchunk(path, url=url))
        server.counts.reset()
        np.testing.assert_array_equal(ds["matrix"][:, 4321].values, expected)
        _, read_bytes = server.counts.reset()
        assert chunk_bytes <= read_bytes <= chunk_bytes + 2 * BLOCK_SIZE
        ds = loomx.open_loom(url)
        open_requests, open_bytes = server.counts.reset()
        assert open_bytes < size / 10 and open_requests < 20
        np.testing.assert_array_equal(ds["matrix"][:, 4321].values, expected)
        _, read_bytes = server.counts.reset()
        assert chunk_bytes + 8 * BLOCK_SIZE < read_bytes < size / 4


def test_coalesce_covers_every_run_within_the_budget():
    """Random runs (unsorted, overlapping, touching): each run is found at its place in its
    request; requests are in file order and apart; the gaps fetched stay within the budget
    and under the largest gap; no request joined over a gap grows past its limit (runs
    that overlap are always joined)."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    for case in range(300):
        n = int(rng.integers(1, 30))
        runs = [
            (int(o), int(k))
            for o, k in zip(rng.integers(0, 60000, n), rng.integers(1, 2000, n), strict=True)
        ]
        budget, max_gap, limit = [(1.0, 1 << 20, 1 << 30), (0.2, 500, 4000), (0.0, 0, 1)][case % 3]
        requests, placed = coalesce(runs, budget, max_gap, limit)
        got = [data[o : o + k] for o, k in requests]
        for (offset, nbytes), (r, at) in zip(runs, placed, strict=True):
            assert got[r][at : at + nbytes] == data[offset : offset + nbytes]
        assert all(a[0] + a[1] < b[0] for a, b in itertools.pairwise(requests))
        covered = np.zeros(len(data) + 4000, bool)
        for offset, nbytes in runs:
            covered[offset : offset + nbytes] = True
        apart = int(covered.sum()) == sum(k for _, k in runs)  # no two runs overlap
        fetched = sum(k for _, k in requests) - int(covered.sum())
        assert fetched <= budget * sum(k for _, k in runs)
        for offset, nbytes in requests:
            holes = np.flatnonzero(~covered[offset : offset + nbytes])
            widest = max(len(h) for h in np.split(holes, np.flatnonzero(np.diff(holes) > 1) + 1))
            assert widest <= max_gap
            assert not (apart and holes.size) or nbytes <= limit  # joined over a gap
    assert coalesce([]) == ([], [])
    assert coalesce([(0, 10), (10, 5)], budget=0.0) == ([(0, 15)], [(0, 0), (0, 10)])


def test_chunk_reads_are_in_flight_together(tmp_path):
    """With 0.2 s per request (an object store), the chunks of one column are requested
    together, not one after another; and a read from a reference index fetches no HDF5
    metadata, only the column's chunks, apart ranges in separate requests."""
    path = make_example_loom(tmp_path / "tall.loom", 1200, 300, density=0.3)
    with h5py.File(path, "r") as f:
        expected = f["matrix"][:, 77]
    n_chunks, chunk_bytes = column_chunks_bytes(path, "/matrix", 77)
    with RangeHTTPServer(tmp_path, delay=0.2) as server:
        url = server.url("tall.loom")
        ds = loomx.open_loom(url, chunk_index=loomx.to_kerchunk(path, url=url))
        server.counts.reset()
        np.testing.assert_array_equal(ds["matrix"][:, 77].values, expected)
        in_flight = server.counts.max_in_flight
        requests, nbytes = server.counts.reset()
    assert n_chunks == 19 and requests > 1
    assert chunk_bytes <= nbytes <= 2 * chunk_bytes
    assert in_flight == requests  # all at once


def test_remote_source_reads_ranges_into_a_buffer(served, local):
    path, _ = local
    source = RemoteSource(served.url("example.loom"))
    runs = [(5000, 100), (0, 8), (5100, 7), (20000, 3000)]
    buffer = np.zeros(sum(k for _, k in runs), np.uint8)
    assert source.size == path.stat().st_size  # looked up once
    served.counts.reset()
    source.read_into(runs, buffer)
    requests, _ = served.counts.reset()
    data = path.read_bytes()
    assert buffer.tobytes() == b"".join(data[o : o + k] for o, k in runs)
    assert requests == 3  # (5000, 100) and (5100, 7) touch: one request


def test_s3_reads_what_h5py_reads_on_every_scheduler(local):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    path, arrays = local
    with S3Server() as s3:
        s3.upload("atlas", {"cells/example.loom": path})
        options = s3.storage_options()
        ds = loomx.open_loom("s3://atlas/cells/example.loom", storage_options=options)
        _, open_bytes = s3.counts.reset()
        assert 0 < open_bytes < os.path.getsize(path)
        np.testing.assert_array_equal(ds["spliced"].values, arrays["spliced"])
        with dask.config.set(scheduler="processes", num_workers=2):
            sums = ds["matrix"].sum("col").compute()
        np.testing.assert_allclose(sums, arrays["matrix"].sum(axis=1), rtol=1e-6)
        assert s3.requests > 0
        with pytest.raises(LoomWriteError, match="remote files are read-only") as err:
            loomx.to_loom(ds, "s3://atlas/cells/copy.loom")
        assert err.value.path == "s3://atlas/cells/copy.loom"
        with pytest.raises(LoomFileNotFoundError, match=re.escape("s3://atlas/missing.loom")):
            loomx.open_loom("s3://atlas/missing.loom", storage_options=options)


def test_file_objects(served, local):
    fsspec = pytest.importorskip("fsspec")
    path, arrays = local
    with open(path, "rb") as fh:
        ds = loomx.open_loom(fh)
        np.testing.assert_array_equal(ds["matrix"].values, arrays["matrix"])
        with (
            pytest.raises(LoomFileError, match="reads in this process only"),
            dask.config.set(scheduler="processes", num_workers=1),
        ):
            ds["matrix"].sum().compute()
        ds.close()
    with fsspec.open(served.url("example.loom"), "rb") as fh:  # fsspec files pickle
        ds = loomx.open_loom(fh)
        with dask.config.set(scheduler="processes", num_workers=2):
            sums = ds["matrix"].sum("row").compute()
        np.testing.assert_allclose(sums, arrays["matrix"].sum(axis=0), rtol=1e-6)


def test_command_line_reads_urls_and_refuses_to_write_them(served, local):
    url = served.url("example.loom")
    info = run_cli("info", url, "--json")
    assert info.returncode == 0, info.stderr
    facts = json.loads(info.stdout)
    assert facts["shape"] == list(local[1]["matrix"].shape)
    assert facts["file_bytes"] == os.path.getsize(local[0])
    assert run_cli("validate", url).returncode == 0
    qc = run_cli("qc", url, "--quiet")
    assert qc.returncode == 1 and "remote files are read-only" in qc.stderr


def test_remote_errors_name_the_url(served, tmp_path):
    missing = served.url("missing.loom")
    with pytest.raises(LoomFileNotFoundError, match=re.escape(missing)):
        loomx.open_loom(missing)
    with pytest.raises(LoomFileError, match="not an HDF5 file") as err:
        loomx.open_loom(served.url("notes.txt"))
    assert err.value.path == served.url("notes.txt")
    url = served.url("example.loom")
    with pytest.raises(LoomWriteError, match="remote files are read-only"):
        loomx.open_loom(url, mode="r+")
    with pytest.raises(LoomWriteError, match="remote files are read-only"):
        loomx.append(url, loomx.open_loom(url))
    with pytest.raises(ValueError, match="chunk_index is for remote files"):
        loomx.open_loom(served.folder / "example.loom", chunk_index={"version": 1, "refs": {}})


def test_a_file_replaced_on_the_server_is_refused_not_mixed(tmp_path):
    path = make_example_loom(tmp_path / "moving.loom", 200, 300)
    with RangeHTTPServer(tmp_path) as server:
        ds = loomx.open_loom(server.url("moving.loom"))
        make_example_loom(tmp_path / "other.loom", 200, 300, seed=5)
        os.replace(tmp_path / "other.loom", path)
        with (
            pytest.raises(LoomFileError, match="changed since it was opened") as err,
            dask.config.set(scheduler="processes", num_workers=1),
        ):
            ds["matrix"].sum().compute()  # a fresh process reopens the URL
        assert err.value.path == server.url("moving.loom")


def test_local_copy_is_byte_equal_and_renamed_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "COPY_BLOCK", 1000)  # a copy of several requests
    served = tmp_path / "served"
    served.mkdir()
    data = os.urandom(4567)
    (served / "x.loom").write_bytes(data)
    out = tmp_path / "out.loom"
    with RangeHTTPServer(served) as server:
        with local_copy(server.url("x.loom"), str(out)) as tmp:
            assert not out.exists()
            with open(tmp, "rb") as f:
                assert f.read() == data
        assert server.requests >= 5
        assert out.read_bytes() == data
        with pytest.raises(RuntimeError), local_copy(server.url("x.loom"), str(out)):
            raise RuntimeError("failed")
    local = tmp_path / "local.loom"
    with local_copy(str(served / "x.loom"), str(local)):
        assert not local.exists()
    assert local.read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["local.loom", "out.loom", "served"]


def test_local_copy_refuses_a_file_replaced_during_the_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "COPY_BLOCK", 1000)
    (tmp_path / "x.loom").write_bytes(os.urandom(4567))
    replaced = iter([False])
    read = RemoteSource.__call__

    def read_then_replace(self, offset, size):
        if next(replaced, True) is False:  # after the first block, a new file of that size
            (tmp_path / "new.loom").write_bytes(os.urandom(4567))
            os.replace(tmp_path / "new.loom", tmp_path / "x.loom")
        return read(self, offset, size)

    monkeypatch.setattr(RemoteSource, "__call__", read_then_replace)
    out = tmp_path / "out" / "copy.loom"
    out.parent.mkdir()
    with RangeHTTPServer(tmp_path) as server:
        url = server.url("x.loom")
        with (
            pytest.raises(LoomFileError, match="changed since it was opened"),
            local_copy(url, str(out)),
        ):
            pass
    assert os.listdir(out.parent) == []


def test_pending_region_write_is_read_as_the_local_reader_reads_it(tmp_path, monkeypatch):
    """A committed region write whose copy-in did not finish: remote readers overlay the
    patch as local ones do; to_kerchunk refuses the file until it is recovered."""
    path = make_example_loom(tmp_path / "pending.loom", 200, 300)
    values = np.arange(200 * 80, dtype="float32").reshape(200, 80)
    new = xr.Dataset({"matrix": (("row", "col"), values)})

    def fails(target, patch, origin, extent=None):
        raise OSError("power cut")

    monkeypatch.setattr(_transaction, "apply_patch", fails)
    with pytest.raises(LoomWriteError, match="commit is recorded"):
        loomx.to_loom(new, path, mode="r+", region={"col": slice(60, 140)})
    monkeypatch.undo()
    with loomx.open_loom(path) as ds:
        expected = ds["matrix"].values
    with h5py.File(path, "r") as f:
        assert not np.array_equal(f["matrix"][()], expected)  # the overlay matters
    with RangeHTTPServer(tmp_path) as server:
        url = server.url("pending.loom")
        np.testing.assert_array_equal(loomx.open_loom(url)["matrix"].values, expected)
        with pytest.raises(LoomFileError, match="unfinished write"):
            loomx.to_kerchunk(url)


# ---------------------------------------------------------------------- reference index


def test_kerchunk_references_read_by_zarr_and_xarray_equal_h5py(served, local):
    path, arrays = local
    url = served.url("example.loom")
    refs = loomx.to_kerchunk(path, url=url)
    opened = xr.open_dataset(
        "reference://",
        engine="zarr",
        backend_kwargs={
            "consolidated": False,
            "storage_options": {
                "fo": refs,
                "remote_protocol": "http",
                "remote_options": {"asynchronous": True},
                "asynchronous": True,
            },
        },
    )
    for name in LAYERS:
        np.testing.assert_array_equal(opened[name].values, arrays[name])
        assert opened[name].dims == ("row", "col")
    pytest.importorskip("kerchunk")
    opened = xr.open_dataset(refs, engine="kerchunk")
    np.testing.assert_array_equal(opened["spliced"].values, arrays["spliced"])


def test_references_of_unusual_storage(tmp_path):
    """Contiguous, fletcher32 + shuffle, unallocated chunks with a fill value: zarr reads
    what h5py reads; open_loom with the index reads the same."""
    zarr = pytest.importorskip("zarr")
    fsspec = pytest.importorskip("fsspec")
    path = make_example_loom(tmp_path / "odd.loom", 100, 150)
    rng = np.random.default_rng(3)
    with h5py.File(path, "r+") as f:
        f.create_dataset("layers/contig", data=rng.random((100, 150)))
        f.create_dataset(
            "layers/checked",
            data=rng.integers(0, 9, (100, 150)).astype("int32"),
            chunks=(32, 32),
            compression="gzip",
            shuffle=True,
            fletcher32=True,
        )
        sparse = f.create_dataset(
            "layers/holes", (100, 150), "float32", chunks=(32, 32), fillvalue=7
        )
        sparse[40:70, 10:20] = 1.5
        expected = {name: f[f"layers/{name}"][()] for name in ("contig", "checked", "holes")}
    refs = loomx.to_kerchunk(path)
    assert not any(k.startswith("holes/0.") for k in refs["refs"])  # unallocated: no key
    fs = fsspec.filesystem(
        "reference", fo=refs, asynchronous=True, remote_options={"asynchronous": True}
    )
    group = zarr.open_group(zarr.storage.FsspecStore(fs, read_only=True), mode="r", zarr_format=2)
    for name, values in expected.items():
        np.testing.assert_array_equal(group[name][:], values)
    with RangeHTTPServer(tmp_path) as server:
        refs = loomx.to_kerchunk(path, url=server.url("odd.loom"))
        ds = loomx.open_loom(server.url("odd.loom"), chunk_index=refs)
        for name, values in expected.items():
            np.testing.assert_array_equal(ds[name].values, values)


def test_a_reference_index_of_another_file_is_refused(tmp_path):
    make_example_loom(tmp_path / "a.loom", 100, 150)
    make_example_loom(tmp_path / "b.loom", 100, 151)
    with RangeHTTPServer(tmp_path) as server:
        refs = loomx.to_kerchunk(tmp_path / "b.loom")
        with pytest.raises(LoomFileError, match="reference index was made from a file"):
            loomx.open_loom(server.url("a.loom"), chunk_index=refs)
        shutil.copy(tmp_path / "a.loom", tmp_path / "c.loom")
        refs["refs"][".zattrs"] = "{}"  # no size recorded: the layers' shapes are compared
        with pytest.raises(loomx.LoomFormatError, match="reference index describes"):
            loomx.open_loom(server.url("c.loom"), chunk_index=refs)


def test_the_collector_is_off_while_hdf5_waits_on_a_fetch(served, local):
    """h5py holds its global lock while HDF5 reads through ``RangeFile``; a garbage
    collection on fsspec's thread that frees an h5py object then deadlocks both threads
    (h5py issue 2019).  The collector is off during each fetch and back on after."""
    import gc

    _, arrays = local
    source = RemoteSource(served.url("example.loom"))
    seen = []
    fetch = source.read_ranges

    def watched(ranges):
        seen.append(gc.isenabled())
        return fetch(ranges)

    source.read_ranges = watched
    assert gc.isenabled()
    with h5py.File(remote.RangeFile(source), "r") as f:
        np.testing.assert_array_equal(f["matrix"][()], arrays["matrix"])
    assert seen and not any(seen)
    assert gc.isenabled()

"""loomx._read.sidecar: the chunk-index sidecar beside a file.  Opening a URL with a
matching sidecar beside it reads no HDF5 chunk index (counted requests), a sidecar that
does not match (size, version, a chunk) is refused with a warning and the values are still
h5py's, and the sidecar holds kerchunk references zarr reads as h5py does."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import chunk_places

import loomx
from loomx._read import sidecar as _sidecar

pytest.importorskip("fsspec")


def h5py_chunks(path, h5path: str) -> dict[tuple[int, ...], tuple[int, int]]:
    """Offset and stored size of every allocated chunk, by chunk grid position (h5py)."""
    with h5py.File(path, "r") as f:
        chunks = f[h5path].chunks
    return {
        tuple(o // c for o, c in zip(offset, chunks, strict=True)): place
        for offset, place in chunk_places(path, h5path).items()
    }


def _served_layers(tmp_path, name: str = "side.loom", cols: int = 3000):
    from loomx.testing import make_example_loom

    path = Path(make_example_loom(tmp_path / name, 300, cols, density=0.3))
    with h5py.File(path, "r") as f:
        matrix = f["matrix"][()]
    return path, matrix


def test_a_sidecar_beside_a_url_is_used_and_the_index_not_fetched(tmp_path):
    """With FILE.kerchunk.json beside the file, opening the URL fetches it (one request)
    and the first column costs its chunks only: no HDF5 chunk index, no B-tree node."""
    pytest.importorskip("aiohttp")
    from loomx.testing.servers import RangeHTTPServer

    path, matrix = _served_layers(tmp_path)
    written = _sidecar.write_sidecar(path)
    assert written == f"{path}.kerchunk.json"
    held = [v for (r, c), v in h5py_chunks(path, "/matrix").items() if c == 1234 // 64]
    with RangeHTTPServer(tmp_path) as server:
        ds = loomx.open_loom(server.url("side.loom"))
        opened = server.counts.reset()[0]
        np.testing.assert_array_equal(ds["matrix"][:, 1234].values, matrix[:, 1234])
        requests, nbytes = server.counts.reset()
        assert requests <= len(held)  # the chunks, nothing else
        assert sum(s for _, s in held) <= nbytes <= 2 * sum(s for _, s in held)
        (tmp_path / "side.loom.kerchunk.json").unlink()
        ds = loomx.open_loom(server.url("side.loom"))
        without = server.counts.reset()[0]
        np.testing.assert_array_equal(ds["matrix"][:, 1234].values, matrix[:, 1234])
        requests_without, _ = server.counts.reset()
    assert opened <= without + 4  # the sidecar, and the B-tree path to one chunk
    assert requests < requests_without  # the B-tree nodes


def test_a_sidecar_that_does_not_match_is_refused(tmp_path):
    """Another file's size, another version (ETag) reached the same way, or a local copy
    whose chunks lie elsewhere: a warning, and the file's own chunk index is read."""
    pytest.importorskip("aiohttp")
    from loomx.testing.servers import RangeHTTPServer

    path, matrix = _served_layers(tmp_path)
    other, _ = _served_layers(tmp_path, "other.loom", cols=2999)
    sidecar = tmp_path / "side.loom.kerchunk.json"
    with RangeHTTPServer(tmp_path) as server:
        url = server.url("side.loom")
        _sidecar.write_sidecar(other, sidecar)  # another file's index
        with pytest.warns(loomx.LoomFormatWarning, match="does not match"):
            ds = loomx.open_loom(url)
        np.testing.assert_array_equal(ds["matrix"][:, 77].values, matrix[:, 77])
        _sidecar.write_sidecar(url, sidecar)  # made through the URL: its ETag
        with warnings_as_errors():
            assert loomx.open_loom(url)["matrix"][0, 5].values == matrix[0, 5]
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new ETag
        with pytest.warns(loomx.LoomFormatWarning, match="version"):
            ds = loomx.open_loom(url)
        np.testing.assert_array_equal(ds["matrix"][:, 2999].values, matrix[:, 2999])
        _sidecar.write_sidecar(path)  # made from the local file: checked by a chunk
        with warnings_as_errors():
            np.testing.assert_array_equal(loomx.open_loom(url)["matrix"][:, 9].values, matrix[:, 9])
        refs = json.loads(sidecar.read_text())
        cells = [k for k in refs["refs"] if k.startswith("matrix/") and k[7].isdigit()]
        last = max(cells, key=lambda k: tuple(map(int, k[7:].split("."))))
        refs["refs"][last][1] += 1  # a chunk that moved
        sidecar.write_text(json.dumps(refs))
        with pytest.warns(loomx.LoomFormatWarning, match="not where the file has it"):
            ds = loomx.open_loom(url)
        np.testing.assert_array_equal(ds["matrix"].values, matrix)
        sidecar.write_text("{not json")
        with pytest.warns(loomx.LoomFormatWarning, match="cannot read its chunk-index sidecar"):
            ds = loomx.open_loom(url)
        np.testing.assert_array_equal(ds["matrix"][:, 3].values, matrix[:, 3])


@contextlib.contextmanager
def warnings_as_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_the_sidecar_of_a_url_needs_an_output():
    with pytest.raises(ValueError, match="give the output path"):
        _sidecar.write_sidecar("https://example.org/x.loom")


def test_the_compact_index_is_read_from_the_head_of_the_sidecar(tmp_path, monkeypatch):
    """The compact part leads the sidecar: read with ranged requests of its head, not the
    whole file; the references after it are kerchunk's (zarr reads h5py's values)."""
    pytest.importorskip("aiohttp")
    zarr = pytest.importorskip("zarr")
    fsspec = pytest.importorskip("fsspec")
    from loomx.testing.servers import RangeHTTPServer

    path, matrix = _served_layers(tmp_path)
    written = Path(_sidecar.write_sidecar(path))
    refs = json.loads(written.read_text())
    fs = fsspec.filesystem(
        "reference", fo=refs, asynchronous=True, remote_options={"asynchronous": True}
    )
    group = zarr.open_group(zarr.storage.FsspecStore(fs, read_only=True), mode="r", zarr_format=2)
    np.testing.assert_array_equal(group["matrix"][:], matrix)
    monkeypatch.setattr(_sidecar, "_FIRST_REQUEST", 256)
    with RangeHTTPServer(tmp_path) as server:
        url = server.url("side.loom")
        _sidecar.write_sidecar(url, written)  # made through the URL: no chunk checked
        compact, whole = int(written.read_bytes()[34:46]), written.stat().st_size
        server.counts.reset()
        ds = loomx.open_loom(url)
        with_sidecar = server.counts.reset()[1]
        written.rename(tmp_path / "elsewhere.json")
        loomx.open_loom(url)
        without = server.counts.reset()[1]
        np.testing.assert_array_equal(ds["matrix"][:, 1234].values, matrix[:, 1234])
    assert with_sidecar - without <= compact + 256 < whole / 2

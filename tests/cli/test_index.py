"""``loomx index FILE``: the sidecar written beside the file holds h5py's chunk offsets
and sizes, a URL without ``--output`` is refused with one line, and a URL opened with the
sidecar beside it reads what h5py reads."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import chunk_places, run_cli

import loomx
from loomx.testing import make_example_loom


def test_index_writes_the_sidecar_beside_the_file(tmp_path):
    path = Path(make_example_loom(tmp_path / "pbmc.loom", 200, 500))
    done = run_cli("index", path)
    assert done.returncode == 0, done.stderr
    sidecar = Path(f"{path}.kerchunk.json")
    assert done.stdout.startswith(f"{sidecar}: the chunk index of 3 layers")
    refs = json.loads(sidecar.read_text())["refs"]
    for (r, c), (offset, size) in chunk_places(path, "/matrix").items():
        assert refs[f"matrix/{r // 64}.{c // 64}"][1:] == [offset, size]
    stamp = json.loads(refs[".zattrs"])
    assert stamp["loom_file_size"] == path.stat().st_size
    assert stamp["loom_file_protocol"] == "file"
    assert stamp["loom_file_version"] == str(path.stat().st_mtime_ns)
    other = tmp_path / "elsewhere.json"
    assert run_cli("index", path, "--output", other).returncode == 0
    assert json.loads(other.read_text())["refs"] == refs


def test_index_of_a_url_needs_an_output_and_is_used_beside_it(tmp_path):
    pytest.importorskip("aiohttp")
    from loomx.testing.servers import RangeHTTPServer

    path = Path(make_example_loom(tmp_path / "pbmc.loom", 200, 500))
    with h5py.File(path, "r") as f:
        matrix = f["matrix"][()]
    with RangeHTTPServer(tmp_path) as server:
        url = server.url("pbmc.loom")
        refused = run_cli("index", url)
        assert refused.returncode == 1
        assert refused.stderr.startswith("loomx: ") and "give the output path" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        done = run_cli("index", url, "-o", f"{path}.kerchunk.json")
        assert done.returncode == 0, done.stderr
        ds = loomx.open_loom(url)
        assert ds.encoding["source"] == url
        np.testing.assert_array_equal(ds["matrix"].values, matrix)

"""Write benchmarks: a computed layer (loomx vs loompy) and write-back of one attribute.

Each case runs in a fresh subprocess (so peak RSS is that of the write alone) on a copy of
the benchmark file, and its result is checked against the source.  By default the files are
small ones made in the session's temporary folder, so CI runs this in seconds; set
``LOOMX_WRITE_BENCH_FILES=/a.loom,/b.loom`` for the layer cases on big files (e.g. the
20000 x 30000 and 10000 x 15000 ones ``benchmarks/make_data.py`` makes) and
``LOOMX_WRITE_BENCH_BIG=/c.loom`` for the attribute write-back on a ~1 GB file.
``benchmarks/write_report.py`` runs the same cases and prints a markdown table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from .make_data import make_loompy_file

FILES_ENV = "LOOMX_WRITE_BENCH_FILES"
BIG_ENV = "LOOMX_WRITE_BENCH_BIG"
SMALL_SHAPES = ((1000, 1500), (500, 750))

CASE = r"""
import json, os, resource, sys, time
import numpy as np

kind, path = sys.argv[1], sys.argv[2]
with open(path, "rb") as f:  # warm the page cache: measure writing, not the disk
    while f.read(1 << 24):
        pass
if kind == "loompy":
    import h5py, loompy

    with h5py.File(path, "r") as f:
        array = np.log1p(f["matrix"][:])
    start = time.perf_counter()
    with loompy.connect(path) as ds:
        ds.layers["norm"] = array
elif kind == "loomx":
    import loomx

    ds = loomx.open_loom(path)
    start = time.perf_counter()
    loomx.to_loom(ds.assign(norm=np.log1p(ds["matrix"])), path, mode="a")
elif kind == "loomx-cluster":  # the lazy write with blocks computed by worker processes
    import loomx
    from distributed import Client, LocalCluster

    client = Client(LocalCluster(threads_per_worker=1, processes=True, dashboard_address=None))
    client.run(__import__, "loomx")  # a running, warm cluster, as a user would have it
    ds = loomx.open_loom(path)
    start = time.perf_counter()
    loomx.to_loom(ds.assign(norm=np.log1p(ds["matrix"])), path, mode="a")
elif kind == "loomx-memory":
    import h5py, loomx

    with h5py.File(path, "r") as f:
        array = np.log1p(f["matrix"][:])
    ds = loomx.open_loom(path)
    start = time.perf_counter()
    loomx.to_loom(ds.assign(norm=(ds["matrix"].dims, array)), path, mode="a")
elif kind == "attr":
    import loomx

    ds = loomx.open_loom(path)
    values = np.arange(ds.sizes["col"], dtype=np.float64) / 3
    before = os.path.getsize(path)
    start = time.perf_counter()
    loomx.to_loom(ds.assign_coords(Score=("col", values)), path, mode="a")
    wall = time.perf_counter() - start
    growth = os.path.getsize(path) - before
    print(json.dumps({"wall": wall, "growth": growth, "nbytes": values.nbytes}))
    sys.exit()
wall = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"wall": wall, "rss": rss}))
"""


def run_case(kind: str, source: str | os.PathLike[str], folder: Path) -> dict[str, float]:
    """Copy ``source`` into ``folder``, run one case on the copy, check it, remove the copy.

    Parameters
    ----------
    kind
        ``"loompy"``, ``"loomx"`` (lazy ``log1p`` of the file's matrix), ``"loomx-cluster"``
        (the same on a ``LocalCluster`` of one worker process per core), ``"loomx-memory"``
        (the same array computed in memory first, as loompy gets it) or ``"attr"`` (write-back
        of one float64 column attribute).
    source
        Loom file to write into (left unchanged).
    folder
        Scratch folder for the copy.

    Returns
    -------
    dict
        ``wall`` seconds of the write; ``rss`` bytes (peak of the process) for layers,
        ``growth`` and ``nbytes`` (file growth, attribute size) for ``"attr"``.
    """
    target = folder / f"{kind}-{Path(source).name}"
    shutil.copyfile(source, target)
    try:
        out = subprocess.run(
            [sys.executable, "-c", CASE, kind, str(target)],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        check(kind, source, target)
    finally:
        target.unlink(missing_ok=True)
    return result


def check(kind: str, source: str | os.PathLike[str], target: Path) -> None:
    """The written data equals what was meant, in row bands (bounded memory)."""
    with h5py.File(source, "r") as src, h5py.File(target, "r") as out:
        if kind == "attr":
            n = out["matrix"].shape[1]
            np.testing.assert_array_equal(out["col_attrs/Score"][:], np.arange(n) / 3)
            return
        layer, matrix = out["layers/norm"], src["matrix"]
        assert layer.compression == "gzip" and layer.compression_opts == 2
        assert layer.chunks == matrix.chunks
        for start in range(0, matrix.shape[0], 2048):
            band = slice(start, start + 2048)
            np.testing.assert_array_equal(layer[band], np.log1p(matrix[band]))


@pytest.fixture(scope="session")
def layer_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Files for the layer cases: ``$LOOMX_WRITE_BENCH_FILES`` or two small ones."""
    given = os.environ.get(FILES_ENV)
    if given:
        return given.split(",")
    folder = tmp_path_factory.mktemp("write-bench")
    return [
        make_loompy_file(folder / f"w{r}x{c}.loom", r, c, density=0.07, seed=0)
        for r, c in SMALL_SHAPES
    ]


@pytest.fixture(scope="session")
def big_file(layer_files: list[str]) -> str:
    """File for the attribute write-back: ``$LOOMX_WRITE_BENCH_BIG`` or the first layer file."""
    return os.environ.get(BIG_ENV) or layer_files[0]


@pytest.mark.parametrize("kind", ["loomx", "loomx-cluster", "loomx-memory", "loompy"])
@pytest.mark.parametrize("index", [0, 1])
def test_write_layer(benchmark, tmp_path, layer_files, kind, index):
    result = benchmark.pedantic(
        run_case, args=(kind, layer_files[index], tmp_path), rounds=1, iterations=1
    )
    benchmark.extra_info.update(result)
    assert result["wall"] > 0 and result["rss"] > 0


def test_write_back_one_attribute(benchmark, tmp_path, big_file):
    result = benchmark.pedantic(run_case, args=("attr", big_file, tmp_path), rounds=1)
    benchmark.extra_info.update(result)
    assert result["growth"] < 4 * result["nbytes"] + (1 << 20)

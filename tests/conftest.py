from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, settings

from loomx._hdf5.chunks import read_through_handle
from loomx._hdf5.files import open_h5
from loomx.testing import make_example_loom

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: CI failures reproduce
    database=None,
)
settings.register_profile(
    "dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

DATA = Path(__file__).parent / "data"
SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"
WILD_FILES = sorted(
    {p.name: p for p in [*SHARED_DATA.glob("*.loom"), *DATA.glob("*.loom")]}.values()
)
"""Files from public repositories: tests/data, plus any newer ones in ../shared/data."""


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


LOOMX_SCRIPT = Path(sys.executable).with_name("loomx")
"""The ``loomx`` console script that ``pip install`` put next to this Python."""


def run_cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed ``loomx`` console script with ``args``; capture its output."""
    assert LOOMX_SCRIPT.is_file(), f"no console script at {LOOMX_SCRIPT}: pip install loomx"
    cmd = [str(LOOMX_SCRIPT), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def python_process(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Start ``python -c code args`` with text pipes for stdin, stdout and stderr."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def temp_links(path: str | Path) -> list[str]:
    """Objects of a file named as loomx's unfinished writes name them."""
    from loomx._hdf5.filesystem import TEMPORARY_TAG

    found: list[str] = []
    with h5py.File(path, "r") as f:
        f.visit(lambda name: found.append(name) if TEMPORARY_TAG in name else None)
    return found


def chunk_places(path: str | Path, h5path: str) -> dict[tuple[int, ...], tuple[int, int]]:
    """Byte offset and stored size of every allocated chunk of a dataset, by chunk offset."""
    infos: list = []
    with h5py.File(path, "r") as f:
        f[h5path].id.chunk_iter(infos.append)
    return {i.chunk_offset: (i.byte_offset, i.size) for i in infos}


@pytest.fixture
def wild_file(request, tmp_path):
    """Copy of one file from tests/data (never touch the originals)."""
    target = tmp_path / request.param.name
    shutil.copy(request.param, target)
    return target


@pytest.fixture(scope="session")
def example_loom(tmp_path_factory) -> str:
    return make_example_loom(tmp_path_factory.mktemp("ex") / "example.loom", 300, 700)


@pytest.fixture(scope="session")
def loompy_file(tmp_path_factory) -> dict:
    """A file written by loompy itself, with every feature, and the arrays it holds."""
    import loompy

    rng = np.random.default_rng(1)
    n, m = 150, 260
    matrix = rng.poisson(0.5, size=(n, m)).astype(np.float32)
    layers = {
        "": matrix,
        "counts_u16": matrix.astype(np.uint16),
        "counts_i64": matrix.astype(np.int64),
        "norm": np.log1p(matrix).astype(np.float64),
    }
    genes = np.array([f"G{i}-{'éβ日'[i % 3]}" for i in range(n)])
    row_attrs = {"Gene": genes, "Score": rng.normal(size=n), "Loadings": rng.normal(size=(n, 4))}
    col_attrs = {
        "CellID": np.array([f"cell{j}ü" for j in range(m)]),
        "ClusterID": rng.integers(0, 3, m),
        "Valid": rng.random(m) < 0.5,
        "Embedding": rng.normal(size=(m, 2)),
    }
    knn = sp.coo_matrix(
        (np.array([1.0, 2.0, 3.0, 0.5]), (np.array([0, 0, 5, 7]), np.array([1, 1, 6, 2]))),
        shape=(m, m),
    )
    rgraph = sp.coo_matrix((np.ones(3), (np.array([0, 1, 2]), np.array([1, 2, 0]))), shape=(n, n))
    path = tmp_path_factory.mktemp("lp") / "loompy_written.loom"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loompy.create(str(path), layers, row_attrs, col_attrs, file_attrs={"Title": "Tëst"})
        with loompy.connect(str(path)) as ds:
            ds.col_graphs["KNN"] = knn
            ds.row_graphs["coexpr"] = rgraph
            ds.attrs["Weights"] = np.arange(4.0)
    return {
        "path": str(path),
        "layers": layers,
        "row_attrs": row_attrs,
        "col_attrs": col_attrs,
        "knn": knn,
        "rgraph": rgraph,
    }


def anndata_read_loom(*args, **kwargs):
    """``anndata.io.read_loom`` (anndata >= 0.11), ``anndata.read_loom`` before."""
    import anndata

    reader = getattr(getattr(anndata, "io", None), "read_loom", None) or anndata.read_loom
    return reader(*args, **kwargs)


def read_region(
    path: str | os.PathLike[str],
    h5path: str,
    key: Any = (),
    locking: bool | None = None,
) -> np.ndarray:
    """``h5py.File(path)[h5path][key]`` through loomx's chunk reader (the path every lazy
    read of a local layer takes: cached chunk index, ``pread``, batch kernel)."""
    key = key if isinstance(key, tuple) else (key,)
    with open_h5(os.fspath(path), "r", locking) as f:
        shape = f[h5path].shape
    key = key + (slice(None),) * (len(shape) - len(key))
    return read_through_handle(
        lambda: open_h5(os.fspath(path), "r", locking), h5path, key, os.fspath(path)
    )

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

import dask.array as da
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import xarray as xr
from hypothesis import HealthCheck, settings

import loomx
from loomx._hdf5.chunks import ChunkIndex, read_through_handle
from loomx._hdf5.files import open_h5
from loomx._hdf5.filesystem import TEMPORARY_TAG
from loomx.testing import make_example_loom, write_loom_h5py

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
def counts_loom(tmp_path_factory) -> str:
    """Negative-binomial counts with clusters and ``MT-`` genes, 400 genes x 600 cells,
    in (64, 64) chunks (read-only: copy it before writing)."""
    from loomx.testing import make_counts_loom

    return make_counts_loom(tmp_path_factory.mktemp("counts") / "counts.loom", 400, 600)


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


def temp_files(folder: Path) -> list[str]:
    """Files in ``folder`` named as loomx's unfinished writes name them."""
    return [p for p in os.listdir(folder) if TEMPORARY_TAG in p]


def assert_loompy_valid(path: str | Path) -> None:
    """loompy's ``LoomValidator`` accepts the file."""
    import loompy

    validator = loompy.LoomValidator()
    assert validator.validate(str(path)), validator.errors


def data_offsets(path: str | Path) -> dict[str, int]:
    """File offset of every dataset's data (first chunk when chunked), by HDF5 path."""
    out: dict[str, int] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and obj.size:
                info = obj.id.get_chunk_info(0) if obj.chunks else None
                out[name] = info.byte_offset if info else obj.id.get_offset()

        f.visititems(visit)
    return out


# --------------------------------------------------------------------------- a Dataset to write

GENES = np.array([f"g{i}-{'éβ日本'[i % 4]}" for i in range(70)], dtype=object)
CELLS = np.array([f"c{j}{'xé日本'[j % 4]}" for j in range(130)])
KNN_A = np.array([0, 1, 1, 5, 129, 3], dtype=np.int32)
KNN_B = np.array([1, 2, 2, 6, 0, 3], dtype=np.int32)
KNN_W = np.array([1.0, 2.0, 2.0, 3.0, 0.5, 1.5])


def make_ds(seed: int = 0, chunks: tuple[int, int] = (30, 50)) -> xr.Dataset:
    """A 70 x 130 Dataset in loomx's model, built by hand: two layers, attributes of every
    kind (strings with non-ASCII characters, bools, 2-D, the same name on both axes), a
    column graph with duplicate edges and global attributes."""
    n, m = len(GENES), len(CELLS)
    rng = np.random.default_rng(seed)
    matrix = rng.random((n, m)).astype(np.float32)
    return xr.Dataset(
        {
            "matrix": (("row", "col"), da.from_array(matrix, chunks=chunks)),
            "spliced": (("row", "col"), rng.integers(0, 5, (n, m)).astype(np.int32)),
            "row_attrs:Score": ("row", rng.normal(size=n)),
        },
        coords={
            "Gene": ("row", GENES),
            "CellID": ("col", CELLS),
            "Valid": ("col", rng.random(m) < 0.5),
            "PCA": (("col", "PCA_dim_1"), rng.normal(size=(m, 3))),
            "col_attrs:Score": ("col", rng.normal(size=m).astype(np.float32)),
            "col_graphs:KNN": ("col", np.arange(m)),
            "col_graphs:KNN:a": ("col_graphs:KNN:edge", KNN_A),
            "col_graphs:KNN:b": ("col_graphs:KNN:edge", KNN_B),
            "col_graphs:KNN:w": ("col_graphs:KNN:edge", KNN_W),
        },
        attrs={"Title": "β-test é", "Year": 2024, "Weights": np.arange(3.0), "Flag": True},
    )


# --------------------------------------------------------------------------- cells to append

ACCESSIONS = np.array([f"ENSG{i:05d}-{'éβ日本'[i % 4]}" for i in range(70)], dtype=object)


def cells_content(seed: int, m: int, offset: int = 0) -> dict:
    """Layers, row and column attributes and a column graph for ``m`` cells of the 70 genes
    of ``ACCESSIONS``."""
    n = len(ACCESSIONS)
    rng = np.random.default_rng(seed)
    matrix = rng.poisson(0.7, (n, m)).astype(np.float32)
    a = rng.integers(0, m, 3 * m)
    b = rng.integers(0, m, 3 * m)
    return {
        "layers": {"": matrix, "spliced": (matrix * 2).astype(np.uint16)},
        "row_attrs": {"Accession": ACCESSIONS, "Gene": np.array([f"G{i}β" for i in range(n)])},
        "col_attrs": {
            "CellID": np.array([f"c{j + offset}-{'xé日本'[j % 4]}" for j in range(m)], object),
            "ClusterID": rng.integers(0, 9, m),
            "Valid": rng.random(m) < 0.5,
            "PCA": rng.normal(size=(m, 3)),
        },
        "col_graphs": {"KNN": (a, b, rng.random(3 * m))},
    }


def write_cells(path: Path, c: dict, **kwargs) -> Path:
    """Write a :func:`cells_content` with h5py as a Loom file."""
    write_loom_h5py(
        path,
        c["layers"],
        c["row_attrs"],
        c["col_attrs"],
        col_graphs=c.get("col_graphs"),
        global_attrs={"Title": "βeta"},
        **kwargs,
    )
    return path


def adjacency(a, b, w, n: int) -> np.ndarray:
    """Dense ``n`` x ``n`` adjacency of an edge list (multigraph edges summed)."""
    out = np.zeros((n, n))
    np.add.at(out, (np.asarray(a), np.asarray(b)), np.asarray(w))
    return out


def dense_graph(path: Path, name: str) -> np.ndarray:
    """A column graph of a Loom file as loomx reads it, dense."""
    return np.asarray(loomx.open_loom(path).loom.col_graphs[name].data.todense())


# --------------------------------------------------------------------------- files to change

REGION_SHAPE = (150, 300)


def region_file(path: Path, chunks: tuple[int, int] | None = (64, 64)) -> Path:
    """A 150 x 300 Loom file written by h5py: two layers, row and column attributes and a
    column graph (a chain)."""
    n, m = REGION_SHAPE
    rng = np.random.default_rng(0)
    write_loom_h5py(
        path,
        {"": rng.poisson(2.0, (n, m)).astype(np.float32), "spliced": rng.poisson(1.0, (n, m))},
        {"Gene": np.array([f"g{i}" for i in range(n)], dtype=object), "Len": np.arange(n)},
        {"CellID": np.array([f"c{j}" for j in range(m)], dtype=object), "Score": rng.random(m)},
        col_graphs={"KNN": (np.arange(m - 1), np.arange(1, m), np.ones(m - 1))},
        chunks=chunks,
    )
    return path


def region_ds(rows: slice, cols: slice, seed: int = 5) -> xr.Dataset:
    """New values of both layers of :func:`region_file` over ``rows`` x ``cols``."""
    rng = np.random.default_rng(seed)
    n, m = rows.stop - rows.start, cols.stop - cols.start
    return xr.Dataset(
        {
            "matrix": (("row", "col"), rng.random((n, m)).astype(np.float32)),
            "spliced": (("row", "col"), rng.integers(0, 9, (n, m))),
        }
    )


SMALL_SHAPE = (30, 40)
MORE_CELLS = 25


def small_file(path: Path, version: str = "3.0.0") -> Path:
    """A 30 x 40 Loom file written by h5py: two layers, Gene, CellID and a Title."""
    n, m = SMALL_SHAPE
    rng = np.random.default_rng(0)
    write_loom_h5py(
        path,
        {"": rng.random((n, m)).astype(np.float32), "spliced": rng.random((n, m))},
        {"Gene": np.array([f"g{i}" for i in range(n)], dtype=object)},
        {"CellID": np.array([f"c{j}" for j in range(m)], dtype=object)},
        global_attrs={"Title": "before"},
        version=version,
    )
    return path


def more_cells(offset: int = SMALL_SHAPE[1]) -> xr.Dataset:
    """``MORE_CELLS`` new cells for :func:`small_file`."""
    n, k = SMALL_SHAPE[0], MORE_CELLS
    rng = np.random.default_rng(1)
    return xr.Dataset(
        {
            "matrix": (("row", "col"), rng.random((n, k)).astype(np.float32)),
            "spliced": (("row", "col"), rng.random((n, k))),
        },
        coords={"CellID": ("col", np.array([f"c{offset + j}" for j in range(k)], dtype=object))},
    )


def assert_appended(path: Path) -> None:
    """The file reads as :func:`small_file` with :func:`more_cells` appended."""
    (n, m), k = SMALL_SHAPE, MORE_CELLS
    ds = loomx.open_loom(path)
    new = more_cells()
    assert ds.sizes == {"row": n, "col": m + k}
    np.testing.assert_array_equal(ds["matrix"].values[:, m:], new["matrix"].values)
    np.testing.assert_array_equal(ds["spliced"].values[:, m:], new["spliced"].values)
    np.testing.assert_array_equal(ds["CellID"].values[m:], new["CellID"].values)
    ds.close()


def poisson_loom(path: Path, n: int, m: int) -> Path:
    """A small Loom file written with h5py: Poisson counts in (16, 16) chunks, ``Gene`` and
    ``CellID`` attributes."""
    rng = np.random.default_rng(0)
    write_loom_h5py(
        path,
        {"": rng.poisson(1.0, (n, m)).astype(np.float32)},
        {"Gene": np.array([f"g{i}" for i in range(n)])},
        {"CellID": np.array([f"c{j}" for j in range(m)])},
        chunks=(16, 16),
    )
    return path


def awkward_values(dtype: str, shape: tuple[int, int] = (150, 260)) -> np.ndarray:
    """Values with all-zero chunks, a chunk of -0.0, NaN and partial edge chunks."""
    rng = np.random.default_rng(3)
    values = (rng.poisson(0.3, shape) * (rng.random(shape) < 0.2)).astype(dtype)
    values[:64, 64:128] = 0
    if values.dtype.kind == "f":
        values[64:128, :64] = -0.0
        values[1, 1] = np.nan
        values[2, 2] = np.inf
        values = np.log1p(values, where=values > 0, out=values.copy())
    return values


def indexed_dataset(path: Path, data: np.ndarray, **kwargs: Any) -> tuple[ChunkIndex, np.ndarray]:
    """``data`` written by h5py as dataset ``x`` of ``path`` (``kwargs``: its storage);
    its chunk index and the values h5py reads back."""
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data, **kwargs)
    with h5py.File(path, "r") as f:
        index = ChunkIndex.from_dataset(f["x"])
        assert index is not None
        return index, f["x"][...]


CRASH_SEED = 81627
"""A mutation of the LZF file that segfaults HDF5 2.0 while it lists a graph group's links."""


@pytest.fixture(scope="session")
def crashing(tmp_path_factory) -> Path:
    """A mutation of the LZF example that segfaults HDF5 when read (seed CRASH_SEED)."""
    import random

    from loomx.testing.fuzz import mutate
    from loomx.testing.hostile import small_loom

    folder = tmp_path_factory.mktemp("probe")
    source = small_loom(str(folder / "lzf.loom"), compression="lzf", compression_opts=None)
    path = folder / "crash.loom"
    path.write_bytes(mutate(Path(source).read_bytes(), random.Random(CRASH_SEED)))
    return path


@pytest.fixture(params=["compiled", "python"])
def decode_path(request, monkeypatch):
    """Reads decode through the compiled kernel, or through its Python twin (a process's
    first small reads)."""
    from loomx._hdf5 import pydecode

    twin = request.param == "python"
    monkeypatch.setattr(pydecode, "takes_python_path", lambda n: twin)
    return request.param


def record_writer_threads(monkeypatch, fail_at: int | None = None) -> list[str]:
    """The names of the threads that write packed chunks from now on (the list fills as
    they write); the write number ``fail_at`` raises ``OSError("disk full (injected)")``."""
    import threading

    from loomx._hdf5 import codecs

    writers: list[str] = []
    real = codecs.write_packed

    def record(dset, packed, fresh=True):
        writers.append(threading.current_thread().name)
        if len(writers) == fail_at:
            raise OSError("disk full (injected)")
        return real(dset, packed, fresh)

    monkeypatch.setattr(codecs, "write_packed", record)
    return writers

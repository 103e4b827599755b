"""Fixtures of the benchmarks: the files to read and the reference results.

By default the benchmarks read small files generated into the session's temporary folder (a
loompy-written 2000 x 3000 matrix, and a 2000 x 3000 file with 100 layers and 1000
attributes), so ``pytest`` runs them as plain tests in CI.  Set
``LOOMX_BENCH_FILE=/path/to/file.loom`` (e.g. written by ``python benchmarks/make_data.py``)
and ``LOOMX_BENCH_WIDE_FILE=/path/to/wide.loom`` (``make_data.py --wide``) to read big files
instead.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from ._harness import FileFacts, Reference, file_facts, reference, warm_page_cache
from .make_data import make_loompy_file, make_wide_file

BENCH_FILE_ENV = "LOOMX_BENCH_FILE"
"""Environment variable naming a Loom file to benchmark instead of the small default."""

WIDE_FILE_ENV = "LOOMX_BENCH_WIDE_FILE"
"""Environment variable naming a file with many layers and attributes to time opening."""

SMALL_SHAPE = (2000, 3000)
"""Shape of the default benchmark files."""

WIDE_LAYERS, WIDE_ATTRS = 100, 1000
"""Layers and attributes of the default wide file."""


def _from_env(name: str) -> str | None:
    path = os.environ.get(name)
    if path and not os.path.isfile(path):
        pytest.fail(f"{name}={path!r}: no such file")
    return path or None


@pytest.fixture(scope="session")
def bench_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of the Loom file to read: ``$LOOMX_BENCH_FILE`` or a small loompy-written one."""
    path = _from_env(BENCH_FILE_ENV)
    if path:
        return path
    target = tmp_path_factory.mktemp("bench") / "bench.loom"
    return make_loompy_file(target, *SMALL_SHAPE, density=0.07, seed=0)


@pytest.fixture(scope="session")
def wide_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A file with 100 layers and 1000 attributes: ``$LOOMX_BENCH_WIDE_FILE`` or a small one."""
    path = _from_env(WIDE_FILE_ENV)
    if path:
        return path
    target = tmp_path_factory.mktemp("bench") / "wide.loom"
    return make_wide_file(target, *SMALL_SHAPE, n_layers=WIDE_LAYERS, n_attrs=WIDE_ATTRS)


@pytest.fixture(scope="session")
def bench_facts(bench_file: str) -> FileFacts:
    """Shape and storage facts of the benchmark file's ``/matrix``."""
    return file_facts(bench_file)


@pytest.fixture(scope="session")
def bench_reference(bench_file: str) -> Reference:
    """Reference digests of every operation (plain h5py + numpy); also warms the page cache."""
    warm_page_cache(bench_file)
    return reference(bench_file)


@pytest.fixture(scope="session")
def expected_row_sums(bench_reference: Reference) -> np.ndarray:
    """Reference per-row sums (float64)."""
    return bench_reference["row_sums"]["row_sum"]

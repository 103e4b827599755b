"""Fixtures of the read benchmarks: the file to read and the reference result.

By default the benchmarks read a small loompy-written file (2000 x 3000) generated into the
session's temporary folder, so ``pytest`` runs them as plain tests in CI.  Set
``LOOMX_BENCH_FILE=/path/to/file.loom`` to read a big file instead, e.g. one written by
``python benchmarks/make_data.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from ._harness import FileFacts, file_facts, reference_row_sums, warm_page_cache
from .make_data import make_loompy_file

BENCH_FILE_ENV = "LOOMX_BENCH_FILE"
"""Environment variable naming a Loom file to benchmark instead of the small default."""

SMALL_SHAPE = (2000, 3000)
"""Shape of the default benchmark file."""


@pytest.fixture(scope="session")
def bench_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of the Loom file to read: ``$LOOMX_BENCH_FILE`` or a small loompy-written one."""
    path = os.environ.get(BENCH_FILE_ENV)
    if path:
        if not os.path.isfile(path):
            pytest.fail(f"{BENCH_FILE_ENV}={path!r}: no such file")
        return path
    target = tmp_path_factory.mktemp("bench") / "bench.loom"
    return make_loompy_file(target, *SMALL_SHAPE, density=0.07, seed=0)


@pytest.fixture(scope="session")
def bench_facts(bench_file: str) -> FileFacts:
    """Shape and storage facts of the benchmark file's ``/matrix``."""
    return file_facts(bench_file)


@pytest.fixture(scope="session")
def expected_row_sums(bench_file: str) -> np.ndarray:
    """Reference per-row sums (float64, plain h5py); reading them also warms the page cache."""
    warm_page_cache(bench_file)
    return reference_row_sums(bench_file)

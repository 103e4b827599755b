"""Benchmarks of the write operations (a computed layer, one attribute written back), as tests.

The methods are those ``run_report.py --tables write`` measures in fresh processes
(``write_methods.py``): each round writes into a fresh copy of the benchmark file (made
untimed by the method's ``prepare``), and the written file is checked against the h5py/numpy
reference (``log1p`` of the matrix, stored like loompy's layers; the attribute's values).
By default the file is the small generated one; ``LOOMX_BENCH_FILE`` picks another.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.harness.operations import methods
from benchmarks.harness.reference import Reference, check
from benchmarks.harness.timer import measure_in_subprocess

from .conftest import BenchMethod

WRITE_METHODS = [name for name, m in methods().items() if m.op in ("write_layer", "write_attr")]
"""Methods benchmarked by :func:`test_write`."""


@pytest.mark.parametrize("name", WRITE_METHODS)
def test_write(
    bench_method: BenchMethod,
    benchmark: Any,
    name: str,
    bench_file: str,
    bench_reference: Reference,
) -> None:
    """One write by one method; the written file must match the reference.

    For the attribute write-back, the file's growth is recorded (not checked) in
    ``extra_info``, next to the attribute's size.
    """
    got = bench_method(name, bench_file, bench_reference)
    for entry in ("growth_bytes", "attr_bytes"):
        if entry in got:
            benchmark.extra_info[entry] = int(got[entry])


def test_write_in_fresh_process(bench_file: str, bench_reference: Reference) -> None:
    """The fresh-process timer prepares a fresh copy before each run and checks the result."""
    fresh = measure_in_subprocess("loomx_write_layer", bench_file)
    check(fresh.digest, bench_reference["write_layer"], "loomx_write_layer")

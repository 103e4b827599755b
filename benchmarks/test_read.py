"""Read benchmarks: ``open_loom`` and one full pass (per-row sums) by every method.

Each benchmark also checks its result against the h5py reference, so the suite is a real test
as well.  Run ``pytest benchmarks`` (small generated file) or
``LOOMX_BENCH_FILE=/work/bench-data/pbmc_20000x30000.loom pytest benchmarks``; see
``benchmarks/README.md`` and ``run_report.py`` for the side-by-side table.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import pytest

import loomx

from ._harness import FileFacts, check_row_sums, measure_in_subprocess, methods

ROUNDS = 3
"""Timed rounds per benchmark (after one untimed warm-up round)."""

FULL_PASS = [name for name, m in methods().items() if m.full_pass]


def _record_throughput(benchmark: Any, facts: FileFacts) -> None:
    """Store MB/s of raw (decompressed) matrix bytes in the benchmark's ``extra_info``."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["raw_mb"] = round(facts.raw_mb, 1)
        benchmark.extra_info["mb_per_s_raw"] = round(facts.raw_mb / stats.stats.median, 1)


@pytest.mark.benchmark(group="open")
def test_open_loom(benchmark: Any, bench_file: str, bench_facts: FileFacts) -> None:
    """``open_loom`` reads metadata only: fast, and memory far below the matrix size."""
    ds = benchmark.pedantic(
        loomx.open_loom, args=(bench_file,), rounds=ROUNDS, iterations=1, warmup_rounds=1
    )
    assert ds["matrix"].shape == bench_facts.shape
    assert isinstance(ds["matrix"].data, da.Array)
    ds.close()

    fresh = measure_in_subprocess("open_loom", bench_file)
    benchmark.extra_info["fresh_process_first_open_s"] = round(fresh.first_s, 4)
    benchmark.extra_info["peak_rss_increase_mb"] = round(fresh.peak_increase_mb, 1)
    assert fresh.shape == bench_facts.shape
    assert fresh.peak_increase_mb < 50 + 0.05 * bench_facts.raw_mb


@pytest.mark.benchmark(group="full pass: per-row sums")
@pytest.mark.parametrize("name", FULL_PASS)
def test_row_sums(
    benchmark: Any,
    name: str,
    bench_file: str,
    bench_facts: FileFacts,
    expected_row_sums: np.ndarray,
) -> None:
    """One full pass over ``/matrix``; the result must equal the h5py reference."""
    method = methods()[name]
    benchmark.extra_info["method"] = method.label
    ctx = method.setup(bench_file)
    try:
        result = benchmark.pedantic(
            method.run, args=(ctx,), rounds=ROUNDS, iterations=1, warmup_rounds=1
        )
    finally:
        method.teardown(ctx)
    check_row_sums(result, expected_row_sums, name)
    _record_throughput(benchmark, bench_facts)

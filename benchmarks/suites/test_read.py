"""Benchmarks of every read operation, loomx vs loompy vs the ceilings, as tests.

Each benchmark checks its result against the h5py/numpy reference, so the suite is a real
test as well; none asserts a time or a memory figure (those go to ``benchmarks/README.md``
through ``run_report.py``).  Run ``pytest benchmarks`` (small generated files) or
``LOOMX_BENCH_FILE=/work/bench-data/pbmc_20000x30000.loom pytest benchmarks``; see
``benchmarks/README.md`` and ``run_report.py`` for the side-by-side tables (fresh processes,
round-robin, ratios).  Here every method runs in this process.
"""

from __future__ import annotations

import statistics
from typing import Any

import dask.array as da
import pytest

import loomx
from benchmarks.harness.operations import READ_OPS, methods
from benchmarks.harness.reference import FileFacts, Reference, check, file_facts
from benchmarks.harness.timer import measure_in_subprocess

from .conftest import ROUNDS, BenchMethod

MEASURED = [name for name, m in methods().items() if m.op in READ_OPS and m.op != "open"]
"""Read methods benchmarked by :func:`test_method` (``open`` has its own tests)."""


def _record_throughput(benchmark: Any, facts: FileFacts) -> None:
    """Store MB/s of raw (decompressed) matrix bytes in the benchmark's ``extra_info``."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["raw_mb"] = round(facts.raw_mb, 1)
        benchmark.extra_info["mb_per_s_raw"] = round(facts.raw_mb / stats.stats.median, 1)


@pytest.mark.benchmark(group="open")
def test_open_loom(benchmark: Any, bench_file: str, bench_facts: FileFacts) -> None:
    """``open_loom`` reads metadata only: a lazy Dataset of the file's shape.

    Also measured in a fresh process (first call, peak RSS increase: recorded, not checked).
    """
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


@pytest.mark.benchmark(group="open: 100 layers, 1000 attributes")
def test_open_wide_file(benchmark: Any, wide_file: str) -> None:
    """``open_loom`` of a file with 100 layers and 1000 attributes finds all of them.

    In-process rounds are benchmarked; the first call in each of 3 fresh processes is
    recorded in ``extra_info`` (``run_report.py --tables open`` reports it).
    """
    facts = file_facts(wide_file)
    ds = benchmark.pedantic(
        loomx.open_loom, args=(wide_file,), rounds=ROUNDS, iterations=1, warmup_rounds=1
    )
    assert len(ds.data_vars) == facts.n_layers + 1
    on_dims = [c for c in ds.coords.values() if c.dims and c.dims[0] in ("row", "col")]
    assert len(on_dims) == facts.n_attrs
    ds.close()

    fresh = [measure_in_subprocess("open_loom", wide_file) for _ in range(3)]
    firsts = [m.first_s for m in fresh]
    benchmark.extra_info["fresh_process_first_open_s"] = [round(s, 3) for s in firsts]
    benchmark.extra_info["median_first_open_s"] = round(statistics.median(firsts), 3)
    assert all(m.shape == facts.shape for m in fresh)


@pytest.mark.parametrize("name", MEASURED)
def test_method(
    bench_method: BenchMethod,
    benchmark: Any,
    name: str,
    bench_file: str,
    bench_facts: FileFacts,
    bench_reference: Reference,
) -> None:
    """One read operation by one method; the result must match the h5py/numpy reference."""
    bench_method(name, bench_file, bench_reference)
    if methods()[name].full_pass:
        _record_throughput(benchmark, bench_facts)


@pytest.mark.parametrize("name", ["loomx_threads", "ceiling_n"])
def test_fresh_process(name: str, bench_file: str, bench_reference: Reference) -> None:
    """The fresh-process timer's result (what ``run_report.py`` measures) is checked too."""
    fresh = measure_in_subprocess(name, bench_file)
    check(fresh.digest, bench_reference[methods()[name].op], name)

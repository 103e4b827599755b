"""Benchmarks of ``loomx.combine`` vs ``loompy.combine`` on 4 loompy-written files, as tests.

By default each input is small (500 x 800) so the suite runs in seconds as a plain test;
``LOOMX_BENCH_COMBINE=5000x8000`` (or ``=N`` for N x N) sets the shape of each of the 4
files.  Two sets of inputs (``make_data.make_combine_inputs``): rows in the same order (so
loomx copies whole compressed chunks), and the rows of the 2nd to 4th files shuffled (so
every file but the first is permuted by ``Accession`` and recompressed).  Each output is
checked against the inputs (the matrix with rows matched by ``Accession``, ``CellID``,
``ClusterID``), so both tools are checked equal to each other as well.
``run_report.py --tables combine`` measures the same methods in fresh processes.
"""

from __future__ import annotations

import pytest

from benchmarks.harness.operations import methods
from benchmarks.harness.reference import Reference

from .conftest import BenchMethod

COMBINE_METHODS = [name for name, m in methods().items() if m.op == "combine"]
"""Methods benchmarked by :func:`test_combine`."""


@pytest.mark.parametrize("name", COMBINE_METHODS)
def test_combine(
    bench_method: BenchMethod, name: str, combine_folder: str, combine_reference: Reference
) -> None:
    """Combine the folder's files by ``Accession``; the output must match the reference."""
    bench_method(name, combine_folder, combine_reference)

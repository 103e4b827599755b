"""Combine benchmark: ``loomx.combine`` vs ``loompy.combine`` on 4 loompy-written files.

By default each input is small (500 x 800) so the suite runs in seconds as a plain test.
``LOOMX_BENCH_COMBINE=5000x8000`` (or ``=N`` for N x N) sets the shape of each of the 4 files
for a measurement::

    LOOMX_BENCH_COMBINE=5000x8000 pytest benchmarks/test_combine.py -p no:randomly

Two sets of inputs: as ``make_loompy_file`` writes them (same row order, so loomx copies
whole compressed chunks), and with the rows of the 2nd to 4th files shuffled (so every file
but the first is permuted by ``Accession`` and recompressed).  Each run's output is checked
against the inputs (matrix column bands with rows matched by ``Accession``, ``CellID``,
``ClusterID``), so both tools are checked equal to each other as well.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from loomx import combine

from .make_data import make_attrs, make_loompy_file, make_matrix

COMBINE_ENV = "LOOMX_BENCH_COMBINE"
"""Environment variable: shape of each input file, ``ROWSxCOLS`` or ``N``."""

SMALL_SHAPE = (500, 800)
N_FILES = 4


def input_shape() -> tuple[int, int]:
    """Shape of each input file: ``$LOOMX_BENCH_COMBINE`` or :data:`SMALL_SHAPE`."""
    value = os.environ.get(COMBINE_ENV, "").lower().strip()
    if not value:
        return SMALL_SHAPE
    rows, _, cols = value.partition("x")
    return int(rows), int(cols or rows)


def _shuffled_file(path: Path, n_rows: int, n_cols: int, seed: int) -> str:
    """Like :func:`make_loompy_file`, rows in a random order (``seed`` 0: the original)."""
    import loompy

    matrix = make_matrix(n_rows, n_cols, 0.07, seed)
    row_attrs, col_attrs = make_attrs(n_rows, n_cols, seed)
    order = np.random.default_rng(seed).permutation(n_rows) if seed else np.arange(n_rows)
    loompy.create(str(path), matrix[order], {k: v[order] for k, v in row_attrs.items()}, col_attrs)
    return str(path)


@pytest.fixture(scope="module", params=["same row order", "shuffled rows"])
def combine_inputs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Four loompy-written files of :func:`input_shape` (different seeds); with
    ``"shuffled rows"`` the rows of the 2nd to 4th files are in random orders."""
    folder = tmp_path_factory.mktemp("combine")
    n_rows, n_cols = input_shape()
    make = make_loompy_file if request.param == "same row order" else _shuffled_file
    return [make(folder / f"in{i}.loom", n_rows, n_cols, seed=i) for i in range(N_FILES)]


def check_combined(out: str, inputs: list[str]) -> None:
    """The output holds the inputs side by side: matrix, CellID, ClusterID, Accession."""
    with h5py.File(out, "r") as f:
        offset = 0
        accession = f["row_attrs"]["Accession"][:]
        for path in inputs:
            with h5py.File(path, "r") as g:
                m = g["matrix"].shape[1]
                own = g["row_attrs"]["Accession"][:]
                rows = np.argsort(own)[np.argsort(np.argsort(accession))]
                np.testing.assert_array_equal(own[rows], accession)
                for start in range(0, m, 2048):
                    stop = min(start + 2048, m)
                    np.testing.assert_array_equal(
                        f["matrix"][:, offset + start : offset + stop],
                        g["matrix"][:, start:stop][rows],
                    )
                for name in ("CellID", "ClusterID"):
                    np.testing.assert_array_equal(
                        f["col_attrs"][name][offset : offset + m], g["col_attrs"][name][:]
                    )
                offset += m
        assert f["matrix"].shape[1] == offset


def _run(benchmark: Any, func: Any, inputs: list[str], out: Path, tool: str) -> None:
    def once() -> None:
        if out.exists():
            out.unlink()
        func(inputs, str(out), key="Accession")

    benchmark.extra_info["tool"] = tool
    benchmark.extra_info["input_shape"] = "x".join(map(str, input_shape()))
    benchmark.pedantic(once, rounds=1, iterations=1, warmup_rounds=0)
    check_combined(str(out), inputs)


@pytest.mark.benchmark(group="combine 4 files")
def test_combine_loomx(benchmark: Any, combine_inputs: list[str], tmp_path: Path) -> None:
    """``loomx.combine(files, out, key="Accession")``: one streaming write."""
    _run(benchmark, combine, combine_inputs, tmp_path / "loomx.loom", "loomx")


@pytest.mark.benchmark(group="combine 4 files")
def test_combine_loompy(benchmark: Any, combine_inputs: list[str], tmp_path: Path) -> None:
    """``loompy.combine(files, out, key="Accession")``: copy, then batch-wise add_columns."""
    import loompy

    _run(benchmark, loompy.combine, combine_inputs, tmp_path / "loompy.loom", "loompy")

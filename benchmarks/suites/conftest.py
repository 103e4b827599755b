"""Fixtures of the benchmarks: the files to read and write, the references, a method runner.

By default the benchmarks use small files generated into the session's temporary folder (a
loompy-written 2000 x 3000 matrix and its AnnData copies ``bench.h5ad`` and ``bench.zarr``,
a 2000 x 3000 file with 100 layers and 1000 attributes, and folders of 4 loompy-written
500 x 800 files to combine), so ``pytest`` runs them as plain tests in CI.  Set
``LOOMX_BENCH_FILE=/path/to/file.loom`` (e.g. written by ``python -m benchmarks.data.make_data``;
the AnnData peers need its copies, ``--from-loom``),
``LOOMX_BENCH_WIDE_FILE=/path/to/wide.loom`` (``make_data.py --wide``) and
``LOOMX_BENCH_COMBINE=ROWSxCOLS`` (the shape of each file to combine) to use big files
instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.data.make_data import (
    make_combine_inputs,
    make_loompy_file,
    make_wide_file,
    write_anndata_copy,
)
from benchmarks.harness.operations import OP_TITLES, READ_OPS, methods
from benchmarks.harness.peer_methods import PEER_SUFFIXES
from benchmarks.harness.reference import (
    FileFacts,
    Reference,
    check,
    digest,
    file_facts,
    reference,
    warm_page_cache,
)

__all__ = ["ROUNDS", "BenchMethod"]

BENCH_FILE_ENV = "LOOMX_BENCH_FILE"
"""Environment variable naming a Loom file to benchmark instead of the small default."""

WIDE_FILE_ENV = "LOOMX_BENCH_WIDE_FILE"
"""Environment variable naming a file with many layers and attributes to time opening."""

COMBINE_ENV = "LOOMX_BENCH_COMBINE"
"""Environment variable: shape of each file to combine, ``ROWSxCOLS`` or ``N``."""

SMALL_SHAPE = (2000, 3000)
"""Shape of the default benchmark files."""

COMBINE_SHAPE = (500, 800)
"""Default shape of each file to combine."""

COMBINE_FILES = 4
"""Files combined."""

WIDE_LAYERS, WIDE_ATTRS = 100, 1000
"""Layers and attributes of the default wide file."""

ROUNDS = 3
"""Timed rounds per benchmark (after one untimed warm-up round)."""


def _from_env(name: str) -> str | None:
    path = os.environ.get(name)
    if path and not os.path.isfile(path):
        pytest.fail(f"{name}={path!r}: no such file")
    return path or None


def combine_shape() -> tuple[int, int]:
    """Shape of each file to combine: ``$LOOMX_BENCH_COMBINE`` or :data:`COMBINE_SHAPE`."""
    value = os.environ.get(COMBINE_ENV, "").lower().strip()
    if not value:
        return COMBINE_SHAPE
    rows, _, cols = value.partition("x")
    return int(rows), int(cols or rows)


@pytest.fixture(scope="session")
def bench_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of the Loom file to read: ``$LOOMX_BENCH_FILE`` or a small loompy-written one."""
    path = _from_env(BENCH_FILE_ENV)
    if path:
        return path
    target = tmp_path_factory.mktemp("bench") / "bench.loom"
    make_loompy_file(target, *SMALL_SHAPE, density=0.07, seed=0)
    for suffix in PEER_SUFFIXES.values():  # the AnnData copies the peer methods read
        write_anndata_copy(target, target.with_suffix(suffix))
    return str(target)


@pytest.fixture(scope="session")
def wide_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A file with 100 layers and 1000 attributes: ``$LOOMX_BENCH_WIDE_FILE`` or a small one."""
    path = _from_env(WIDE_FILE_ENV)
    if path:
        return path
    target = tmp_path_factory.mktemp("bench") / "wide.loom"
    return make_wide_file(target, *SMALL_SHAPE, n_layers=WIDE_LAYERS, n_attrs=WIDE_ATTRS)


@pytest.fixture(scope="session", params=["same row order", "shuffled rows"])
def combine_folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A folder of 4 loompy-written files of :func:`combine_shape` (seeds 0-3); with
    ``"shuffled rows"`` the rows of the 2nd to 4th files are in random orders."""
    folder = tmp_path_factory.mktemp("combine")
    shuffle = request.param == "shuffled rows"
    make_combine_inputs(folder, *combine_shape(), n_files=COMBINE_FILES, shuffle=shuffle)
    return str(folder)


@pytest.fixture(scope="session")
def bench_facts(bench_file: str) -> FileFacts:
    """Shape and storage facts of the benchmark file's ``/matrix``."""
    return file_facts(bench_file)


@pytest.fixture(scope="session")
def bench_reference(bench_file: str) -> Reference:
    """Reference digests of every read and write operation on the benchmark file (plain h5py
    + numpy); also warms the page cache."""
    warm_page_cache(bench_file)
    return reference(bench_file, [*READ_OPS, "write_layer", "write_attr"])


@pytest.fixture(scope="session")
def combine_reference(combine_folder: str) -> Reference:
    """Reference digest of combining the files of ``combine_folder``."""
    return reference(combine_folder, ["combine"])


BenchMethod = Callable[[str, str, Reference], dict[str, Any]]
"""``bench_method(name, path, reference)``: benchmark one method, check it, return its digest."""


@pytest.fixture
def bench_method(benchmark: Any) -> BenchMethod:
    """Benchmark a method in this process: setup, :data:`ROUNDS` timed rounds after one
    warm-up (``prepare`` untimed before each), then check its result against the reference.

    ``Method.cores`` pinning is applied only in fresh processes (``run_report.py``).
    """

    def bench(name: str, path: str, ref: Reference) -> dict[str, Any]:
        method = methods()[name]
        missing = [p for p in method.inputs(path) if not os.path.exists(p)]
        if missing:
            pytest.skip(f"{name} reads {missing}: write them with make_data.py --from-loom")
        benchmark.group = OP_TITLES[method.op]
        benchmark.extra_info["method"] = method.label
        ctx = method.setup(path)
        try:
            result = benchmark.pedantic(
                method.run,
                args=(ctx,),
                setup=lambda: method.prepare(ctx),
                rounds=ROUNDS,
                iterations=1,
                warmup_rounds=1,
            )
            got = digest(method.op, method.normalize(result, ctx))
        finally:
            method.teardown(ctx)
        check(got, ref[method.op], name)
        return got

    return bench

"""The measured operations, the :class:`Method` shape and the registry of every method.

Every measured :class:`Method` computes one *operation*, loomx and loompy side by side (plus,
for reads, the h5py and chunk-index ceilings).  Read operations, on ``/matrix`` of one file:

``open``
    open the file; the result is ``/matrix``'s shape.
``row_mean_std``
    per-row mean and standard deviation (a full pass).
``row_sums``
    per-row sums (a full pass).
``col_sums``
    per-column sums (a full pass).
``random_cols``
    1000 random columns (``reference.random_columns``, fixed seed) as a dense array.
``scan``
    a scan over column batches, summing each column (a full pass).
``csr``
    the whole matrix as a ``scipy.sparse.csr_matrix`` (a full pass).

Write operations, each on a fresh copy of one file (``write_methods.py``):

``write_layer``
    write a computed layer ``norm = log1p(matrix)`` into the file.
``write_attr``
    write back one float64 column attribute ``Score`` (``mode="a"``).
``combine``
    combine the Loom files of a folder along columns, rows matched by ``Accession``.

A method has a ``setup`` (not timed: open files, start pools and clusters), a ``prepare``
before each run (not timed: e.g. a fresh copy of the file to write into), a timed ``run`` and
a ``teardown``; ``normalize`` turns its result into the operation's canonical form, which
``reference.digest`` reduces to small arrays that ``reference.check`` compares with the
reference computed with plain h5py and numpy.  So every benchmark is also a test of its
result.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BASELINES",
    "N_RANDOM_COLS",
    "OP_TITLES",
    "READ_OPS",
    "Method",
    "methods",
    "ncores",
    "scaling_cores",
    "scaling_name",
]

N_RANDOM_COLS = 1000
"""Columns picked by ``reference.random_columns``."""

SCALING_CORES = (1, 2, 4, 8, 16)
"""Core counts of the scaling table (those above this machine's cores are not measured)."""

READ_OPS = ("open", "row_mean_std", "row_sums", "col_sums", "random_cols", "scan", "csr")
"""Read operations, in table order."""

WRITE_OPS = ("write_layer", "write_attr", "combine")
"""Write operations, in table order."""

OPS = READ_OPS + WRITE_OPS
"""Every operation, in table order."""

FULL_PASS_OPS = ("row_mean_std", "row_sums", "col_sums", "scan", "csr")
"""Operations that read every value of ``/matrix`` (their MB/s raw is meaningful)."""

OP_TITLES = {
    "open": "open the file",
    "row_mean_std": "full pass: per-row mean + std",
    "row_sums": "full pass: per-row sums",
    "col_sums": "full pass: per-column sums",
    "random_cols": f"{N_RANDOM_COLS} random columns (dense)",
    "scan": "full scan over column batches (per-column sums)",
    "csr": "whole matrix as scipy CSR",
    "write_layer": "write a computed layer (`np.log1p(matrix)`)",
    "write_attr": 'write-back of one column attribute (`mode="a"`)',
    "combine": "combine the files of a folder (`key='Accession'`)",
}
"""Human-readable name of each operation."""

BASELINES = {
    "open": "loompy_connect",
    "row_mean_std": "loompy_map_meanstd",
    "row_sums": "loompy_map",
    "col_sums": "loompy_colsum",
    "random_cols": "loompy_cols",
    "scan": "loompy_scan",
    "csr": "loompy_sparse",
    "write_layer": "loompy_write_layer",
    "combine": "loompy_combine",
}
"""The loompy method each operation's speed-up is computed against (none for ``write_attr``)."""


def ncores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def scaling_cores() -> list[int]:
    """Core counts of :data:`SCALING_CORES` this machine has, plus its own core count."""
    n = ncores()
    return sorted({k for k in SCALING_CORES if k <= n} | {n})


def identity(result: Any, ctx: Any) -> Any:
    """The default ``normalize``: the result as it is."""
    return result


def nothing(ctx: Any) -> None:
    """The default ``prepare`` and ``teardown``: nothing to do."""


def no_inputs(path: str) -> list[str]:
    """The default ``inputs``: the method reads ``path`` only."""
    return []


@dataclass
class Method:
    """One way of computing an operation: untimed ``setup`` and ``prepare``, timed ``run``.

    ``setup(path)`` returns the context every other callable gets; ``prepare(ctx)`` runs
    before each timed ``run(ctx)``; ``normalize(result, ctx)`` gives the operation's
    canonical result for ``reference.digest`` (after the timed runs); ``teardown(ctx)``
    releases everything.  ``cores`` pins the measuring child process (and so its pools and
    workers) to that many cores; ``scaling`` marks methods that exist only for the scaling
    table; ``inputs(path)`` lists the files (or folders) the method reads instead of, or
    besides, ``path`` (copies in other formats; ``run_report.py`` warms them and leaves the
    method out when one is missing).
    """

    name: str
    label: str
    op: str
    setup: Callable[[str], Any]
    run: Callable[[Any], Any]
    teardown: Callable[[Any], None] = nothing
    normalize: Callable[[Any, Any], Any] = identity
    prepare: Callable[[Any], None] = nothing
    cores: int | None = None
    scaling: bool = False
    inputs: Callable[[str], list[str]] = no_inputs

    @property
    def full_pass(self) -> bool:
        """Whether the method reads every value of ``/matrix``."""
        return self.op in FULL_PASS_OPS


def scaling_name(kind: str, k: int) -> str:
    """Name of the method of the scaling table: ``kind`` (threads, cluster, ceiling) on ``k`` cores.

    On all cores these are the ordinary methods (``loomx_threads``, ``loomx_distributed``,
    ``ceiling_n``), not pinned.
    """
    full = k == ncores()
    if kind == "threads":
        return "loomx_threads" if full else f"loomx_threads_{k}"
    if kind == "cluster":
        return "loomx_distributed" if full else f"loomx_distributed_{k}"
    if kind == "ceiling":
        return "ceiling_n" if full else f"ceiling_{k}"
    raise ValueError(f"unknown scaling kind {kind!r}")


def methods() -> dict[str, Method]:
    """Every measured method, by name, in table order (grouped by operation)."""
    from .read_methods import read_methods
    from .write_methods import write_methods

    items = read_methods() + write_methods()
    order = {op: i for i, op in enumerate(OPS)}
    items.sort(key=lambda m: order[m.op])
    return {m.name: m for m in items}

"""The AnnData peers of the read operations: the same matrix as ``.h5ad`` and as ``.zarr``.

A user who does not keep Loom files would convert them once to AnnData and read them
lazily.  ``make_data.py --from-loom`` writes ``/matrix`` of the benchmark file next to it
as ``<stem>.h5ad`` and ``<stem>.zarr`` (AnnData's defaults; ``X`` is CSR with cells as rows,
the transpose of ``/matrix``, as ``anndata.read_loom`` gives it).  Setup (not timed) opens
one with ``anndata.experimental.read_lazy``: ``X`` is a dask array of scipy CSR blocks of
1000 cells (rows of ``X``) by every gene.  The timed runs compute with dask's default
scheduler (threads):

``row_sums``
    per-gene sums over cells, ``X``'s column sums: the sum of each block's
    ``block.sum(axis=0)`` (float64); Loom's per-row sums over ``col``.
``row_mean_std``
    per-gene mean and standard deviation over cells (``ddof=0``) from the float64 sums
    and sums of squares of every block, in one pass (``dask.compute``), as scanpy's
    ``_get_mean_var`` computes them for dask arrays.
``random_cols``
    the same 1000 random cells: ``X[cols].compute().toarray().T`` (Loom's orientation,
    columns in the order of ``cols``).

dask's own reductions (``X.sum(axis=0)``) do not run on scipy sparse blocks (they pass
``keepdims``), hence the block sums.  Results are checked against the reference of the
Loom file, like every other method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .operations import Method
from .reference import random_columns

__all__ = ["PEER_SUFFIXES", "peer_methods"]

PEER_SUFFIXES = {"h5ad": ".h5ad", "zarr": ".zarr"}
"""The AnnData copies of a Loom file: format -> suffix of the copy next to it."""


def peer_path(loom: str, fmt: str) -> Path:
    """Where ``make_data.py --from-loom`` writes the ``fmt`` copy of Loom file ``loom``."""
    return Path(loom).with_suffix(PEER_SUFFIXES[fmt])


def _inputs(fmt: str) -> Callable[[str], list[str]]:
    def inputs(path: str) -> list[str]:
        return [str(peer_path(path, fmt))]

    return inputs


@dataclass
class PeerContext:
    """A lazily read AnnData and the 1000 random cells (Loom columns)."""

    adata: Any
    cols: np.ndarray


def _setup(fmt: str) -> Callable[[str], PeerContext]:
    def setup(path: str) -> PeerContext:
        from anndata.experimental import read_lazy

        copy = peer_path(path, fmt)
        if not copy.exists():
            raise FileNotFoundError(
                f"no {copy}: write it with `python -m benchmarks.data.make_data {copy} "
                f"--from-loom {path}`"
            )
        adata = read_lazy(str(copy))
        return PeerContext(adata, random_columns(adata.n_obs))

    return setup


def _teardown(ctx: PeerContext) -> None:
    if getattr(ctx.adata, "file", None) is not None:  # h5ad: read_lazy keeps it open
        ctx.adata.file.close()


def block_sums(x: Any, squares: bool = False) -> Any:
    """Column sums (float64) of a dask array of scipy sparse blocks, as a dask array;
    with ``squares`` the sums of the squared values."""

    def one(block: Any) -> np.ndarray:
        values = block.multiply(block) if squares else block
        return np.asarray(values.sum(axis=0, dtype=np.float64))

    rows = ((1,) * x.numblocks[0], x.chunks[1])
    partial = x.map_blocks(one, chunks=rows, dtype=np.float64, meta=np.empty((0, 0)))
    return partial.sum(axis=0)


def _row_sums(ctx: PeerContext) -> np.ndarray:
    return block_sums(ctx.adata.X).compute()


def _mean_std(ctx: PeerContext) -> tuple[np.ndarray, np.ndarray]:
    import dask

    x = ctx.adata.X
    sums, squares = dask.compute(block_sums(x), block_sums(x, squares=True))
    mean = sums / x.shape[0]
    return mean, np.sqrt(np.maximum(squares / x.shape[0] - mean**2, 0))


def _cols(ctx: PeerContext) -> np.ndarray:
    return ctx.adata.X[ctx.cols].compute().toarray().T


def _sorted_back(result: np.ndarray, ctx: PeerContext) -> np.ndarray:
    """Columns of ``_cols`` (in the order of ``cols``) in increasing column order."""
    return np.asarray(result)[:, np.argsort(ctx.cols)]


def peer_methods() -> list[Method]:
    """The AnnData peer methods of the read operations, h5ad and zarr."""
    items = []
    for fmt in PEER_SUFFIXES:
        common = dict(setup=_setup(fmt), teardown=_teardown, inputs=_inputs(fmt))
        lazy = f"anndata `read_lazy(.{fmt})` (CSR X)"
        items += [
            Method(f"anndata_{fmt}_meanstd", f"{lazy}, per-gene mean + std from block "
                   "sums, default threads", "row_mean_std", run=_mean_std, **common),
            Method(f"anndata_{fmt}_sums", f"{lazy}, per-gene block sums, default threads",
                   "row_sums", run=_row_sums, **common),
            Method(f"anndata_{fmt}_cols", f"{lazy}, `X[cols]` to dense, default threads",
                   "random_cols", run=_cols, normalize=_sorted_back, **common),
        ]  # fmt: skip
    return items

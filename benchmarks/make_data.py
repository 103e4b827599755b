"""Write a loompy-written benchmark file.

The file is made by ``loompy.create`` itself, so its layout is exactly loompy's: ``/matrix``
in (64, 64) chunks, gzip level 2, plus ``Gene``/``Accession`` row attributes and
``CellID``/``ClusterID`` column attributes.  The matrix is float32 with about ``density``
non-zero values, each a Poisson count (``1 + Poisson(2)``), the way UMI counts look.

Usage::

    python benchmarks/make_data.py /work/bench-data/pbmc_20000x30000.loom \\
        --rows 20000 --cols 30000 --density 0.07 --seed 0
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

BAND_ROWS = 1000
"""Rows generated at a time (bounds the float64 scratch memory)."""


def make_matrix(n_rows: int, n_cols: int, density: float = 0.07, seed: int = 0) -> np.ndarray:
    """Dense float32 count matrix with about ``density`` non-zero entries.

    Parameters
    ----------
    n_rows, n_cols
        Shape of the matrix (genes x cells).
    density
        Fraction of non-zero entries.
    seed
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same matrix.

    Returns
    -------
    numpy.ndarray
        ``(n_rows, n_cols)`` float32.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((n_rows, n_cols), dtype=np.float32)
    for start in range(0, n_rows, BAND_ROWS):
        stop = min(start + BAND_ROWS, n_rows)
        mask = rng.random((stop - start, n_cols), dtype=np.float32) < density
        counts = 1 + rng.poisson(2.0, size=int(mask.sum()))
        out[start:stop][mask] = counts.astype(np.float32)
    return out


def make_attrs(
    n_rows: int, n_cols: int, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Row attributes ``Gene``, ``Accession`` and column attributes ``CellID``, ``ClusterID``."""
    rng = np.random.default_rng(seed + 1)
    row_attrs = {
        "Gene": np.array([f"Gene{i}" for i in range(n_rows)], dtype=object),
        "Accession": np.array([f"ENSG{i:011d}" for i in range(n_rows)], dtype=object),
    }
    col_attrs = {
        "CellID": np.array([f"cell_{j}" for j in range(n_cols)], dtype=object),
        "ClusterID": rng.integers(0, 20, size=n_cols).astype(np.int64),
    }
    return row_attrs, col_attrs


def make_loompy_file(
    path: str | os.PathLike,
    n_rows: int,
    n_cols: int,
    density: float = 0.07,
    seed: int = 0,
) -> str:
    """Write a benchmark Loom file with ``loompy.create`` and return its path.

    Parameters
    ----------
    path
        Output ``.loom`` file (its folder is created; an existing file is replaced).
    n_rows, n_cols
        Shape of ``/matrix``.
    density
        Fraction of non-zero entries (0.07 by default, typical of single-cell counts).
    seed
        Random seed.

    Returns
    -------
    str
        ``path`` as a string.

    Examples
    --------
    >>> make_loompy_file("/tmp/small.loom", 2000, 3000)  # doctest: +SKIP
    '/tmp/small.loom'
    """
    import loompy

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    matrix = make_matrix(n_rows, n_cols, density, seed)
    row_attrs, col_attrs = make_attrs(n_rows, n_cols, seed)
    loompy.create(str(path), matrix, row_attrs=row_attrs, col_attrs=col_attrs)
    return str(path)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="output .loom file")
    parser.add_argument("--rows", type=int, default=20000, help="rows (genes)")
    parser.add_argument("--cols", type=int, default=30000, help="columns (cells)")
    parser.add_argument("--density", type=float, default=0.07, help="fraction of non-zeros")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    make_loompy_file(args.path, args.rows, args.cols, args.density, args.seed)
    elapsed = time.perf_counter() - start
    size_mb = Path(args.path).stat().st_size / 1e6
    print(f"wrote {args.path}: {args.rows} x {args.cols}, {size_mb:.1f} MB, {elapsed:.1f} s")


if __name__ == "__main__":
    main()

"""Write the benchmark files.

The default file is made by ``loompy.create`` itself, so its layout is exactly loompy's:
``/matrix`` in (64, 64) chunks, gzip level 2, plus ``Gene``/``Accession`` row attributes and
``CellID``/``ClusterID`` column attributes.  The matrix is float32 with about ``density``
non-zero values, each a Poisson count (``1 + Poisson(2)``), the way UMI counts look.

With ``--wide`` it writes a file with many layers and attributes instead
(:func:`make_wide_file`), to time opening a file with many objects; with ``--noise-layer``
the default file gets one more layer of random ``uint16`` values (:func:`add_noise_layer`, a
bigger file for the attribute write-back); with ``--combine`` the path is a folder that gets
``--files`` default files to combine (:func:`make_combine_inputs`), with ``--shuffle`` the
rows of all but the first in random orders.  With ``--from-loom LOOM`` the path is a
``.h5ad`` file or ``.zarr`` store that gets LOOM's matrix as AnnData writes it
(:func:`write_anndata_copy`), for the AnnData peer methods of ``peer_methods.py``.

Usage::

    python -m benchmarks.data.make_data /work/bench-data/pbmc_20000x30000.loom \\
        --rows 20000 --cols 30000 --density 0.07 --seed 0
    python -m benchmarks.data.make_data /work/bench-data/wide_20000x30000.loom --wide \\
        --rows 20000 --cols 30000 --layers 100 --attrs 1000 --seed 0
    python -m benchmarks.data.make_data /work/bench-data/big_20000x30000.loom --noise-layer \\
        --rows 20000 --cols 30000 --density 0.07 --seed 0
    python -m benchmarks.data.make_data /work/bench-data/combine_5000x8000 --combine \\
        --rows 5000 --cols 8000 --files 4
    python -m benchmarks.data.make_data /work/bench-data/combine_5000x8000_shuffled --combine \\
        --shuffle --rows 5000 --cols 8000 --files 4
    python -m benchmarks.data.make_data /work/bench-data/pbmc_20000x30000.h5ad \\
        --from-loom /work/bench-data/pbmc_20000x30000.loom
    python -m benchmarks.data.make_data /work/bench-data/pbmc_20000x30000.zarr \\
        --from-loom /work/bench-data/pbmc_20000x30000.loom
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["make_combine_inputs", "make_loompy_file", "make_wide_file", "write_anndata_copy"]

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


def make_combine_inputs(
    folder: str | os.PathLike,
    n_rows: int,
    n_cols: int,
    n_files: int = 4,
    shuffle: bool = False,
    density: float = 0.07,
) -> list[str]:
    """Write ``n_files`` default files ``in0.loom`` ... into ``folder`` (seeds 0, 1, ...).

    Every file has the same ``Accession`` values; with ``shuffle`` the rows of all files but
    the first are in a random order (seeded), so combining them by ``Accession`` realigns
    them.  Other ``.loom`` files in ``folder`` are removed.  Returns the paths.
    """
    import loompy

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.loom"):
        old.unlink()
    paths = []
    for seed in range(n_files):
        path = folder / f"in{seed}.loom"
        matrix = make_matrix(n_rows, n_cols, density, seed)
        row_attrs, col_attrs = make_attrs(n_rows, n_cols, seed)
        if shuffle and seed:
            order = np.random.default_rng(seed).permutation(n_rows)
            matrix = matrix[order]
            row_attrs = {k: v[order] for k, v in row_attrs.items()}
        loompy.create(str(path), matrix, row_attrs=row_attrs, col_attrs=col_attrs)
        paths.append(str(path))
    return paths


def add_noise_layer(path: str | os.PathLike, name: str = "noise", seed: int = 0) -> str:
    """Add a layer of random ``uint16`` values (incompressible) to a Loom file, in row bands.

    Stored like loompy's layers ((64, 64) chunks, gzip level 2); it makes a bigger file of
    the same kind (a 20000 x 30000 default file grows from 149 MB to about 1.36 GB).
    """
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "r+") as f:
        n_rows, n_cols = f["matrix"].shape
        layer = f.create_dataset(
            f"layers/{name}",
            shape=(n_rows, n_cols),
            dtype=np.uint16,
            chunks=(min(LOOMPY_CHUNKS[0], n_rows), min(LOOMPY_CHUNKS[1], n_cols)),
            compression="gzip",
            compression_opts=LOOMPY_GZIP_LEVEL,
            maxshape=(n_rows, None),
            fillvalue=0,
        )
        for start in range(0, n_rows, BAND_ROWS):
            stop = min(start + BAND_ROWS, n_rows)
            layer[start:stop] = rng.integers(0, 2**16, size=(stop - start, n_cols), dtype=np.uint16)
    return str(path)


LOOMPY_CHUNKS = (64, 64)
"""loompy's chunk shape for layers."""

LOOMPY_GZIP_LEVEL = 2
"""loompy's gzip level for layers and attributes."""


def _attr_values(i: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Values of the ``i``-th attribute of length ``n``; its kind cycles with ``i``.

    ``i % 10 == 0``: strings (non-ASCII included); ``i % 100 == 5``: 2-D float32 ``(n, 2)``
    (an embedding); otherwise float64, int64 or float32 in turn.
    """
    if i % 10 == 0:
        return np.array([f"a{i}_{j}_\u00e9" for j in range(n)], dtype=object)
    if i % 100 == 5:
        return rng.normal(size=(n, 2)).astype(np.float32)
    kind = i % 3
    if kind == 0:
        return rng.normal(size=n)
    if kind == 1:
        return rng.integers(0, 1000, size=n).astype(np.int64)
    return rng.random(n, dtype=np.float32)


def make_wide_file(
    path: str | os.PathLike,
    n_rows: int,
    n_cols: int,
    n_layers: int = 100,
    n_attrs: int = 1000,
    seed: int = 0,
) -> str:
    """Write a Loom file with many layers and attributes (to time opening it).

    The layout is loompy's (spec 3.0.0), written with h5py: ``/matrix`` and ``n_layers``
    layers ``/layers/layer000`` ... are float32 ``(n_rows, n_cols)`` datasets in (64, 64)
    chunks, gzip level 2, declared but left unallocated (they read as zeros); ``n_attrs``
    attributes hold real values, alternately on rows and columns (``row_attr0000``,
    ``col_attr0001``, ...), gzip level 2 like loompy's: one in ten are variable-length UTF-8
    strings, one in a hundred a 2-D float32 embedding, the rest float64, int64 or float32.

    Parameters
    ----------
    path
        Output ``.loom`` file (its folder is created; an existing file is replaced).
    n_rows, n_cols
        Shape of ``/matrix`` and every layer.
    n_layers
        Layers besides ``/matrix``.
    n_attrs
        Row and column attributes in all.
    seed
        Random seed of the attribute values.

    Returns
    -------
    str
        ``path`` as a string.

    Examples
    --------
    >>> make_wide_file("/tmp/wide.loom", 2000, 3000)  # doctest: +SKIP
    '/tmp/wide.loom'
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    rng = np.random.default_rng(seed)
    strings = h5py.string_dtype("utf-8")
    chunks = (min(LOOMPY_CHUNKS[0], n_rows), min(LOOMPY_CHUNKS[1], n_cols))
    layer = {
        "shape": (n_rows, n_cols),
        "dtype": np.float32,
        "chunks": chunks,
        "compression": "gzip",
        "compression_opts": LOOMPY_GZIP_LEVEL,
        "maxshape": (n_rows, None),
        "fillvalue": 0,
    }
    with h5py.File(path, "w") as f:
        for group in ("attrs", "layers", "row_attrs", "col_attrs", "row_graphs", "col_graphs"):
            f.create_group(group)
        f.create_dataset("attrs/LOOM_SPEC_VERSION", data="3.0.0", dtype=strings)
        f.create_dataset("attrs/CreationDate", data="20261123T000000.000000Z", dtype=strings)
        f.create_dataset("matrix", **layer)
        for k in range(n_layers):
            f.create_dataset(f"layers/layer{k:03d}", **layer)
        for i in range(n_attrs):
            group, n = ("row_attrs", n_rows) if i % 2 == 0 else ("col_attrs", n_cols)
            values = _attr_values(i, n, rng)
            f.create_dataset(
                f"{group}/{group[:3]}_attr{i:04d}",
                data=values,
                dtype=strings if values.dtype == object else values.dtype,
                maxshape=(n,) if values.ndim == 1 else (n, None),
                compression="gzip",
                compression_opts=LOOMPY_GZIP_LEVEL,
            )
    return str(path)


CONVERT_BAND_COLS = 2048
"""Loom columns (cells) read at a time by :func:`write_anndata_copy`."""


def loom_as_csr(path: str | os.PathLike) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``/matrix`` of a Loom file as AnnData holds it, plus the attributes.

    Returns ``(X, obs, var)``: ``X`` is a ``scipy.sparse.csr_matrix`` with cells (Loom
    columns) as rows and genes (Loom rows) as columns, the transpose of ``/matrix``, as
    ``anndata.read_loom`` makes it; ``obs`` holds the column attributes and ``var`` the row
    attributes (strings decoded).  Read in bands of :data:`CONVERT_BAND_COLS` columns with
    h5py; never the whole matrix dense.
    """
    import h5py
    import scipy.sparse

    def decoded(values: np.ndarray) -> np.ndarray:
        if values.dtype.kind in "SO":
            return np.array([v.decode() if isinstance(v, bytes) else v for v in values], object)
        return values

    with h5py.File(path, "r") as f:
        matrix = f["matrix"]
        n_cols = matrix.shape[1]
        bands = [
            scipy.sparse.csr_matrix(matrix[:, start : start + CONVERT_BAND_COLS].T)
            for start in range(0, n_cols, CONVERT_BAND_COLS)
        ]
        obs = {name: decoded(d[()]) for name, d in f["col_attrs"].items()}
        var = {name: decoded(d[()]) for name, d in f["row_attrs"].items()}
    return scipy.sparse.vstack(bands, format="csr"), obs, var


def write_anndata_copy(loom: str | os.PathLike, path: str | os.PathLike) -> str:
    """Write ``/matrix`` of ``loom`` as an AnnData file, ``.h5ad`` or ``.zarr`` by suffix.

    ``X`` is CSR with cells as rows (:func:`loom_as_csr`, AnnData's orientation for Loom
    files); ``obs`` holds the column attributes (``obs_names`` from ``CellID``), ``var`` the
    row attributes (``var_names`` from ``Gene``).  Written with AnnData's defaults
    (``write_h5ad``: no compression; ``write_zarr``: zarr format
    ``anndata.settings.zarr_write_format``, zarr's default codec).  An existing copy is
    replaced.  Returns ``path`` as a string.

    Examples
    --------
    >>> write_anndata_copy("/tmp/small.loom", "/tmp/small.h5ad")  # doctest: +SKIP
    '/tmp/small.h5ad'
    """
    import shutil

    import anndata as ad
    import pandas as pd

    path = Path(path)
    if path.suffix not in (".h5ad", ".zarr"):
        raise ValueError(f"{path}: expected a .h5ad or .zarr path")
    x, obs, var = loom_as_csr(loom)
    obs_frame = pd.DataFrame(obs, index=pd.Index(obs.pop("CellID", None), dtype=str))
    var_frame = pd.DataFrame(var, index=pd.Index(var.pop("Gene", None), dtype=str))
    adata = ad.AnnData(X=x, obs=obs_frame, var=var_frame)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if path.suffix == ".h5ad":
        adata.write_h5ad(path)
    else:
        adata.write_zarr(path)
    return str(path)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="output .loom file")
    parser.add_argument("--rows", type=int, default=20000, help="rows (genes)")
    parser.add_argument("--cols", type=int, default=30000, help="columns (cells)")
    parser.add_argument("--density", type=float, default=0.07, help="fraction of non-zeros")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--wide", action="store_true", help="many unallocated layers and many attributes"
    )
    parser.add_argument("--layers", type=int, default=100, help="layers (with --wide)")
    parser.add_argument("--attrs", type=int, default=1000, help="attributes (with --wide)")
    parser.add_argument(
        "--noise-layer", action="store_true", help="add a layer of random uint16 values"
    )
    parser.add_argument(
        "--combine", action="store_true", help="path is a folder: write --files files into it"
    )
    parser.add_argument("--files", type=int, default=4, help="files (with --combine)")
    parser.add_argument(
        "--shuffle", action="store_true", help="rows of all files but the first in random orders"
    )
    parser.add_argument(
        "--from-loom",
        metavar="LOOM",
        help="path is a .h5ad or .zarr: write LOOM's /matrix there as AnnData (CSR X)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.from_loom:
        write_anndata_copy(args.from_loom, args.path)
        what = f"AnnData copy of {args.from_loom} (CSR X, cells as rows)"
        files = [p for p in Path(args.path).rglob("*") if p.is_file()] or [args.path]
    elif args.wide:
        make_wide_file(args.path, args.rows, args.cols, args.layers, args.attrs, args.seed)
        what = f"{args.layers} layers, {args.attrs} attributes"
        files = [args.path]
    elif args.combine:
        files = make_combine_inputs(
            args.path, args.rows, args.cols, args.files, args.shuffle, args.density
        )
        what = f"{args.files} files, density {args.density}" + ", shuffled" * args.shuffle
    else:
        make_loompy_file(args.path, args.rows, args.cols, args.density, args.seed)
        if args.noise_layer:
            add_noise_layer(args.path, seed=args.seed)
        what = f"density {args.density}" + ", noise layer" * args.noise_layer
        files = [args.path]
    elapsed = time.perf_counter() - start
    size_mb = sum(Path(p).stat().st_size for p in files) / 1e6
    shape = "" if args.from_loom else f" {args.rows} x {args.cols},"
    print(f"wrote {args.path}:{shape} {what}, {size_mb:.1f} MB, {elapsed:.1f} s")


if __name__ == "__main__":
    main()

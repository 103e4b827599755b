"""Write small and large example Loom files with h5py, in loompy's on-disk layout."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from loomx._format import spec as _spec

__all__ = [
    "make_counts_loom",
    "make_example_loom",
    "write_loom_h5py",
]


def write_loom_h5py(
    path: str | os.PathLike,
    layers: Mapping[str, np.ndarray],
    row_attrs: Mapping[str, np.ndarray] | None = None,
    col_attrs: Mapping[str, np.ndarray] | None = None,
    *,
    row_graphs: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    col_graphs: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    global_attrs: Mapping[str, Any] | None = None,
    version: str = _spec.LOOM_SPEC_VERSION,
    chunks: tuple[int, int] | None = (64, 64),
    compression: str | None = "gzip",
    compression_opts: int | None = _spec.LOOMPY_COMPRESSION_LEVEL,
) -> None:
    """Write a Loom file directly with h5py (independent of the loomx writer).

    Parameters
    ----------
    path
        Target file (overwritten).
    layers
        ``{"": matrix, "name": layer, ...}``; ``""`` is ``/matrix``.
    row_attrs, col_attrs
        Attribute arrays; strings are written per ``version`` (vlen UTF-8 for 3.0.0,
        escaped fixed-length ASCII before), bools as uint8.
    row_graphs, col_graphs
        ``{name: (a, b, w)}`` edge lists.
    global_attrs
        Written to ``/attrs`` (3.0.0) or as root attributes (older versions).
    version
        ``"3.0.0"`` or ``"2.0.1"``.
    chunks
        HDF5 chunk shape of layers (clipped to the shape), or ``None`` for contiguous.
    compression, compression_opts
        HDF5 filter of layers.

    Examples
    --------
    >>> genes = {"Gene": np.array(["a", "b", "c"])}
    >>> write_loom_h5py("t.loom", {"": np.eye(3)}, genes)  # doctest: +SKIP
    """
    legacy = not _spec.uses_vlen_utf8(version)
    matrix = np.asarray(layers[""])
    n, m = matrix.shape
    with h5py.File(path, "w") as f:
        for group in _spec.REQUIRED_GROUPS_3:
            if group != _spec.GLOBAL_ATTRS or not legacy:
                f.create_group(group)
        for name, values in layers.items():
            h5path = _spec.MATRIX if name == "" else f"{_spec.LAYERS}/{name}"
            layer_chunks = None
            if chunks is not None:
                layer_chunks = (min(chunks[0], max(n, 1)), min(chunks[1], max(m, 1)))
            f.create_dataset(
                h5path,
                data=np.asarray(values),
                chunks=layer_chunks,
                compression=compression if layer_chunks else None,
                compression_opts=compression_opts if layer_chunks and compression else None,
                maxshape=(n, None) if layer_chunks else None,
            )
        for group, attrs in ((_spec.ROW_ATTRS, row_attrs), (_spec.COL_ATTRS, col_attrs)):
            for name, values in (attrs or {}).items():
                data, dtype = _encode_attr(np.asarray(values), legacy)
                f.create_dataset(f"{group}/{name}", data=data, dtype=dtype)
        for group, graphs in ((_spec.ROW_GRAPHS, row_graphs), (_spec.COL_GRAPHS, col_graphs)):
            for name, (a, b, w) in (graphs or {}).items():
                g = f.create_group(f"{group}/{name}")
                g["a"], g["b"], g["w"] = np.asarray(a), np.asarray(b), np.asarray(w)
        globals_ = {_spec.VERSION_KEY: version, **dict(global_attrs or {})}
        for name, value in globals_.items():
            if legacy:
                f.attrs[name] = _escape(value) if isinstance(value, str) else value
            elif isinstance(value, str):
                f.create_dataset(f"{_spec.GLOBAL_ATTRS}/{name}", data=value, dtype=_UTF8)
            else:
                f.create_dataset(f"{_spec.GLOBAL_ATTRS}/{name}", data=np.asarray(value))


_UTF8 = h5py.string_dtype("utf-8")


def _escape(text: str) -> bytes:
    return text.encode("ascii", "xmlcharrefreplace")


def _encode_attr(values: np.ndarray, legacy: bool) -> tuple[np.ndarray, Any]:
    """Attribute values as the spec stores them, written here with numpy and h5py alone
    (independent of loomx's writer, so that tests can compare the two)."""
    if values.dtype.kind == "b":
        return values.astype(np.uint8), np.uint8
    if values.dtype.kind not in "OUS":
        return values, values.dtype
    texts = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.ravel()]
    if not legacy:
        return np.array(texts, dtype=object).reshape(values.shape), _UTF8
    escaped = [_escape(t) for t in texts]
    width = max((len(e) for e in escaped), default=1) or 1
    return np.array(escaped, dtype=f"S{width}").reshape(values.shape), f"S{width}"


def make_example_loom(
    path: str | os.PathLike,
    n_rows: int = 500,
    n_cols: int = 1200,
    *,
    density: float = 0.07,
    seed: int = 0,
    version: str = _spec.LOOM_SPEC_VERSION,
    chunks: tuple[int, int] | None = (64, 64),
) -> str:
    """Write a synthetic single-cell Loom file (genes x cells, counts) with every feature.

    The file has ``/matrix`` (float32 counts), layers ``spliced`` (uint16) and ``ambiguous``
    (float64), gene attributes (``Gene`` with non-ASCII names, ``Accession``, ``Selected``
    as 0/1, a 2-D ``PCs`` loading), cell attributes (``CellID``, ``ClusterID``,
    ``ClusterName``, ``Valid``, 2-D ``X_tsne``), a ``KNN`` column graph with duplicate edges
    and a ``coexpr`` row graph, and global attributes including an array.

    Returns
    -------
    str
        ``path``.
    """
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, 4, n_cols)
    rate = rng.gamma(0.6, 2.0, size=n_rows)[:, None] * (1 + clusters[None, :])
    mask = rng.random((n_rows, n_cols)) < density
    counts = np.where(mask, rng.poisson(rate + 1.0), 0).astype(np.float32)
    spliced = (counts * 0.8).astype(np.uint16)
    ambiguous = (counts * 0.1).astype(np.float64)
    greek = ["α", "β", "γ", "δ", "é", "ß"]
    genes = np.array([f"Gene{i}{greek[i % len(greek)]}" for i in range(n_rows)], dtype=object)
    k = min(5, max(n_cols - 1, 1))
    a = np.repeat(np.arange(n_cols), k)
    b = (a + rng.integers(1, n_cols, size=a.size)) % n_cols if n_cols > 1 else a.copy()
    a = np.concatenate([a, a[:3]])  # a few duplicate (multigraph) edges
    b = np.concatenate([b, b[:3]])
    w = rng.random(a.size)
    ra = np.repeat(np.arange(n_rows), 2)
    rb = (ra + 1) % n_rows
    write_loom_h5py(
        path,
        {"": counts, "spliced": spliced, "ambiguous": ambiguous},
        {
            "Gene": genes,
            "Accession": np.array([f"ENSG{i:011d}" for i in range(n_rows)], dtype=object),
            "Selected": (rng.random(n_rows) < 0.5),
            "PCs": rng.normal(size=(n_rows, 3)),
        },
        {
            "CellID": np.array([f"cell_{j}_日本" for j in range(n_cols)], dtype=object),
            "ClusterID": clusters.astype(np.int64),
            "ClusterName": np.array([f"type {c}" for c in clusters], dtype=object),
            "Valid": np.ones(n_cols, dtype=bool),
            "X_tsne": rng.normal(size=(n_cols, 2)),
        },
        col_graphs={"KNN": (a.astype(np.int64), b.astype(np.int64), w)},
        row_graphs={"coexpr": (ra, rb, np.ones(ra.size))},
        global_attrs={"Title": "loomx example: synthetic counts", "Weights": np.arange(3.0)},
        version=version,
        chunks=chunks,
    )
    return os.fspath(path)


MITO_GENES = (
    "MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3",
    "MT-ND3", "MT-ND4L", "MT-ND4", "MT-ND5", "MT-ND6", "MT-CYB",
)  # fmt: skip
"""The 13 protein-coding genes of the human mitochondrial genome."""


def make_counts_loom(
    path: str | os.PathLike,
    n_genes: int = 2000,
    n_cells: int = 3000,
    *,
    n_clusters: int = 5,
    seed: int = 0,
    dtype: Any = np.float32,
    chunks: tuple[int, int] | None = (64, 64),
) -> str:
    """Write realistic single-cell counts: negative binomial, clusters, ``MT-`` genes.

    Genes have log-normal mean expression and an over-dispersed (negative binomial)
    distribution; each cluster up-regulates its own marker genes; cells have log-normal
    library sizes; the 13 mitochondrial genes (``MT-ND1``, ...) take about 3% of the
    counts of healthy cells and 10-40% in a few damaged ones.  The file has ``Gene``,
    ``Accession`` (row) and ``CellID``, ``ClusterID``, ``ClusterName`` (column) attributes,
    in loompy's layout.

    Parameters
    ----------
    path
        Target file (overwritten).
    n_genes, n_cells
        Shape (rows x columns); ``n_genes`` must exceed the 13 mitochondrial genes.
    n_clusters
        Number of cell clusters.
    seed
        Random seed (the same file for the same arguments).
    dtype
        Stored dtype of ``/matrix`` (counts are whole numbers).
    chunks
        HDF5 chunk shape.

    Returns
    -------
    str
        ``path``.

    Examples
    --------
    >>> make_counts_loom("pbmc_like.loom", 2000, 3000)  # doctest: +SKIP
    'pbmc_like.loom'
    """
    n_mito = len(MITO_GENES)
    if n_genes <= n_mito:
        raise ValueError(f"n_genes must exceed {n_mito} (the mitochondrial genes)")
    rng = np.random.default_rng(seed)
    clusters = np.sort(rng.integers(0, n_clusters, n_cells))
    base = rng.lognormal(mean=-1.5, sigma=1.5, size=n_genes)
    markers = rng.integers(0, n_clusters, n_genes)
    boost = np.where(rng.random(n_genes) < 0.1, rng.lognormal(1.5, 0.5, n_genes), 1.0)
    library = rng.lognormal(mean=0.0, sigma=0.4, size=n_cells)
    mito_share = np.where(rng.random(n_cells) < 0.05, rng.uniform(0.1, 0.4, n_cells), 0.03)
    dispersion = 0.3
    counts = np.empty((n_genes, n_cells), dtype=dtype)
    for start in range(0, n_cells, 1024):
        stop = min(start + 1024, n_cells)
        in_cluster = markers[:, None] == clusters[None, start:stop]
        mu = base[:, None] * np.where(in_cluster, boost[:, None], 1.0) * library[None, start:stop]
        nuclear = mu[n_mito:].sum(axis=0)
        share = mito_share[start:stop]
        mu[:n_mito] = (nuclear * share / (1 - share))[None, :] / n_mito
        shape = 1 / dispersion
        counts[:, start:stop] = rng.poisson(rng.gamma(shape, mu / shape))
    genes = [*MITO_GENES, *(f"GENE{i}" for i in range(n_mito, n_genes))]
    names = np.array([f"type {c}" for c in clusters], dtype=object)
    write_loom_h5py(
        path,
        {"": counts},
        {
            "Gene": np.array(genes, dtype=object),
            "Accession": np.array([f"ENSG{i:011d}" for i in range(n_genes)], dtype=object),
        },
        {
            "CellID": np.array([f"cell{j:06d}-1" for j in range(n_cells)], dtype=object),
            "ClusterID": clusters.astype(np.int64),
            "ClusterName": names,
        },
        global_attrs={"Title": "loomx example: negative-binomial counts"},
        chunks=chunks,
    )
    return os.fspath(path)

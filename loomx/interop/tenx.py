"""10x Genomics matrices (Cell Ranger ``.h5`` and the MEX folder) as lazy Loom Datasets.

Nothing here densifies the whole matrix: each dask block of ``matrix`` is a band of whole
cells made dense from the sparse data only when that block is computed (from the ``.h5``
file, a band's slice of ``data``/``indices`` is read then).  Attributes are named as loompy
names them: ``CellID`` (the barcode), ``Gene`` (the symbol) and ``Accession`` (the
Ensembl id) and, where the file has them, ``FeatureType`` and ``Genome``.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import h5py
import numpy as np
import scipy.io
import scipy.sparse
import xarray as xr

from loomx._format import names as conv
from loomx._hdf5.files import open_h5
from loomx._read import chunking as _chunking
from loomx.errors import LoomFileNotFoundError, LoomFormatError

__all__ = ["dense_bands", "is_10x_h5", "read_10x_h5", "read_10x_mex"]

FEATURE_NAMES = {
    "id": "Accession",
    "name": "Gene",
    "feature_type": "FeatureType",
    "genome": "Genome",
}
"""Cell Ranger v3 feature fields and the attributes loompy names them; a probe-based
matrix (``gene_id`` present) has its gene id as ``Accession`` and ``id`` as ``ProbeID``.
Other fields keep their own names."""


def dense_bands(
    read: Callable[[int, int], np.ndarray], shape: tuple[int, int], dtype: Any
) -> da.Array:
    """A ``(rows, cols)`` dask array whose blocks are full-height bands of columns,
    ``read(start, stop)`` giving the dense band of columns ``start:stop`` when computed.

    Bands hold about :func:`~loomx._read.chunking.block_bytes` each
    (:func:`~loomx._read.chunking.band_width`).
    """
    n_rows, n_cols = shape
    dtype = np.dtype(dtype)
    width = _chunking.band_width(n_rows, dtype.itemsize)
    reader = dask.delayed(read, pure=False)  # one key: sent once to a cluster, not per band
    parts = [
        da.from_delayed(
            dask.delayed(_call, pure=True)(reader, start, min(start + width, n_cols)),
            (n_rows, min(start + width, n_cols) - start),
            dtype=dtype,
        )
        for start in range(0, n_cols, width)
    ]
    if not parts:
        return da.zeros((n_rows, 0), dtype=dtype)
    return da.concatenate(parts, axis=1)


def _call(read: Callable[[int, int], np.ndarray], start: int, stop: int) -> np.ndarray:
    return read(start, stop)


def is_10x_h5(path: str) -> bool:
    """Whether ``path`` is an HDF5 file laid out as Cell Ranger's (v3 ``/matrix`` group with
    ``data``, ``indices``, ``indptr``; or v2, one such group per genome)."""
    try:
        with h5py.File(path, "r") as f:
            return _matrix_group(f) is not None
    except OSError:
        return False


def _matrix_group(f: h5py.File) -> str | None:
    groups = _matrix_groups(f)
    return groups[0] if groups else None


def _matrix_groups(f: h5py.File) -> list[str]:
    """The groups holding a CSC matrix (v3: ``matrix``; v2: one per genome), sorted."""
    return sorted(
        name
        for name, item in f.items()
        if isinstance(item, h5py.Group) and {"data", "indices", "indptr", "shape"} <= set(item)
    )


def _genome_group(f: h5py.File, path: str, genome: str | None) -> str:
    """The group to read: v3's ``matrix``, or the v2 group of ``genome`` (which may be left
    out when the file holds one)."""
    groups = _matrix_groups(f)
    if not groups:
        raise LoomFormatError(
            "no group holding data, indices, indptr and shape; expected a Cell Ranger "
            ".h5 matrix (/matrix in v3, /<genome> in v2)",
            path=path,
            h5path="/",
        )
    if "matrix" in groups and "features" in f["matrix"]:  # v3: genomes are a feature column
        return "matrix"
    if genome is None and len(groups) > 1:
        raise LoomFormatError(
            f"found the genomes {groups}; expected one, or the one to read named "
            "(genome=... in Python, loomx convert --genome NAME)",
            path=path,
            h5path="/",
        )
    if genome is not None and genome not in groups:
        raise LoomFormatError(
            f"no genome {genome!r}; found the genomes {groups}", path=path, h5path="/"
        )
    return groups[0] if genome is None else genome


def _text(values: np.ndarray) -> np.ndarray:
    return np.array(
        [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object
    )


class _H5Band:
    """Reads columns ``start:stop`` (cells) of a Cell Ranger ``.h5`` as a dense band; a
    picklable recipe (path and group), so that it runs in worker processes too."""

    def __init__(
        self,
        path: str,
        group: str,
        n_genes: int,
        dtype: np.dtype,
        rows: np.ndarray | None = None,
    ) -> None:
        self.path, self.group, self.n_genes, self.dtype = path, group, n_genes, dtype
        self.rows = rows  # the genes kept (those of one genome), None for all

    def __call__(self, start: int, stop: int) -> np.ndarray:
        with open_h5(self.path, "r") as f:
            g = f[self.group]
            indptr = g["indptr"][start : stop + 1].astype(np.int64)
            lo, hi = int(indptr[0]), int(indptr[-1])
            data, indices = g["data"][lo:hi], g["indices"][lo:hi]
        band = scipy.sparse.csc_matrix(
            (data, indices, indptr - lo), shape=(self.n_genes, stop - start)
        )
        if self.rows is not None:
            band = band[self.rows]
        return band.toarray().astype(self.dtype, copy=False)


def read_10x_h5(
    path: str | os.PathLike[str], genome: str | None = None, feature_type: str | None = None
) -> xr.Dataset:
    """A Cell Ranger ``filtered_feature_bc_matrix.h5`` (v3, or v2) as a lazy Loom Dataset
    (genes x cells).

    Parameters
    ----------
    path
        The ``.h5`` file.
    genome
        Read only this genome's features: the v2 group of that name (needed when a v2 file
        holds several), or the v3 features whose ``genome`` is this.  ``None``: every
        feature of a v3 file, the only genome of a v2 file.
    feature_type
        Read only the features of this type (``"Gene Expression"`` or ``"Peaks"`` of a
        Cell Ranger ARC file); ``None``: every feature, its type in ``FeatureType``.

    Every field of ``features`` becomes a row attribute (``id`` ``Accession``, ``name``
    ``Gene``, ``feature_type`` ``FeatureType``, ``genome`` ``Genome``, others by their
    own names); in a probe-based matrix (Visium, Flex ``raw_probe_bc_matrix.h5``)
    ``Accession`` is ``gene_id`` and the probe id is ``ProbeID``.  Per-barcode fields
    (``filtered_barcodes``) become column attributes.

    Raises
    ------
    LoomFileNotFoundError
        ``path`` does not exist.
    LoomFormatError
        Not a Cell Ranger matrix; a v2 file of several genomes and no ``genome``; a
        ``genome`` or ``feature_type`` the file does not hold.

    Examples
    --------
    >>> ds = read_10x_h5("filtered_feature_bc_matrix.h5")  # doctest: +SKIP
    >>> loomx.to_loom(ds, "sample.loom")  # doctest: +SKIP
    >>> mouse = read_10x_h5("barnyard_v2.h5", genome="mm10")  # doctest: +SKIP
    """
    path = os.fspath(path)
    rows: np.ndarray | None = None
    with open_h5(path, "r") as f:
        group = _genome_group(f, path, genome)
        g = f[group]
        n_genes, n_cells = (int(x) for x in g["shape"][()])
        dtype = g["data"].dtype
        if len(g["indptr"]) != n_cells + 1:
            raise LoomFormatError(
                f"{len(g['indptr'])} entries; expected shape[1] + 1 = {n_cells + 1} (CSC)",
                path=path,
                h5path=f"/{group}/indptr",
            )
        col_attrs: dict[str, np.ndarray] = {}
        if "features" in g:  # v3
            row_attrs = _feature_fields(g["features"], path)
            for key, dset in g.items():  # probe-based files: filtered_barcodes
                per_barcode = isinstance(dset, h5py.Dataset) and dset.shape == (n_cells,)
                if per_barcode and key not in ("barcodes", "indptr", "data", "indices"):
                    col_attrs[key] = _field(dset)
            if genome is not None:
                rows = _genome_rows(row_attrs.get("Genome"), genome, path, f"/{group}")
        else:  # v2
            row_attrs = {
                "Accession": _text(g["genes"][()]),
                "Gene": _text(g["gene_names"][()]),
            }
        if feature_type is not None:
            kept = _feature_type_rows(row_attrs.get("FeatureType"), feature_type, path, group)
            rows = kept if rows is None else np.intersect1d(rows, kept)
        if rows is not None:
            row_attrs = {name: values[rows] for name, values in row_attrs.items()}
        barcodes = _text(g["barcodes"][()])
    band = _H5Band(path, group, n_genes, dtype, rows)
    n_rows = n_genes if rows is None else len(rows)
    matrix = dense_bands(band, (n_rows, n_cells), dtype)
    return _dataset(matrix, row_attrs, barcodes, col_attrs)


def _field(dset: h5py.Dataset) -> np.ndarray:
    values = dset[()]
    return _text(values) if values.dtype.kind in "SOU" else values


def _feature_fields(features: h5py.Group, path: str) -> dict[str, np.ndarray]:
    """Every field of a v3 ``features`` group, named as :data:`FEATURE_NAMES` says."""
    out: dict[str, np.ndarray] = {}
    probes = "gene_id" in features
    for key, dset in features.items():
        if not isinstance(dset, h5py.Dataset) or key == "_all_tag_keys":
            continue  # target_sets: a group of probe indices, not a per-feature field
        if dset.shape != features["id"].shape:
            raise LoomFormatError(
                f"found shape {dset.shape}; expected {features['id'].shape} as features/id",
                path=path,
                h5path=dset.name,
            )
        name = FEATURE_NAMES.get(key, key)
        if probes and key in ("id", "gene_id"):
            name = "ProbeID" if key == "id" else "Accession"
        out[name] = _field(dset)
    return out


def _feature_type_rows(
    types: np.ndarray | None, feature_type: str, path: str, group: str
) -> np.ndarray:
    """The features of one type (Cell Ranger ARC: Gene Expression or Peaks)."""
    found = sorted(set(types)) if types is not None else []
    if feature_type not in found:
        raise LoomFormatError(
            f"no feature of type {feature_type!r}; found the feature types {found}",
            path=path,
            h5path=f"/{group}/features/feature_type" if group else None,
        )
    return np.flatnonzero(types == feature_type)


def _genome_rows(genomes: np.ndarray | None, genome: str, path: str, group: str) -> np.ndarray:
    """The v3 features of ``genome``; a clear error when there are none."""
    h5path = f"{group}/features/genome"
    if genomes is None:
        raise LoomFormatError(
            f"no genome of each feature; expected one to select genome {genome!r}",
            path=path,
            h5path=h5path,
        )
    rows = np.flatnonzero(genomes == genome)
    if not len(rows):
        raise LoomFormatError(
            f"no feature of genome {genome!r}; found the genomes {sorted(set(genomes))}",
            path=path,
            h5path=h5path,
        )
    return rows


def _dataset(
    matrix: Any,
    row_attrs: dict[str, np.ndarray],
    barcodes: np.ndarray,
    col_attrs: dict[str, np.ndarray] | None = None,
) -> xr.Dataset:
    row, col = conv.DEFAULT_DIMS
    coords = {name: (row, values) for name, values in row_attrs.items()}
    coords["CellID"] = (col, barcodes)
    coords.update({name: (col, values) for name, values in (col_attrs or {}).items()})
    ds = xr.Dataset({"matrix": ((row, col), matrix)}, coords=coords)
    ds.encoding["loom_dims"] = (row, col)
    return ds


def _open_text(folder: str, names: tuple[str, ...]) -> tuple[str, list[str]]:
    for name in names:
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(candidate, "rt", encoding="utf-8") as fh:
                return candidate, [line.rstrip("\n") for line in fh if line.strip()]
    raise LoomFormatError(f"none of {', '.join(names)}; expected a 10x MEX folder", path=folder)


def read_10x_mex(folder: str | os.PathLike[str], feature_type: str | None = None) -> xr.Dataset:
    """A 10x MEX folder (``matrix.mtx.gz``, ``features.tsv.gz``, ``barcodes.tsv.gz``; or
    the v2 layout with ``matrix.mtx``, ``genes.tsv``, ``barcodes.tsv``) as a Loom Dataset.

    The non-zeros are held in memory as a sparse matrix; ``matrix`` is made dense one band
    of cells at a time.  ``feature_type`` keeps only the features of that type (the third
    column of ``features.tsv.gz``).

    Raises
    ------
    LoomFileNotFoundError
        ``folder`` does not exist.
    LoomFormatError
        A file of the layout is missing, or the files do not fit together.

    Examples
    --------
    >>> ds = read_10x_mex("filtered_feature_bc_matrix")  # doctest: +SKIP
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise LoomFileNotFoundError("no such folder; expected a 10x MEX folder", path=folder)
    mtx = None
    for name in ("matrix.mtx.gz", "matrix.mtx"):
        if os.path.exists(os.path.join(folder, name)):
            mtx = os.path.join(folder, name)
            break
    if mtx is None:
        raise LoomFormatError(
            "no matrix.mtx.gz or matrix.mtx; expected a 10x MEX folder", path=folder
        )
    _, features = _open_text(
        folder, ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
    )
    _, barcodes = _open_text(folder, ("barcodes.tsv.gz", "barcodes.tsv"))
    try:
        matrix = scipy.sparse.csc_matrix(scipy.io.mmread(mtx))
    except (ValueError, OSError) as exc:
        raise LoomFormatError(f"not a Matrix Market file: {exc}", path=mtx) from None
    n_genes, n_cells = matrix.shape
    columns = [line.split("\t") for line in features]
    if len(columns) != n_genes or len(barcodes) != n_cells:
        raise LoomFormatError(
            f"{len(columns)} features and {len(barcodes)} barcodes; expected {n_genes} and "
            f"{n_cells} (the shape of {os.path.basename(mtx)})",
            path=folder,
        )
    row_attrs = {
        "Accession": np.array([c[0] for c in columns], dtype=object),
        "Gene": np.array([c[1] if len(c) > 1 else c[0] for c in columns], dtype=object),
    }
    if all(len(c) > 2 for c in columns):
        row_attrs["FeatureType"] = np.array([c[2] for c in columns], dtype=object)
    if feature_type is not None:
        rows = _feature_type_rows(row_attrs.get("FeatureType"), feature_type, folder, "")
        row_attrs = {name: values[rows] for name, values in row_attrs.items()}
        matrix = matrix[rows]
    dtype = np.dtype(np.int32) if matrix.dtype.kind in "iu" else np.dtype(np.float32)
    if matrix.dtype.kind == "f" and np.any(matrix.data != np.round(matrix.data)):
        dtype = np.dtype(np.float64)
    bands = dense_bands(_SparseBand(matrix, dtype), matrix.shape, dtype)
    return _dataset(bands, row_attrs, np.array(barcodes, dtype=object))


class _SparseBand:
    """Columns ``start:stop`` of a CSC matrix, dense."""

    def __init__(self, matrix: scipy.sparse.csc_matrix, dtype: np.dtype) -> None:
        self.matrix, self.dtype = matrix, dtype

    def __call__(self, start: int, stop: int) -> np.ndarray:
        return self.matrix[:, start:stop].toarray().astype(self.dtype, copy=False)

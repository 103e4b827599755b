"""Streaming ``.h5ad`` input: ``X`` and ``layers`` read one band of cells at a time straight
from the file (dense, CSR or CSC, as anndata stores them), never the whole matrix in memory;
``obs``, ``var``, ``obsm``, ``varm``, ``obsp``, ``varp`` and ``uns`` through anndata's own
``read_elem``.
"""

from __future__ import annotations

import os
from typing import Any

import dask.array as da
import h5py
import numpy as np
import scipy.sparse

from loomx._hdf5.files import open_h5
from loomx.errors import LoomFileError, LoomFileNotFoundError, LoomFormatError
from loomx.interop.tenx import dense_bands

__all__ = ["CSC_ENTRIES", "read_h5ad_lazy", "stored_matrix"]

CSC_ENTRIES = 4 * 1024 * 1024
"""Non-zeros of a CSC matrix read at a time while a band of cells is gathered from it."""

_ELEMENTS = ("obs", "var", "obsm", "varm", "obsp", "varp", "uns")


def _encoding(obj: h5py.Group | h5py.Dataset) -> str:
    value = obj.attrs.get("encoding-type", "array" if isinstance(obj, h5py.Dataset) else "")
    return value.decode() if isinstance(value, bytes) else str(value)


class _H5adBand:
    """Cells ``start:stop`` of a stored cells x genes matrix as a dense genes x cells band; a
    picklable recipe (path and HDF5 path), so that it runs in worker processes too."""

    def __init__(self, path: str, h5path: str, kind: str, shape: tuple[int, int], dtype: Any):
        self.path, self.h5path, self.kind = path, h5path, kind
        self.shape, self.dtype = shape, np.dtype(dtype)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        n_genes = self.shape[1]
        with open_h5(self.path, "r") as f:
            obj = f[self.h5path]
            if self.kind == "array":
                return np.ascontiguousarray(obj[start:stop].T).astype(self.dtype, copy=False)
            if self.kind == "csr_matrix":
                indptr = obj["indptr"][start : stop + 1].astype(np.int64)
                lo, hi = int(indptr[0]), int(indptr[-1])
                band = scipy.sparse.csr_matrix(
                    (obj["data"][lo:hi], obj["indices"][lo:hi], indptr - lo),
                    shape=(stop - start, n_genes),
                )
                return band.toarray().T.astype(self.dtype, copy=False)
            return self._from_csc(obj, start, stop)

    def _from_csc(self, obj: h5py.Group, start: int, stop: int) -> np.ndarray:
        """A band of cells from a CSC (genes as columns) matrix: every gene's entries are
        scanned, :data:`CSC_ENTRIES` at a time, and those of the band's cells kept."""
        out = np.zeros((self.shape[1], stop - start), dtype=self.dtype)
        indptr = obj["indptr"][()].astype(np.int64)
        gene = 0
        while gene < self.shape[1]:
            limit = indptr[gene] + CSC_ENTRIES
            last = max(gene + 1, int(np.searchsorted(indptr, limit, side="right")) - 1)
            last = min(last, self.shape[1])
            lo, hi = int(indptr[gene]), int(indptr[last])
            cells = obj["indices"][lo:hi]
            genes = np.repeat(np.arange(gene, last), np.diff(indptr[gene : last + 1]))
            keep = (cells >= start) & (cells < stop)
            if keep.any():
                out[genes[keep], cells[keep] - start] = obj["data"][lo:hi][keep]
            gene = last
        return out


def stored_matrix(path: str, f: h5py.File, h5path: str) -> da.Array:
    """The stored cells x genes matrix at ``h5path`` as a lazy genes x cells dask array of
    full-height bands of cells (:func:`loomx.interop.tenx.dense_bands`)."""
    obj = f[h5path]
    kind = _encoding(obj)
    if kind == "array" and isinstance(obj, h5py.Dataset) and obj.ndim == 2:
        shape, dtype = (int(obj.shape[0]), int(obj.shape[1])), obj.dtype
    elif kind in ("csr_matrix", "csc_matrix") and isinstance(obj, h5py.Group):
        shape = tuple(int(x) for x in obj.attrs["shape"])
        dtype = obj["data"].dtype
    else:
        raise LoomFormatError(
            f"found encoding {kind!r}; expected a 2-D array, csr_matrix or csc_matrix",
            path=path,
            h5path=obj.name,
        )
    if dtype.kind not in "biuf":
        raise LoomFormatError(f"found dtype {dtype}; expected numbers", path=path, h5path=obj.name)
    dtype = np.dtype(np.uint8) if dtype.kind == "b" else dtype
    band = _H5adBand(path, obj.name, kind, shape, dtype)
    return dense_bands(band, (shape[1], shape[0]), dtype)


def read_h5ad_lazy(path: str | os.PathLike[str]) -> Any:
    """An :class:`anndata.AnnData` of an ``.h5ad`` file whose ``X`` and ``layers`` are lazy
    dask arrays read in bands of cells; the other elements are read by anndata.

    Raises
    ------
    LoomFileNotFoundError
        ``path`` does not exist.
    LoomFileError
        ``path`` is not an HDF5 file.

    Examples
    --------
    >>> adata = read_h5ad_lazy("pbmc.h5ad")  # doctest: +SKIP
    >>> loomx.to_loom(loomx.from_anndata(adata), "pbmc.loom")  # doctest: +SKIP
    """
    import anndata

    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LoomFileNotFoundError("no such file; expected an AnnData .h5ad file", path=path)
    try:
        f = open_h5(path, "r")
    except OSError as err:
        raise LoomFileError(f"cannot be read as an AnnData .h5ad file ({err})", path=path) from err
    with f:
        parts = {key: read_elem(f[key]) for key in _ELEMENTS if key in f}
        x = stored_matrix(path, f, "X").T if "X" in f else None
        layers = f.get("layers")
        lazy = {str(k): stored_matrix(path, f, f"layers/{k}").T for k in (layers or {})}
    return anndata.AnnData(X=x, layers=lazy, **parts)

"""File conversions (Loom, h5ad, 10x) and aggregation into a new file, for
``loomx convert`` and ``loomx aggregate``.
"""

from __future__ import annotations

import os
from typing import Any

import scipy.sparse
import xarray as xr

from loomx._format import names as conv
from loomx._read.backend import open_loom
from loomx._write.writer import to_loom
from loomx.errors import LoomFormatError
from loomx.interop.anndata import from_anndata, to_anndata
from loomx.interop.h5ad import read_h5ad_lazy
from loomx.interop.tenx import is_10x_h5, read_10x_h5, read_10x_mex

__all__ = ["aggregate_file", "convert", "read_any"]


def read_any(
    path: str | os.PathLike[str], genome: str | None = None, feature_type: str | None = None
) -> xr.Dataset:
    """A Loom Dataset from a ``.loom``, ``.h5ad``, Cell Ranger ``.h5`` or 10x MEX folder.

    ``genome`` and ``feature_type`` pick the features of a 10x input (see
    :func:`loomx.interop.tenx.read_10x_h5`); other inputs refuse them.

    Raises
    ------
    LoomFileNotFoundError
        ``path`` does not exist.
    LoomFileError
        An ``.h5ad`` file that is not HDF5.

    Examples
    --------
    >>> ds = read_any("filtered_feature_bc_matrix.h5")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if genome is not None:
            raise LoomFormatError("a MEX folder holds one genome; genome applies to .h5", path=path)
        return read_10x_mex(path, feature_type=feature_type)
    if path.endswith(".h5") and is_10x_h5(path):
        return read_10x_h5(path, genome=genome, feature_type=feature_type)
    if genome is not None or feature_type is not None:
        raise LoomFormatError(
            "genome and feature_type pick the features of 10x input; this is not a 10x "
            "matrix (.h5 or MEX folder)",
            path=path,
        )
    if path.endswith(".h5ad"):
        return from_anndata(read_h5ad_lazy(path))
    return open_loom(path)


def convert(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    progress: bool = False,
    *,
    genome: str | None = None,
    feature_type: str | None = None,
) -> tuple[int, int]:
    """Convert ``source`` (see :func:`read_any`, which takes ``genome`` and
    ``feature_type``) to ``target`` (``.loom`` or ``.h5ad``).

    Loom targets are written block by block by :func:`loomx.to_loom` (never the whole
    matrix dense in memory); ``.h5ad`` targets get sparse (CSR) ``X`` and layers, read
    block by block.  Returns the (genes, cells) shape.

    Examples
    --------
    >>> convert("filtered_feature_bc_matrix.h5", "sample.loom")  # doctest: +SKIP
    (33538, 5025)
    """
    target = os.fspath(target)
    if not target.endswith((".loom", ".h5ad")):
        raise LoomFormatError(f"target {target!r} must end in .loom or .h5ad")
    ds = read_any(source, genome=genome, feature_type=feature_type)
    shape = (ds.sizes[conv.dataset_dims(ds)[0]], ds.sizes[conv.dataset_dims(ds)[1]])
    with _progress(progress):
        if target.endswith(".h5ad"):
            adata = to_anndata(ds)  # written sparse: only the non-zeros are ever held
            adata.X = _cells_by_genes(ds, "matrix")
            for name in list(adata.layers):
                adata.layers[name] = _cells_by_genes(ds, name)
            adata.write_h5ad(target)
        else:
            to_loom(ds, target)
    ds.close()
    return shape


def _cells_by_genes(ds: xr.Dataset, layer: str) -> scipy.sparse.csr_matrix:
    return scipy.sparse.csr_matrix(ds.loom.to_scipy(layer, "csc").T)


def _progress(show: bool) -> Any:
    import contextlib

    if not show:
        return contextlib.nullcontext()
    from dask.diagnostics import ProgressBar

    return ProgressBar()


def aggregate_file(
    path: str | os.PathLike[str],
    target: str | os.PathLike[str],
    by: str,
    func: str = "mean",
    enrichment: bool = False,
) -> tuple[int, int]:
    """Write a Loom file with one column per group of column attribute ``by`` (see
    :func:`loomx.ops.operations.aggregate`); row attributes are kept, ``by`` holds the groups.

    With ``enrichment``, the file also gets cytograph's layer ``enrichment``: the score of
    every gene in every group, from the main matrix (see :func:`loomx.ops.operations.enrichment`).

    Examples
    --------
    >>> aggregate_file("pbmc.loom", "out.loom", "ClusterID", enrichment=True)  # doctest: +SKIP
    """
    with open_loom(path) as ds:
        row, col = conv.dataset_dims(ds)
        out = ds.loom.aggregate(by, func)
        if enrichment:
            if "enrichment" in out:
                raise LoomFormatError(
                    "found a layer here; the enrichment layer needs its name",
                    path=path,
                    h5path="/layers/enrichment",
                )
            out["enrichment"] = ds.loom.enrichment(by, col)
        groups = out[by].values
        out = out.drop_vars(by).rename_dims({by: col})
        out = out.assign_coords({by: (col, groups)})
        keep = {
            name
            for name, v in out.coords.items()
            if v.dims and v.dims[0] == row and conv.parse_graph_var(str(name)) is None
        }
        out = out.drop_vars([n for n in out.coords if n not in keep and n != by])
        out.attrs = dict(ds.attrs)
        out.encoding["loom_dims"] = (row, col)
        to_loom(out, target)
        return out.sizes[row], out.sizes[col]

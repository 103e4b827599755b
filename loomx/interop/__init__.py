"""Loom Datasets to and from other tools: AnnData (:mod:`loomx.interop.anndata`), 10x
Genomics matrices (:mod:`loomx.interop.tenx`), in-memory arrays
(:mod:`loomx.interop.arrays`), and whole-file conversions (:mod:`loomx.interop.conversion`).

Examples
--------
>>> from loomx.interop import convert
>>> convert("filtered_feature_bc_matrix.h5", "pbmc.loom")  # doctest: +SKIP
"""

from loomx.interop.anndata import from_anndata, to_anndata
from loomx.interop.arrays import from_arrays
from loomx.interop.conversion import aggregate_file, convert, read_any
from loomx.interop.tenx import read_10x_h5, read_10x_mex

__all__ = [
    "aggregate_file",
    "convert",
    "from_anndata",
    "from_arrays",
    "read_10x_h5",
    "read_10x_mex",
    "read_any",
    "to_anndata",
]

"""``loomx.pp``: scanpy's preprocessing names on Loom Datasets, out of core.

Examples
--------
>>> import loomx
>>> ds = loomx.open_loom("pbmc.loom")  # doctest: +SKIP
>>> ds = loomx.pp.log1p(loomx.pp.normalize_total(ds, target_sum=1e4))  # doctest: +SKIP
"""

from loomx.analysis.embedding import neighbors
from loomx.analysis.hvg import highly_variable_genes
from loomx.analysis.pca import pca
from loomx.analysis.preprocess import (
    calculate_qc_metrics,
    filter_genes,
    log1p,
    mark_outliers,
    median_total,
    normalize_total,
    scale,
)

__all__ = [
    "calculate_qc_metrics",
    "filter_genes",
    "highly_variable_genes",
    "log1p",
    "mark_outliers",
    "median_total",
    "neighbors",
    "normalize_total",
    "pca",
    "scale",
]

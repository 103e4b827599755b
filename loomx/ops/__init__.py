"""Operations on Loom Datasets: loompy's scan, map (:func:`map_vectors`), permute and
aggregate as dask graphs (:mod:`loomx.ops.operations`), scanpy's quality-control metrics in
one read (:mod:`loomx.ops.qc`), minibatches of cells for training (:mod:`loomx.ops.loader`),
and the ``ds.loom`` accessor that exposes them and the
graphs (:mod:`loomx.ops.accessor`).

Examples
--------
>>> import loomx
>>> from loomx.ops import aggregate
>>> ds = loomx.open_loom("pbmc.loom")  # doctest: +SKIP
>>> means = aggregate(ds, by="ClusterID", func="mean")  # doctest: +SKIP
"""

from loomx.ops import accessor as _accessor  # noqa: F401  (registers ds.loom)
from loomx.ops.loader import BatchLoader, batches
from loomx.ops.operations import (
    AGGREGATIONS,
    aggregate,
    enrichment,
    map_vectors,
    permute,
    scan,
    to_scipy,
)
from loomx.ops.qc import assign_qc, calculate_qc_metrics, qc_file

__all__ = [
    "AGGREGATIONS",
    "BatchLoader",
    "aggregate",
    "assign_qc",
    "batches",
    "calculate_qc_metrics",
    "enrichment",
    "map_vectors",
    "permute",
    "qc_file",
    "scan",
    "to_scipy",
]

"""``loomx.tl``: scanpy's tools on Loom Datasets (clusters, embeddings, marker genes).

Examples
--------
>>> import loomx
>>> ds = loomx.tl.umap(loomx.tl.leiden(ds))  # doctest: +SKIP
"""

from loomx.analysis.embedding import leiden, umap

__all__ = ["leiden", "umap"]

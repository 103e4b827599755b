"""``loomx.tl``: scanpy's tools on Loom Datasets (clusters, embeddings, marker genes).

Examples
--------
>>> import loomx
>>> ds = loomx.tl.umap(loomx.tl.leiden(ds))  # doctest: +SKIP
"""

from loomx.analysis.embedding import leiden, umap
from loomx.analysis.markers import rank_genes_groups, top_genes

__all__ = ["leiden", "rank_genes_groups", "top_genes", "umap"]

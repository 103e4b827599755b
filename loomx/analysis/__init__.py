"""Analysis steps on Loom Datasets under scanpy's names: preprocessing (:mod:`loomx.pp`)
and tools (:mod:`loomx.tl`), each a lazy step that reads a layer band by band and adds
layers and Loom attributes.

Examples
--------
>>> import loomx
>>> ds = loomx.pp.normalize_total(loomx.open_loom("pbmc.loom"))  # doctest: +SKIP
"""

from loomx.analysis import pp, tl

__all__ = ["pp", "tl"]

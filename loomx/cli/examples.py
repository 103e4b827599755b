"""The example that each ``loomx COMMAND --help`` ends with (its ``epilog``).

A new subcommand adds its entry here; ``tests/cli/test_examples.py`` checks that every
subcommand has one.

Examples
--------
>>> print(EXAMPLES["info"].splitlines()[0])
example:
"""

from __future__ import annotations

__all__ = ["EXAMPLES"]

EXAMPLES: dict[str, str] = {
    "qc": """example:
  loomx qc pbmc.loom                          # metrics into pbmc.loom
  loomx qc pbmc.loom --mito-prefix mt-        # mouse genes
  loomx qc https://host/pbmc.loom -o pbmc.loom --no-mito""",
    "info": """example:
  loomx info pbmc.loom
  loomx info pbmc.loom --json | jq .layers""",
    "validate": """example:
  loomx validate pbmc.loom --conventions""",
    "convert": """example:
  loomx convert filtered_feature_bc_matrix.h5 sample.loom
  loomx convert pbmc.h5ad pbmc.loom
  loomx convert multiple_genomes.h5 hg19.loom --genome hg19""",
    "aggregate": """example:
  loomx aggregate pbmc.loom clusters.loom --by ClusterID --func mean""",
    "example": """example:
  loomx example --counts pbmc.loom --genes 2000 --cells 3000""",
    "recover": """example:
  loomx recover pbmc.loom      # after a write was killed""",
    "delete": """example:
  loomx delete pbmc.loom spliced col_graphs:KNN
  loomx repack pbmc.loom       # gives the space back""",
    "repack": """example:
  loomx repack pbmc.loom small.loom""",
    "process": """example:
  loomx process pbmc.loom                     # QC to marker genes, results into pbmc.loom
  loomx process pbmc.loom --n-top-genes 3000 --resolution 0.5   # redoes what changed""",
}
"""Subcommand -> the text shown after its options in ``--help``."""

"""Write `pyscenic_export2loom.loom` with pySCENIC's own `export2loom`.

Run in an environment with pySCENIC 0.12.1 (its pins clash with loomx's: numpy 1.23,
pandas 1.5, dask 2023), from this folder:

    python make_pyscenic_export2loom.py

The versions it ran with are printed and kept in `pyscenic_export2loom.versions.txt`.
The content is deterministic (fixed seeds; the AUC matrix and thresholds are given, so
neither AUCell nor binarization runs); the file holds a creation date.
"""

from __future__ import annotations

import importlib.metadata as metadata

import numpy as np
import pandas as pd
from ctxcore.genesig import Regulon
from pyscenic.export import export2loom

OUT = "pyscenic_export2loom.loom"
PACKAGES = ("pyscenic", "ctxcore", "loompy", "h5py", "numpy", "pandas")


def main() -> None:
    rng = np.random.default_rng(0)
    cells = [f"cell{i}" for i in range(60)]
    genes = [f"Gene{i}" for i in range(40)]
    ex_mtx = pd.DataFrame(rng.poisson(2.0, (60, 40)).astype(float), index=cells, columns=genes)
    regulons = [
        Regulon(
            name=f"{tf} (+)",
            gene2weight={
                g: float(w) for g, w in zip(targets, rng.random(len(targets)), strict=True)
            },
            transcription_factor=tf,
            gene2occurrence=[],
        )
        for tf, targets in (("Gene0", genes[1:9]), ("Gene5", genes[6:20]), ("Gene9", genes[20:31]))
    ]
    names = [r.name for r in regulons]
    auc_mtx = pd.DataFrame(rng.random((60, 3)), index=cells, columns=names)
    thresholds = pd.Series([0.3, 0.5, 0.7], index=names)
    embeddings = {
        "UMAP": pd.DataFrame(rng.normal(size=(60, 2)), index=cells, columns=["_X", "_Y"]),
        "tSNE": pd.DataFrame(rng.normal(size=(60, 2)), index=cells, columns=["_X", "_Y"]),
    }
    annotations = dict(zip(cells, rng.choice(["T cell", "B cell", "NK"], 60), strict=True))
    export2loom(
        ex_mtx,
        regulons,
        OUT,
        cell_annotations=annotations,
        title="loomx conformance fixture",
        nomenclature="HGNC",
        num_workers=1,
        embeddings=embeddings,
        auc_mtx=auc_mtx,
        auc_thresholds=thresholds,
    )
    versions = "\n".join(f"{p}=={metadata.version(p)}" for p in PACKAGES)
    with open("pyscenic_export2loom.versions.txt", "w") as fh:
        fh.write(versions + "\n")
    print(versions)


if __name__ == "__main__":
    main()

"""Check that pySCENIC's and loomxpy's own readers see a copy as the original.

Run in the environment of `make_pyscenic_export2loom.py` with loomxpy 0.4.2 added, on a
file and a copy that loomx wrote (for example with `loomx convert ORIGINAL COPY`):

    python check_with_producers.py ORIGINAL.loom COPY.loom

pySCENIC reads regulons, AUC values, embeddings and clusterings with loompy
(`pd.DataFrame(ds.ca.RegulonsAUC, index=ds.ca.CellID)`) and the matrix with
`pyscenic.cli.utils.load_exp_matrix_as_loom`; loomxpy's `SCopeLoom.read_loom` reads every
embedding by its id (`Embeddings_X[str(id)]`).  Exits non-zero at the first difference.
"""

from __future__ import annotations

import sys

import loompy as lp
import numpy as np
import pandas as pd
from loomxpy.loomxpy import SCopeLoom
from pyscenic.cli.utils import load_exp_matrix_as_loom

COLUMN = ("RegulonsAUC", "Embedding", "Embeddings_X", "Embeddings_Y", "Clusterings")


def pyscenic_view(path: str) -> dict[str, pd.DataFrame]:
    with lp.connect(path, mode="r", validate=False) as ds:
        out = {name: pd.DataFrame(ds.ca[name], index=ds.ca.CellID) for name in COLUMN}
        out["Regulons"] = pd.DataFrame(ds.ra.Regulons, index=ds.ra.Gene)
    out["matrix"] = load_exp_matrix_as_loom(path)
    return out


def loomxpy_view(path: str) -> dict[object, np.ndarray]:
    scope = SCopeLoom.read_loom(path)
    ids = [e["id"] for e in scope.get_meta_data()["embeddings"]]
    return {i: np.asarray(scope.get_embedding_by_id(embedding_id=i)) for i in ids}


def main(original: str, copy: str) -> None:
    want, have = pyscenic_view(original), pyscenic_view(copy)
    for name, frame in want.items():
        pd.testing.assert_frame_equal(have[name], frame, check_exact=True)
    want_xy, have_xy = loomxpy_view(original), loomxpy_view(copy)
    assert want_xy.keys() == have_xy.keys()
    for key, values in want_xy.items():
        assert values.dtype == have_xy[key].dtype and np.array_equal(values, have_xy[key]), key
    read = f"{sorted(want)}, embeddings {list(want_xy)}"
    print(f"pySCENIC and loomxpy read {copy} as {original}: {read}")


if __name__ == "__main__":
    main(*sys.argv[1:3])

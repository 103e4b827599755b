"""Every loomx snippet of docs/from-loompy.md against its loompy twin, on the same files."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from loomx.testing import assert_loom_identical

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "from-loompy.md"
PAIR = re.compile(
    r"<!-- compare-(?P<kind>file|value): (?P<what>\S+) -->\n"
    r"```python loompy\n(?P<loompy>.*?)```\n```python loomx\n(?P<loomx>.*?)```",
    re.S,
)
PAIRS = [m.groupdict() for m in PAIR.finditer(GUIDE.read_text(encoding="utf-8"))]
N, M = 120, 200


def test_every_loomx_snippet_has_a_loompy_twin():
    text = GUIDE.read_text(encoding="utf-8")
    assert len(PAIRS) == text.count("```python loomx") == text.count("```python loompy")
    assert len(PAIRS) >= 20


def _write_inputs(folder: Path) -> None:
    import loompy

    rng = np.random.default_rng(7)
    genes = np.array([f"Gene{i}" for i in range(N)], dtype=object)
    genes[[4, 40]], genes[9] = "Actb", "Gapdh"
    row_attrs = {
        "Gene": genes,
        "GeneName": np.array([f"name{i}" for i in range(N)]),
        "Accession": np.array([f"ENS{i:05d}" for i in range(N)]),
    }

    def cells(prefix: str, m: int) -> dict:
        return {
            "CellID": np.array([f"{prefix}_{j}" for j in range(m)]),
            "ClusterID": rng.integers(0, 4, m),
            "PCA1": rng.normal(size=m),
            "PCA2": rng.normal(size=m),
        }

    def layers(m: int) -> dict:
        counts = rng.poisson(0.8, (N, m)).astype(np.float32)
        return {"": counts, "spliced": (counts * 2).astype(np.float32)}

    knn = sp.coo_matrix((np.ones(M - 1), (np.arange(M - 1), np.arange(1, M))), shape=(M, M))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loompy.create(
            str(folder / "filename.loom"),
            layers(M),
            row_attrs,
            cells("cell", M),
            file_attrs={"Title": "walkthrough"},
        )
        with loompy.connect(str(folder / "filename.loom")) as ds:
            ds.col_graphs["KNN"] = knn
        for k, m in ((1, 60), (2, 80)):
            loompy.create(str(folder / f"sample{k}.loom"), layers(m), row_attrs, cells(f"s{k}", m))


def _compare(ours, theirs, where: str) -> None:
    if isinstance(theirs, dict):
        assert sorted(ours) == sorted(theirs), where
        for key in theirs:
            _compare(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(theirs, list | tuple):
        assert len(ours) == len(theirs), where
        for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _compare(a, b, f"{where}[{k}]")
    else:
        a, b = np.asarray(ours), np.asarray(theirs)
        assert a.shape == b.shape, (where, a.shape, b.shape)
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=where)
        else:
            np.testing.assert_array_equal(a, b, err_msg=where)


def _run(code: str, folder: Path) -> dict:
    here = os.getcwd()
    os.chdir(folder)
    try:
        namespace: dict = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(code, f"<{folder.name} snippet>", "exec"), namespace)
        return namespace
    finally:
        os.chdir(here)


@pytest.fixture
def _loompy_on_numpy_2(monkeypatch):
    if not hasattr(np, "in1d"):  # loompy 3.0.8 calls np.in1d, which numpy 2.4 removed
        monkeypatch.setattr(np, "in1d", np.isin, raising=False)


@pytest.mark.usefixtures("_loompy_on_numpy_2")
@pytest.mark.parametrize("pair", PAIRS, ids=[f"{i}-{p['what']}" for i, p in enumerate(PAIRS)])
def test_loomx_snippet_does_what_the_loompy_snippet_does(tmp_path, pair):
    results = {}
    for side in ("loompy", "loomx"):
        folder = tmp_path / side
        folder.mkdir()
        _write_inputs(folder)
        results[side] = _run(pair[side], folder)
    if pair["kind"] == "value":
        name = pair["what"]
        _compare(results["loomx"][name], results["loompy"][name], name)
    else:
        name = pair["what"]
        assert_loom_identical(
            tmp_path / "loomx" / name,
            tmp_path / "loompy" / name,
            ignore_globals=("CreationDate", "last_modified"),
            check_global_dtypes=False,
        )

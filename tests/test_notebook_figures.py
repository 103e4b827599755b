"""The figures of the notebooks, rendered and checked for the basics: every axis labelled,
one colour per category with a legend, clusters in natural order, thresholds drawn where
the text uses them; and the saved notebooks hold no stray reprs or progress lines."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

RENDER = r"""
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D

nb = json.load(open(sys.argv[1]))
figures, namespace = [], {"__name__": "__main__"}
for cell in nb["cells"]:
    if cell["cell_type"] != "code":
        continue
    exec(compile("".join(cell["source"]), "cell", "exec"), namespace)
    for number in plt.get_fignums():
        fig = plt.figure(number)
        axes = []
        for ax in fig.axes:
            scatters = [
                {"label": c.get_label(), "colors": sorted({to_hex(f) for f in c.get_facecolors()})}
                for c in ax.collections if isinstance(c, PathCollection)
            ]
            vlines = [
                float(line.get_xdata()[0]) for line in ax.lines
                if isinstance(line, Line2D) and len(set(map(float, line.get_xdata()))) == 1
            ]
            axes.append({
                "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                "colorbar": hasattr(ax, "_colorbar"), "yscale": ax.get_yscale(),
                "xticks": [t.get_text() for t in ax.get_xticklabels()],
                "patches": len(ax.patches), "images": len(ax.images),
                "scatters": scatters, "vlines": vlines,
                "legend": [t.get_text() for t in ax.get_legend().get_texts()]
                if ax.get_legend() else None,
            })
        figures.append(axes)
        plt.close(fig)
if "client" in namespace:
    namespace["client"].close()
    namespace["cluster"].close()
print("FIGURES" + json.dumps(figures))
"""

WITH_FIGURES = sorted(
    p.stem for p in NOTEBOOKS.glob("*.ipynb") if "matplotlib" in p.read_text(encoding="utf-8")
)


_RENDERED: dict[str, list[list[dict]]] = {}


def render(name: str) -> list[list[dict]]:
    """Per figure, per axes: what it shows (each notebook runs once per test session)."""
    if name in _RENDERED:
        return _RENDERED[name]
    done = subprocess.run(
        [sys.executable, "-c", RENDER, str(NOTEBOOKS / f"{name}.ipynb")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=NOTEBOOKS,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _RENDERED[name] = json.loads(done.stdout.rsplit("FIGURES", 1)[1])
    return _RENDERED[name]


@pytest.fixture(scope="module", params=WITH_FIGURES)
def figures(request):
    return request.param, render(request.param)


def test_every_axis_is_labelled_and_every_category_has_its_own_colour(figures):
    name, found = figures
    assert found, f"{name} draws no figure"
    for axes in found:
        for ax in axes:
            if ax["colorbar"]:
                assert ax["xlabel"] or ax["ylabel"], (name, "colorbar without a label")
                continue
            assert ax["xlabel"] and ax["ylabel"], (name, ax)
            labelled = [s for s in ax["scatters"] if not s["label"].startswith("_")]
            if len(ax["scatters"]) > 1:  # categories: each labelled, in a legend
                assert len(labelled) == len(ax["scatters"]), (name, ax["scatters"])
                assert ax["legend"] == [s["label"] for s in labelled], (name, ax["legend"])
                colours = [tuple(s["colors"]) for s in labelled]
                assert len(set(colours)) == len(colours), (name, "colours repeat", colours)


def test_clusters_heatmap_in_natural_order():
    found = render("clusters")
    heatmap = next(ax for axes in found for ax in axes if ax["images"])
    clusters = [int(t) for t in heatmap["xticks"]]
    assert clusters == sorted(clusters) and len(clusters) == 11


def test_qc_histogram_shows_the_rare_damaged_cells_and_the_cut_off():
    notebook = json.loads((NOTEBOOKS / "qc.ipynb").read_text(encoding="utf-8"))
    source = "".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    assert "MITO_CUT_OFF" in source  # one threshold, drawn and used
    found = render("qc")
    mito = next(ax for axes in found for ax in axes if ax["xlabel"] == "pct_counts_mt")
    assert mito["yscale"] == "log" and mito["vlines"], mito


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_saved_notebooks_hold_no_stray_reprs_or_progress_lines(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        text = json.dumps(cell.get("outputs", []))
        assert "\\r" not in text and "<matplotlib." not in text, cell["source"]
        source = "".join(cell["source"])
        body = ast.parse(source).body
        last = None if source.rstrip().endswith(";") or not body else body[-1]
        if isinstance(last, ast.Expr) and isinstance(last.value, ast.Call):
            func = last.value.func
            method = func.attr if isinstance(func, ast.Attribute) else ""
            drawing = {"colorbar", "legend", "hist", "scatter", "imshow", "plot", "axvline"}
            assert method not in drawing and not method.startswith("set_"), (
                path.stem,
                ast.unparse(last),
                "ends a cell with a plotting call: its repr is saved; end it with ';'",
            )

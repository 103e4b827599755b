"""The one reversible mapping between Loom paths and xarray names (loomx._format.names)."""

from __future__ import annotations

import pytest

from loomx._format import names as conv


def test_assign_names_qualifies_every_occurrence_of_a_clash():
    names = conv.assign_names(["", "X", "spliced"], ["X", "Gene", "row"], ["X", "CellID"])
    assert names[("layers", "")] == "matrix"
    assert names[("layers", "spliced")] == "spliced"
    assert names[("layers", "X")] == "layers:X"
    assert names[("row_attrs", "X")] == "row_attrs:X"
    assert names[("col_attrs", "X")] == "col_attrs:X"
    assert names[("row_attrs", "row")] == "row_attrs:row"  # a dim name
    assert names[("row_attrs", "Gene")] == "Gene"
    renamed = conv.assign_names([""], ["gene"], ["cell"], dims=("gene", "cell"))
    assert renamed[("row_attrs", "gene")] == "row_attrs:gene"


@pytest.mark.parametrize(
    "name", ["X", "row_attrs:X", "col_attrs:a:b", "layers:matrix", "weird:name", "matrix"]
)
def test_naming_rule_is_reversible(name):
    for space in ("layers", "row_attrs", "col_attrs"):
        var = conv.assign_names(
            ["", name] if space == "layers" else [""],
            [name] if space == "row_attrs" else [],
            [name] if space == "col_attrs" else [],
        )[(space, name)]
        parsed_space, parsed = conv.split_qualified(var)
        assert parsed == name
        assert parsed_space in (None, space)


def test_graph_names_round_trip():
    names = conv.graph_var_names("col_graphs", "KNN")
    assert names == {
        "vertex": "col_graphs:KNN",
        "edge": "col_graphs:KNN:edge",
        "a": "col_graphs:KNN:a",
        "b": "col_graphs:KNN:b",
        "w": "col_graphs:KNN:w",
    }
    for part, var in names.items():
        assert conv.parse_graph_var(var) == ("col_graphs", "KNN", part)
    assert conv.parse_graph_var("row_attrs:KNN") is None

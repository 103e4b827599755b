from __future__ import annotations

import numpy as np
import pytest

from loomx._format import names as conv
from loomx._format import values as _values


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


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("caf&#233;", "café"),
        ("&#x3B2;-actin", "β-actin"),
        ("&#145;", "\x91"),  # XML, not HTML's Windows-1252 rule
        ("a &amp; b", "a & b"),
        ("&copy;", "&copy;"),  # not an XML entity
        ("&#0;", "&#0;"),
    ],
)
def test_xml_unescape(raw, text):
    assert _values.xml_unescape(raw) == text


def test_string_encoding_round_trips_per_version():
    values = np.array(["café", "日本", "", "plain"], dtype=object)
    legacy = _values.encode_strings(values, legacy=True)
    assert legacy.dtype.kind == "S" and legacy[0] == b"caf&#233;"
    back = _values.decode_strings(legacy, fixed_length=True, legacy=True)
    assert list(back) == list(values)
    modern = _values.encode_strings(values, legacy=False)
    raw = np.array([v.encode() for v in modern], dtype=object)
    assert list(_values.decode_strings(raw, fixed_length=False, legacy=False)) == list(values)
    with pytest.raises(UnicodeDecodeError):
        _values.decode_strings(np.array([b"\xff"], dtype=object), fixed_length=False, legacy=False)


def test_compound_to_array():
    raw = np.array([(1.0, 2), (3.0, 4)], dtype=[("_X", "f8"), ("_Y", "i4")])
    values, fields = _values.compound_to_array(raw)
    assert fields == ["_X", "_Y"]
    np.testing.assert_array_equal(values, [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(TypeError):
        _values.compound_to_array(np.array([(b"a",)], dtype=[("s", "S1")]))

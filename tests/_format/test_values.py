"""loomx._format.values: how strings, bools and global attributes are stored per spec
version, compared byte for byte with what loompy writes (3.0.0: vlen UTF-8; older
versions: ASCII with XML character references) and with what h5py reads from the files
from the wild in tests/data.
"""

from __future__ import annotations

import warnings

import h5py
import loompy
import numpy as np
import pytest
from conftest import DATA

from loomx._format import values as _values

TEXTS = np.array(["café", "日本", "", "plain", "a & b", "β-actin"], dtype=object)


@pytest.fixture(scope="module")
def loompy_written(tmp_path_factory):
    """A 3.0.0 file written by loompy, with non-ASCII attribute and global strings."""
    path = tmp_path_factory.mktemp("values") / "lp.loom"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loompy.create(
            str(path),
            np.ones((len(TEXTS), 2), "float32"),
            {"Gene": TEXTS.astype(str)},
            {"CellID": np.array(["x", "y"])},
            file_attrs={"Title": "Tëst"},
        )
    return path


def test_3_0_0_strings_are_stored_as_loompy_stores_them(tmp_path, loompy_written):
    encoded = _values.encode_attr_values(TEXTS, legacy=False)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("Gene", data=encoded, dtype=_values.STRING_DTYPE)
    with h5py.File(tmp_path / "x.h5", "r") as mine, h5py.File(loompy_written, "r") as theirs:
        ours, loompys = mine["Gene"], theirs["row_attrs/Gene"]
        assert h5py.check_string_dtype(ours.dtype) == h5py.check_string_dtype(loompys.dtype)
        assert h5py.check_string_dtype(ours.dtype).length is None  # variable length
        assert ours[()].tolist() == loompys[()].tolist()  # the same UTF-8 bytes
        decoded = _values.decode_strings(loompys[()], fixed_length=False, legacy=False)
        assert decoded.tolist() == loompys.asstr()[()].tolist() == TEXTS.tolist()


def test_legacy_strings_are_loompys_escaped_ascii():
    ours = _values.encode_strings(TEXTS, legacy=True)
    theirs = loompy.normalize_attr_values(TEXTS, False)  # loompy before 3.0.0 files
    assert ours.dtype == theirs.dtype and ours.dtype.kind == "S"
    assert ours.tolist() == theirs.tolist()
    assert ours[0] == b"caf&#233;"


def test_legacy_strings_decode_as_loompy_materializes_them():
    raw = loompy.normalize_attr_values(TEXTS, False)
    ours = _values.decode_strings(raw, fixed_length=True, legacy=True)
    assert ours.tolist() == loompy.materialize_attr_values(raw).tolist() == TEXTS.tolist()
    # 3.0.0 strings are UTF-8 and never unescaped (loompy would drop the non-ASCII bytes)
    modern = np.array([b"caf&#233;", "日本".encode()], dtype=object)
    assert _values.decode_strings(modern, fixed_length=False, legacy=False).tolist() == [
        "caf&#233;",
        "日本",
    ]


def test_bools_are_stored_as_uint8_as_loompy_stores_them():
    flags = np.array([True, False, True])
    ours = _values.encode_attr_values(flags, legacy=False)
    theirs = loompy.normalize_attr_values(flags)
    assert ours.dtype == theirs.dtype == np.uint8
    np.testing.assert_array_equal(ours, theirs)


def test_global_strings_are_stored_as_loompy_stores_them(tmp_path, loompy_written):
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_dataset("Title", data=_values.encode_global("Tëst", legacy=False))
    with h5py.File(tmp_path / "g.h5", "r") as mine, h5py.File(loompy_written, "r") as theirs:
        ours, loompys = mine["Title"], theirs["attrs/Title"]
        assert ours.shape == loompys.shape == ()
        assert h5py.check_string_dtype(ours.dtype) == h5py.check_string_dtype(loompys.dtype)
        assert ours[()] == loompys[()] == "Tëst".encode()
        assert _values.decode_value(loompys[()], legacy=False) == "Tëst"
    legacy = _values.encode_global("ça", legacy=True)
    assert legacy.shape == () and legacy[()] == loompy.normalize_attr_values("ça", False)


@pytest.mark.parametrize(
    "name", ["LoomExperiment_L1_DRG_20_example.loom", "SCopeLoomR_example.loom"]
)
def test_root_globals_of_files_from_the_wild_decode_as_h5py_reads_them(name):
    with h5py.File(DATA / name, "r") as f:
        assert len(f.attrs)
        for key, value in f.attrs.items():
            decoded = _values.decode_value(value, legacy=True)
            if isinstance(value, np.ndarray):  # LoomExperiment: 1-element byte arrays
                assert value.shape == (1,)
                assert decoded == value[0].decode() == loompy.materialize_attr_values(value)[0]
            else:  # SCope: vlen UTF-8 strings, which h5py decodes itself
                assert decoded == value, key


def test_global_of_another_type_is_refused():
    with pytest.raises(TypeError, match="dict"):
        _values.encode_global({"a": 1}, legacy=False)


@pytest.mark.parametrize(
    ("values", "whole"),
    [
        (np.array([0.0, 3.0, 129.0]), True),
        (np.array([0, 3], np.int32), True),
        (np.array([1.0, 2.5]), False),
        (np.array([1.0, np.nan]), False),
        (np.array([np.inf]), False),
        (np.array(["1"]), False),
    ],
)
def test_float_vertices_are_whole_numbers_only_when_integral(values, whole):
    assert _values.whole_numbers(values) == whole
    if whole:  # then exactly the integers they hold
        np.testing.assert_array_equal(values.astype(np.int64), values)


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


# --------------------------------------------------------------------------- compound


def test_compound_dtype_takes_field_names_from_the_labels_and_dtypes_from_the_encoding():
    wanted = np.dtype([("a", "<i4"), ("b", "<f4")])
    assert _values.compound_dtype(wanted, ["b", "a"], "f8") == np.dtype(
        [("b", "<f4"), ("a", "<i4")]
    )
    assert _values.compound_dtype(wanted, None, "f8") == wanted
    assert _values.compound_dtype("compound", ["x", "y"], "i2") == np.dtype(
        [("x", "i2"), ("y", "i2")]
    )
    assert _values.compound_dtype(wanted, ["a", "new"], "f8")["new"] == np.dtype("f8")
    for bad in (["a", "a"], [], [""]):
        with pytest.raises(ValueError, match="field names"):
            _values.compound_dtype("compound", bad, "f8")


def test_array_to_compound_is_the_inverse_of_compound_to_array():
    records = np.zeros(3, dtype=[("n", "u1"), ("x", "<f4"), ("-1", "<f8")])
    records["n"], records["x"], records["-1"] = [1, 2, 255], [0.5, -0.0, np.nan], [1e300, 2, 3]
    plain, fields = _values.compound_to_array(records)
    back = _values.array_to_compound(plain, records.dtype)
    assert fields == ["n", "x", "-1"] and back.dtype == records.dtype
    assert back.tobytes() == records.tobytes()


@pytest.mark.parametrize(("column", "value"), [(0, 256), (0, 1.5), (1, 1e300), (1, 0.1), (0, -1)])
def test_array_to_compound_refuses_a_value_its_field_cannot_hold(column, value):
    dtype = np.dtype([("n", "u1"), ("x", "<f4")])
    plain = np.zeros((2, 2), dtype="f8")
    plain[1, column] = value
    with pytest.raises(ValueError, match=f"field '{dtype.names[column]}'"):
        _values.array_to_compound(plain, dtype)


def test_is_compound_request():
    assert _values.is_compound_request("compound")
    assert _values.is_compound_request([("a", "f8")])
    assert not _values.is_compound_request("f8")
    assert not _values.is_compound_request(None)

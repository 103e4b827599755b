"""loomx.testing.assert_loom_identical: passes on identical content, fails on each kind of
difference with a message naming the HDF5 path."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from loomx.testing import assert_loom_identical, make_example_loom, write_loom_h5py

NAN_BITS = np.array([0x7FC00000, 0x7FC00001], dtype=np.uint32).view(np.float32)


def base(path: Path, version: str = "3.0.0", **changes) -> Path:
    matrix = np.arange(24, dtype=np.float32).reshape(4, 6)
    matrix[0, 0] = NAN_BITS[0]
    matrix[1, 1] = 0.0
    args = {
        "layers": {"": matrix, "u": np.arange(24, dtype=np.uint16).reshape(4, 6)},
        "row_attrs": {"Gene": np.array(["Gène_α", "日本", "a&b", "<x>"], dtype=object)},
        "col_attrs": {"Score": np.linspace(0, 1, 6), "Emb": np.ones((6, 2))},
        "col_graphs": {"KNN": (np.array([0, 2, 2]), np.array([1, 3, 3]), np.array([1.0, 2, 3]))},
        "global_attrs": {"Title": "Tëst", "Year": np.int64(2024), "W": np.arange(3.0)},
    }
    args.update(changes)
    write_loom_h5py(path, version=version, **args)
    return path


def test_identical_files_pass(tmp_path):
    a = make_example_loom(tmp_path / "a.loom", 40, 70)
    b = make_example_loom(tmp_path / "b.loom", 40, 70, chunks=(7, 9))  # storage differs
    assert_loom_identical(a, b)
    assert_loom_identical(base(tmp_path / "c.loom"), base(tmp_path / "d.loom"))


def test_2_0_1_and_3_0_0_with_the_same_text_are_identical(tmp_path):
    new, old = base(tmp_path / "new.loom"), base(tmp_path / "old.loom", "2.0.1")
    with h5py.File(old, "r") as f:
        assert f["row_attrs/Gene"][0] == b"G&#232;ne_&#945;"
    assert_loom_identical(new, old, check_spec_version=False)
    with pytest.raises(AssertionError, match=r"/attrs/LOOM_SPEC_VERSION.*\n.*3\.0\.0.*\n.*2\.0\.1"):
        assert_loom_identical(new, old)


def _edit(path: Path, change: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "r+") as f:
        change(f)


def _replace(name: str, values: np.ndarray) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        dtype = f[name].dtype
        del f[name]
        f.create_dataset(name, data=values, dtype=dtype)

    return change


def _set(name: str, index: tuple, value: object) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        data = f[name][()]
        data[index] = value
        f[name][...] = data

    return change


def _swap_edges(f: h5py.File) -> None:
    for part in "abw":
        values = f[f"col_graphs/KNN/{part}"][()]
        f[f"col_graphs/KNN/{part}"][...] = values[[1, 0, 2]]


def _version(f: h5py.File) -> None:
    del f["attrs/LOOM_SPEC_VERSION"]
    f.create_dataset("attrs/LOOM_SPEC_VERSION", data="3.0.1", dtype=h5py.string_dtype())


def _extra_layer(f: h5py.File) -> None:
    f["layers/extra"] = np.zeros((4, 6), np.float32)


def _layer_dtype(f: h5py.File) -> None:
    values = f["layers/u"][()]
    del f["layers/u"]
    f["layers/u"] = values.astype(np.int16)


def _number_as_text(f: h5py.File) -> None:
    del f["attrs/Year"]
    f.create_dataset("attrs/Year", data="2024", dtype=h5py.string_dtype())


def _global_width(f: h5py.File) -> None:
    del f["attrs/Year"]
    f["attrs/Year"] = np.int32(2024)


def _drop_edge(f: h5py.File) -> None:
    for part in "abw":
        values = f[f"col_graphs/KNN/{part}"][()]
        del f[f"col_graphs/KNN/{part}"]
        f[f"col_graphs/KNN/{part}"] = values[:2]


CHANGES = {
    "nan payload": (_set("matrix", (0, 0), NAN_BITS[1]), r"/matrix: values at index \(0, 0\)"),
    "-0.0 vs 0.0": (_set("matrix", (1, 1), -0.0), r"/matrix: values at index \(1, 1\)"),
    "layer value": (_set("layers/u", (3, 5), 7), r"/layers/u: values at index \(3, 5\)"),
    "layer dtype": (_layer_dtype, r"/layers/u: dtypes"),
    "extra layer": (_extra_layer, r"/layers/extra'\]"),
    "one string char": (
        _replace("row_attrs/Gene", np.array(["Gène_α", "日本", "a&c", "<x>"], dtype=object)),
        r"/row_attrs/Gene: strings at index \(2,\)",
    ),
    "2-D attribute": (_set("col_attrs/Emb", (5, 1), 2.0), r"/col_attrs/Emb: values at index"),
    "swap two edges": (_swap_edges, r"/col_graphs/KNN/a: values at index \(0,\)"),
    "edge count": (_drop_edge, r"/col_graphs/KNN/a: edge counts"),
    "global value": (_set("attrs/W", (2,), 5.0), r"/attrs/W: values at index \(2,\)"),
    "global text": (
        _replace("attrs/Title", np.array("Test", dtype=object)),
        r"/attrs/Title: values",
    ),
    "global kind": (_number_as_text, r"/attrs/Year: kinds"),
    "global dtype": (_global_width, r"/attrs/Year: dtypes"),
    "version": (_version, r"/attrs/LOOM_SPEC_VERSION: spec versions"),
}


@pytest.mark.parametrize("case", list(CHANGES))
def test_each_difference_fails(tmp_path, case):
    change, message = CHANGES[case]
    expected = base(tmp_path / "expected.loom")
    actual = tmp_path / "actual.loom"
    shutil.copy(expected, actual)
    assert_loom_identical(actual, expected)
    _edit(actual, change)
    with pytest.raises(AssertionError, match=message):
        assert_loom_identical(actual, expected)
    with pytest.raises(AssertionError, match=message):
        assert_loom_identical(expected, actual)


def test_switches_skip_parts(tmp_path):
    expected = base(tmp_path / "expected.loom")
    actual = tmp_path / "actual.loom"
    shutil.copy(expected, actual)
    _edit(actual, _set("matrix", (1, 1), -0.0))
    _edit(actual, _swap_edges)
    _edit(actual, _set("attrs/W", (2,), 5.0))
    _edit(actual, _replace("row_attrs/Gene", np.array(["x"] * 4, dtype=object)))
    assert_loom_identical(actual, expected, layers=False, graphs=False, globals=False, attrs=False)
    with pytest.raises(AssertionError, match="/matrix"):
        assert_loom_identical(actual, expected, graphs=False, globals=False, attrs=False)
    with pytest.raises(AssertionError, match="/col_graphs/KNN"):
        assert_loom_identical(actual, expected, layers=False, globals=False, attrs=False)
    with pytest.raises(AssertionError, match="/attrs/W"):
        assert_loom_identical(actual, expected, layers=False, graphs=False, attrs=False)
    with pytest.raises(AssertionError, match="/row_attrs/Gene"):
        assert_loom_identical(actual, expected, layers=False, graphs=False, globals=False)


def test_ignored_globals_and_loompy_stamps(tmp_path):
    expected = base(tmp_path / "expected.loom")
    actual = tmp_path / "actual.loom"
    shutil.copy(expected, actual)

    def stamp(f: h5py.File) -> None:
        f.attrs["last_modified"] = "20260101T000000.000000Z"
        f.create_dataset("attrs/CreationDate", data="20260101", dtype=h5py.string_dtype())

    _edit(actual, stamp)
    with pytest.raises(AssertionError, match=r"global attributes.*unexpected"):
        assert_loom_identical(actual, expected)
    assert_loom_identical(actual, expected, ignore_globals=("CreationDate", "last_modified"))


def test_unfinished_writes_and_legacy_edges(tmp_path):
    expected = base(tmp_path / "expected.loom")
    actual = tmp_path / "actual.loom"
    shutil.copy(expected, actual)

    def change(f: h5py.File) -> None:
        f["layers/x.loomx-tmp-123-abc"] = np.zeros((4, 6))
        f["col_attrs/Score.loomx-tmp-123-abc"] = np.zeros(6)
        f.move("col_graphs", "col_edges")
        f.create_group("col_graphs")

    _edit(actual, change)
    assert_loom_identical(actual, expected)
    _edit(actual, lambda f: f["col_edges/KNN/w"].__setitem__(0, 9.0))
    with pytest.raises(AssertionError, match=r"/col_graphs/KNN/w: values at index \(0,\)"):
        assert_loom_identical(actual, expected)


def test_legacy_one_element_and_escaped_globals(tmp_path):
    """LoomExperiment stores globals as 1-element byte arrays; 2.0.1 text is escaped."""
    expected = base(tmp_path / "expected.loom", global_attrs={"Title": "Tëst"})
    actual = base(tmp_path / "actual.loom", "2.0.1", global_attrs={})

    def change(f: h5py.File) -> None:
        f.attrs["Title"] = np.array([b"T&#235;st"])
        f.attrs["LOOM_SPEC_VERSION"] = np.array([b"2.0.1"])

    _edit(actual, change)
    assert_loom_identical(actual, expected, check_spec_version=False)
    _edit(actual, lambda f: f.attrs.__setitem__("Title", np.array([b"T&#236;st"])))
    with pytest.raises(AssertionError, match="/attrs/Title"):
        assert_loom_identical(actual, expected, check_spec_version=False)


def test_3_0_0_strings_are_not_unescaped(tmp_path):
    literal = base(tmp_path / "a.loom", row_attrs={"Gene": np.array(["&#233;", "b", "c", "d"])})
    decoded = base(tmp_path / "b.loom", row_attrs={"Gene": np.array(["é", "b", "c", "d"])})
    with pytest.raises(AssertionError, match="/row_attrs/Gene"):
        assert_loom_identical(literal, decoded)


def test_global_widths_can_be_compared_by_value(tmp_path):
    expected = base(tmp_path / "expected.loom")
    actual = tmp_path / "actual.loom"
    shutil.copy(expected, actual)
    _edit(actual, _global_width)  # int64 2024 -> int32 2024
    with pytest.raises(AssertionError, match=r"/attrs/Year: dtypes"):
        assert_loom_identical(actual, expected)
    assert_loom_identical(actual, expected, check_global_dtypes=False)
    _edit(actual, lambda f: f["attrs/Year"].write_direct(np.array(2025, np.int32)))
    with pytest.raises(AssertionError, match=r"/attrs/Year: values"):
        assert_loom_identical(actual, expected, check_global_dtypes=False)

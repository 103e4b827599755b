"""Every writer x every reader, like h5netcdf's test matrix.

One logical content (:func:`content`) is written by each writer: h5py directly (spec 3.0.0
and 2.0.1), ``loompy.create``, ``loomx.to_loom`` (new file, and write-back into a file that
lacks part of it), ``loomx.append`` and ``loomx.combine`` (two halves of the columns) and
anndata's ``write_loom``.  Each file is read by every reader (loomx with dask and without,
loompy with its validator, ``anndata.read_loom``), and what each reader hands out is
compared with the content itself, never with what loomx reads.  Each written file is also
compared with an h5py-written reference by :func:`loomx.testing.assert_loom_identical`.

Some writers cannot hold all of the content and some readers cannot represent all of it;
each such case is stated where it is handled:

* loompy (and anndata's ``write_loom``, which calls ``loompy.create``) refuses NaN and inf
  in layers ("INF and NaN not allowed in loom matrix"): those writers get a content variant
  with finite values in place of NaN and inf (``-0.0`` stays).
* loompy's writers stamp ``CreationDate`` and ``last_modified``: ignored in comparisons.
* anndata's ``write_loom`` writes no graphs and no global attributes, and its attributes go
  through pandas columns, so a float32 attribute comes back as float64.
* loompy's reader (and anndata's, which uses it) decodes variable-length strings as ASCII,
  dropping every other character, and then HTML-unescapes; it reads 2.0.1's escaped ASCII
  attributes exactly; of 2.0.1 global attributes it unescapes only fixed-length ones.
  anndata's reader ignores graphs and global attributes.
"""

from __future__ import annotations

import html
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import anndata_read_loom

import loomx
from loomx.testing import assert_loom_identical, write_loom_h5py
from loomx.testing.strategies import LoomContent

N, M = 12, 20
HALF = M // 2
LOOMPY_STAMPS = ("CreationDate", "last_modified")


def content() -> LoomContent:
    """The shared logical content.

    The column graph's edges stay within each half of the columns (first half's edges
    first), so ``append`` and ``combine`` of the two halves can produce it edge for edge.
    """
    rng = np.random.default_rng(7)
    matrix = rng.poisson(2.0, (N, M)).astype(np.float32)
    matrix[0, :4] = [np.nan, -0.0, np.inf, -np.inf]
    matrix[5, 13] = -0.0
    matrix[7, 17] = np.nan
    counts = rng.integers(-5, 1000, (N, M)).astype(np.int32)
    spliced = rng.integers(0, 65535, (N, M)).astype(np.uint16)
    genes = ["Gène_α", "日本", "a&b", "<x>", "q\"'", "ß-actin"]
    genes = np.array(genes + [f"G{i}" for i in range(len(genes), N)], dtype=object)
    cells = np.array([f"c{j}{'xé日<&'[j % 5]}" for j in range(M)], dtype=object)
    a1 = np.array([3, 0, 9, 3, 2, 5], dtype=np.int64)
    b1 = np.array([1, 4, 0, 1, 7, 5], dtype=np.int64)  # (3, 1) twice, a self loop
    a2 = np.array([19, 10, 12, 12], dtype=np.int64)
    b2 = np.array([11, 18, 13, 13], dtype=np.int64)
    w = np.array([0.5, 1.0, 2.0, 0.5, 3.25, 1.0, 4.0, 0.125, 7.0, 7.0])
    return LoomContent(
        layers={"": matrix, "counts": counts, "spliced": spliced},
        row_attrs={
            "Gene": genes,
            "Accession": np.array([f"ENSG{i:05d}" for i in range(N)], dtype=object),
            "Score": rng.normal(size=N),
        },
        col_attrs={
            "CellID": cells,
            "ClusterID": rng.integers(0, 4, M).astype(np.int64),
            "Valid": rng.random(M) < 0.5,
            "Size": rng.random(M).astype(np.float32),
            "X_pca": rng.normal(size=(M, 3)),
        },
        col_graphs={"KNN": (np.concatenate([a1, a2]), np.concatenate([b1, b2]), w)},
        global_attrs={
            "Title": "Tëst & <loom> 日本",
            "Year": np.int64(2024),
            "Scale": np.float64(0.25),
            "Weights": np.arange(3.0),
        },
    )


def finite(c: LoomContent) -> LoomContent:
    """``c`` with NaN and inf in layers replaced by finite values (-0.0 kept)."""
    layers = {}
    for name, values in c.layers.items():
        if values.dtype.kind == "f":
            values = np.where(np.isfinite(values), values, np.float32(9.5)).astype(values.dtype)
        layers[name] = values
    return replace(c, layers=layers)


def columns(c: LoomContent, cols: slice) -> LoomContent:
    """The columns ``cols`` of ``c``, with the induced (renumbered) column graph."""
    start, stop = cols.start, cols.stop
    a, b, w = c.col_graphs["KNN"]
    keep = (a >= start) & (a < stop) & (b >= start) & (b < stop)
    return replace(
        c,
        layers={k: v[:, cols] for k, v in c.layers.items()},
        col_attrs={k: v[cols] for k, v in c.col_attrs.items()},
        col_graphs={"KNN": (a[keep] - start, b[keep] - start, w[keep])},
    )


def write(c: LoomContent, path: Path, version: str = "3.0.0") -> Path:
    write_loom_h5py(
        path,
        c.layers,
        c.row_attrs,
        c.col_attrs,
        row_graphs=c.row_graphs,
        col_graphs=c.col_graphs,
        global_attrs=c.global_attrs,
        version=version,
    )
    return path


def quietly_open(path: Path, **kwargs: Any) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", loomx.LoomFormatWarning)
        return loomx.open_loom(path, **kwargs)


# --------------------------------------------------------------------------- writers


@dataclass
class Written:
    """A file a writer produced and what it must hold."""

    path: Path
    expected: LoomContent
    version: str = "3.0.0"
    graphs: bool = True  # whether the writer keeps graphs
    globals: bool = True  # whether the writer keeps global attributes
    compare: dict[str, Any] = field(default_factory=dict)


def h5py_3(tmp: Path) -> Written:
    return Written(write(content(), tmp / "h5py3.loom"), content())


def h5py_2(tmp: Path) -> Written:
    return Written(write(content(), tmp / "h5py2.loom", "2.0.1"), content(), version="2.0.1")


def loompy_create(tmp: Path) -> Written:
    import loompy
    import scipy.sparse as sp

    c = finite(content())  # loompy refuses NaN and inf in layers
    path = tmp / "loompy.loom"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loompy.create(str(path), c.layers, c.row_attrs, c.col_attrs, file_attrs=c.global_attrs)
        with loompy.connect(str(path)) as lp:
            a, b, w = c.col_graphs["KNN"]
            lp.col_graphs["KNN"] = sp.coo_matrix((w, (a, b)), shape=(M, M))
    return Written(path, c, compare={"ignore_globals": LOOMPY_STAMPS})


def to_loom_new(tmp: Path) -> Written:
    src = write(content(), tmp / "src.loom")
    path = tmp / "to_loom.loom"
    with loomx.open_loom(src) as ds:
        loomx.to_loom(ds, path)
    return Written(path, content())


def _write_back(tmp: Path, version: str) -> Written:
    """A file with part of the content; the rest is added by write-back, from numpy."""
    c = content()
    partial = replace(
        c,
        layers={"": c.layers[""], "spliced": c.layers["spliced"]},
        col_attrs={"CellID": c.col_attrs["CellID"]},
        col_graphs={},
        global_attrs={"Title": c.global_attrs["Title"]},
    )
    path = write(partial, tmp / f"write_back_{version}.loom", version)
    ds = loomx.open_loom(path)
    ds = ds.assign(counts=(ds["matrix"].dims, c.layers["counts"]))
    coords: dict[str, Any] = {}
    for name, values in c.col_attrs.items():
        if name != "CellID":
            dims = ("col",) if values.ndim == 1 else ("col", f"{name}_dim_1")
            coords[name] = (dims, values)
    a, b, w = c.col_graphs["KNN"]
    coords["col_graphs:KNN"] = ("col", np.arange(M))
    for part, values in zip("abw", (a, b, w), strict=True):
        coords[f"col_graphs:KNN:{part}"] = ("col_graphs:KNN:edge", values)
    ds = ds.assign_coords(coords).assign_attrs(c.global_attrs)
    loomx.to_loom(ds, path, mode="a")
    ds.close()
    return Written(path, c, version=version)


def to_loom_write_back_3(tmp: Path) -> Written:
    return _write_back(tmp, "3.0.0")


def to_loom_write_back_2(tmp: Path) -> Written:
    return _write_back(tmp, "2.0.1")  # write-back follows the file's version


def append(tmp: Path) -> Written:
    c = content()
    path = write(columns(c, slice(0, HALF)), tmp / "append.loom")
    half = write(columns(c, slice(HALF, M)), tmp / "half.loom")
    with loomx.open_loom(half) as more:
        loomx.append(path, more)
    return Written(path, c)


def combine(tmp: Path) -> Written:
    c = content()
    first = write(columns(c, slice(0, HALF)), tmp / "first.loom")
    second = write(columns(c, slice(HALF, M)), tmp / "second.loom")
    path = tmp / "combined.loom"
    loomx.combine([first, second], path, key="Accession")
    return Written(path, c)


def anndata_write_loom(tmp: Path) -> Written:
    anndata = pytest.importorskip("anndata")
    import pandas as pd

    c = finite(content())  # write_loom goes through loompy.create: no NaN, no inf
    var = pd.DataFrame(
        {k: v for k, v in c.row_attrs.items() if k != "Gene"},
        index=pd.Index(list(c.row_attrs["Gene"]), name="Gene"),
    )
    obs = pd.DataFrame(
        {k: v for k, v in c.col_attrs.items() if k not in ("CellID", "X_pca")},
        index=pd.Index(list(c.col_attrs["CellID"]), name="CellID"),
    )
    adata = anndata.AnnData(
        X=c.layers[""].T,
        obs=obs,
        var=var,
        layers={k: v.T for k, v in c.layers.items() if k},
        obsm={"X_pca": c.col_attrs["X_pca"]},
    )
    path = tmp / "anndata.loom"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_loom(path, write_obsm_varm=True)
    # attributes pass through pandas columns and Python lists: float32 comes back float64
    col_attrs = dict(c.col_attrs, Size=c.col_attrs["Size"].astype(np.float64))
    expected = replace(c, col_attrs=col_attrs, col_graphs={}, global_attrs={})
    return Written(path, expected, graphs=False, globals=False)


WRITERS: dict[str, Callable[[Path], Written]] = {
    "h5py-3.0.0": h5py_3,
    "h5py-2.0.1": h5py_2,
    "loompy.create": loompy_create,
    "to_loom-new": to_loom_new,
    "to_loom-write-back-3.0.0": to_loom_write_back_3,
    "to_loom-write-back-2.0.1": to_loom_write_back_2,
    "append": append,
    "combine": combine,
    "anndata.write_loom": anndata_write_loom,
}


@pytest.fixture(scope="module", params=list(WRITERS))
def written(request, tmp_path_factory) -> Written:
    """Each writer runs once per module; readers only read its file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", loomx.LoomFormatWarning)
        return WRITERS[request.param](tmp_path_factory.mktemp(request.param))


def test_written_file_is_identical_to_h5py_reference(written, tmp_path):
    reference = write(written.expected, tmp_path / "reference.loom")
    assert_loom_identical(
        written.path,
        reference,
        check_spec_version=written.version == "3.0.0",
        graphs=written.graphs,
        globals=written.globals,
        **written.compare,
    )


# --------------------------------------------------------------------------- readers


def assert_bits(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.dtype == expected.dtype, (what, got.dtype, expected.dtype)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    assert got.tobytes() == expected.tobytes(), what  # NaN payloads and -0.0 count


def stored(values: np.ndarray) -> np.ndarray:
    """Attribute values as the spec stores them: bools as uint8."""
    return values.astype(np.uint8) if values.dtype == np.bool_ else values


def assert_attr(got: Any, expected: np.ndarray, what: str, text=lambda s: s) -> None:
    got = np.asarray(got)
    if expected.dtype == object:
        assert [str(s) for s in got.ravel()] == [text(s) for s in expected.ravel()], what
    else:
        assert_bits(got, stored(expected), what)


def read_loomx(written: Written, chunks: Any) -> None:
    c = written.expected
    ds = quietly_open(written.path, chunks=chunks)
    assert ds.encoding["loom_spec_version"] == written.version
    for name, values in c.layers.items():
        assert_bits(ds["matrix" if name == "" else name].values, values, name)
    for dim, attrs in (("row", c.row_attrs), ("col", c.col_attrs)):
        for name, values in attrs.items():
            assert ds[name].dims[0] == dim
            assert_attr(ds[name].values, values, name)
    graphs = {str(k).split(":")[1] for k in ds.coords if str(k).startswith("col_graphs:")}
    assert graphs == set(c.col_graphs)
    for name, (a, b, w) in c.col_graphs.items():
        edges = ds.loom.col_graphs.edges(name)
        for part, values in zip("abw", (a, b, w), strict=True):
            np.testing.assert_array_equal(edges[part].values, values, err_msg=part)
    attrs = {k: v for k, v in ds.attrs.items() if k not in (*LOOMPY_STAMPS, "LOOM_SPEC_VERSION")}
    assert attrs.keys() == c.global_attrs.keys()
    for name, value in c.global_attrs.items():
        np.testing.assert_array_equal(attrs[name], value, err_msg=name)
    ds.close()


def read_loompy(written: Written) -> None:
    import loompy

    c = written.expected
    legacy = written.version != "3.0.0"

    def text(s: str) -> str:
        """What loompy's reader makes of stored text: 2.0.1 files hold XML-escaped ASCII,
        which it unescapes; of variable-length UTF-8 it keeps only the ASCII characters."""
        return s if legacy else html.unescape(s.encode("ascii", "ignore").decode())

    with h5py.File(written.path, "r") as f:
        fixed = {k for k in f.attrs if f.attrs.get_id(k).dtype.kind == "S"}

    def global_text(name: str, s: str) -> str:
        """2.0.1 globals are root attributes: loompy unescapes fixed-length ones (h5py
        hands them out as bytes) but leaves the XML character references of variable-length
        ones (h5py hands them out as ``str``) as they are."""
        if legacy and name not in fixed:
            return s.encode("ascii", "xmlcharrefreplace").decode()
        return text(s)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        validator = loompy.LoomValidator()
        assert validator.validate(str(written.path)), validator.errors
        with loompy.connect(str(written.path), "r") as lp:
            assert lp.shape == (N, M)
            for name, values in c.layers.items():
                assert_bits(lp.layers[name][:, :], values, name)
            for attrs, got in ((c.row_attrs, lp.ra), (c.col_attrs, lp.ca)):
                assert set(got.keys()) == set(attrs)
                for name, values in attrs.items():
                    assert_attr(got[name], values, name, text)
            assert set(lp.col_graphs.keys()) == set(c.col_graphs)
            for name, (a, b, w) in c.col_graphs.items():
                graph = lp.col_graphs[name]  # scipy COO: edges in order, duplicates kept
                np.testing.assert_array_equal(graph.row, a)
                np.testing.assert_array_equal(graph.col, b)
                np.testing.assert_array_equal(graph.data, w)
            names = lp.attrs.keys()  # an AttributeManager, not a dict
            got_globals = {k: lp.attrs[k] for k in names if k not in LOOMPY_STAMPS}
            got_globals.pop("LOOM_SPEC_VERSION", None)
            assert got_globals.keys() == c.global_attrs.keys()
            for name, value in c.global_attrs.items():
                expected = global_text(name, value) if isinstance(value, str) else value
                np.testing.assert_array_equal(got_globals[name], expected, err_msg=name)


def read_anndata(written: Written) -> None:
    """anndata represents layers, 1-D attributes (obs/var) and 2-D ones (obsm/varm); it
    reads neither graphs nor global attributes, and its strings come through loompy."""
    pytest.importorskip("anndata")
    c = written.expected
    legacy = written.version != "3.0.0"

    def text(s: str) -> str:
        return s if legacy else html.unescape(s.encode("ascii", "ignore").decode())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = anndata_read_loom(
            written.path, X_name="", sparse=False, obs_names="CellID", var_names="Gene"
        )
    assert adata.shape == (M, N)
    assert_bits(adata.X, c.layers[""].T, "X")  # read_loom's dtype="float32" is the matrix's
    assert set(adata.layers) == {k for k in c.layers if k}
    for name, values in c.layers.items():
        if name:
            assert_bits(adata.layers[name], values.T, name)
    assert list(adata.obs_names) == [text(s) for s in c.col_attrs["CellID"]]
    assert list(adata.var_names) == [text(s) for s in c.row_attrs["Gene"]]
    for frame, multi, attrs, index in (
        (adata.obs, adata.obsm, c.col_attrs, "CellID"),
        (adata.var, adata.varm, c.row_attrs, "Gene"),
    ):
        for name, values in attrs.items():
            if name == index:
                continue
            got = frame[name].to_numpy() if values.ndim == 1 else multi[name]
            assert_attr(got, values, name, text)


READERS: dict[str, Callable[[Written], None]] = {
    "loomx-dask": lambda w: read_loomx(w, "auto"),
    "loomx-chunks-None": lambda w: read_loomx(w, None),
    "loompy": read_loompy,
    "anndata": read_anndata,
}


@pytest.mark.parametrize("reader", list(READERS))
def test_reader_sees_the_content(written, reader):
    READERS[reader](written)


def test_content_has_every_awkward_value():
    c = content()
    matrix = c.layers[""]
    assert np.isnan(matrix).any() and np.isinf(matrix).any()
    assert (np.signbit(matrix) & (matrix == 0)).any()
    assert any(not s.isascii() for s in c.row_attrs["Gene"])
    a, b, _ = c.col_graphs["KNN"]
    pairs = list(zip(a.tolist(), b.tolist(), strict=True))
    assert len(set(pairs)) < len(pairs) and pairs != sorted(pairs)


def test_written_files_are_not_shared(tmp_path):
    """Readers never change a written file (loompy's ``r+`` would stamp it)."""
    src = write(content(), tmp_path / "a.loom")
    copy = tmp_path / "b.loom"
    shutil.copy(src, copy)
    read_loompy(Written(copy, content()))
    read_anndata(Written(copy, content()))
    assert copy.read_bytes() == src.read_bytes()
    with h5py.File(copy, "r") as f:
        assert "last_modified" not in f.attrs

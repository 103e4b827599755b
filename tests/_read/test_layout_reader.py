"""loomx._read.layout_reader (read through ``LoomStore.read_layout``): what the layout reader
reports of each file from the wild in tests/data and of a file loompy wrote (shape, spec
version, layers' storage, attributes, graphs, global attributes) equals what h5py finds in
the same file; reading it reads no layer, attribute or graph data.
"""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
from conftest import DATA
from loompy.utils import get_loom_spec_version

from loomx._read.layout import object_address
from loomx._read.store import LoomStore

FILES = sorted(DATA.glob("*.loom"))


def read_layout(path):
    store = LoomStore(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy graph groups, float vertices
            return store.read_layout()
    finally:
        store.close()


def storage_facts(dset: h5py.Dataset) -> tuple:
    return (
        dset.name,
        dset.shape,
        dset.dtype,
        dset.chunks,
        dset.compression,
        dset.compression_opts,
        bool(dset.shuffle),
        bool(dset.fletcher32),
    )


def info_facts(info) -> tuple:
    return (
        info.h5path,
        info.shape,
        info.dtype,
        info.chunks,
        info.compression,
        info.compression_opts,
        info.shuffle,
        info.fletcher32,
    )


@pytest.fixture(params=[*FILES, "loompy"], ids=lambda p: getattr(p, "name", p))
def path(request, loompy_file):
    return loompy_file["path"] if request.param == "loompy" else request.param


def test_shape_version_and_layers_are_h5pys(path):
    layout = read_layout(path)
    with h5py.File(path, "r") as f:
        assert layout.shape == f["matrix"].shape
        assert layout.version == str(get_loom_spec_version(f))
        expected = {"": f["matrix"], **{k: f["layers"][k] for k in f.get("layers", {})}}
        assert set(layout.layers) == set(expected)
        for name, dset in expected.items():
            assert info_facts(layout.layers[name]) == storage_facts(dset), name
            assert layout.layers[name].address == object_address(f, dset.name)


def test_attributes_are_h5pys(path):
    layout = read_layout(path)
    with h5py.File(path, "r") as f:
        for space in ("row_attrs", "col_attrs"):
            attrs = getattr(layout, space)
            assert set(attrs) == set(f[space])
            for name, attr in attrs.items():
                dset = f[space][name]
                assert info_facts(attr.info) == storage_facts(dset), name
                kind = (
                    "string"
                    if h5py.check_string_dtype(dset.dtype) or dset.dtype.kind == "S"
                    else "compound"
                    if dset.dtype.names
                    else "number"
                )
                assert attr.kind == kind, name
                assert attr.fixed_length == (dset.dtype.kind == "S")
                fields = dset.dtype.names
                assert attr.compound_fields == (tuple(fields) if fields else None)
                assert attr.shape == dset.shape + ((len(fields),) if fields else ())


def test_graphs_and_globals_are_h5pys(path):
    layout = read_layout(path)
    with h5py.File(path, "r") as f:
        for space, legacy in (("row_graphs", "row_edges"), ("col_graphs", "col_edges")):
            expected = {
                name: group
                for name_of_group in (legacy, space)
                for name, group in f.get(name_of_group, {}).items()
            }
            graphs = getattr(layout, space)
            assert set(graphs) == set(expected)
            for name, graph in graphs.items():
                assert graph.h5path == expected[name].name
                for part in "abw":
                    dset = expected[name][part]
                    assert info_facts(getattr(graph, part)) == storage_facts(dset)
                assert graph.n_edges == expected[name]["a"].shape[0]
        if isinstance(f.get("attrs"), h5py.Group):
            assert layout.global_attrs_location == "/attrs"
            assert set(layout.global_attrs) == set(f["attrs"])
        else:
            assert layout.global_attrs_location == "/"
            assert set(layout.global_attrs) == set(f.attrs)
        assert not layout.pending and not layout.patches


def test_reading_the_layout_reads_no_data(path, monkeypatch):
    reads: list = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        if not self.name.startswith("/attrs/"):  # global attributes are metadata
            reads.append(self.name)
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    layout = read_layout(path)
    assert reads == []
    assert layout.shape[0] > 0 and np.all(np.array(layout.shape) > 0)

"""Objects reached by hard links only (``loomx._hdf5.links``): a soft or external link where
a writer expects an object is a loomx error, and the file stays byte-identical, on every
write path (region writes, delete, write-back through the transaction, append)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import (
    REGION_SHAPE,
    more_cells,
    region_ds,
    region_file,
    sha256,
    small_file,
)

import loomx
from loomx._hdf5.links import hard_child, hard_get
from loomx._write.transaction import transaction
from loomx.errors import LoomFormatError, LoomNameError

N, M = REGION_SHAPE


def _soft(path: Path, h5path: str) -> None:
    """Move ``h5path`` aside and leave a soft link to it under its name."""
    with h5py.File(path, "r+") as f:
        f.move(h5path, h5path + "_target")
        f[h5path] = h5py.SoftLink(h5path + "_target")


def _external(path: Path, h5path: str) -> None:
    """Replace ``h5path`` by an external link to a copy of it in another file."""
    other = path.with_name("other.h5")
    with h5py.File(path, "r+") as f, h5py.File(other, "w") as g:
        f.copy(f[h5path], g, name="copy")
        del f[h5path]
        f[h5path] = h5py.ExternalLink(other.name, "/copy")


def test_hard_get_walks_every_part_of_the_path(tmp_path):
    path = region_file(tmp_path / "r.loom")
    with h5py.File(path, "r+") as f:
        assert hard_get(f, "/layers/spliced", path).name == "/layers/spliced"
        assert hard_get(f["layers"], "spliced", path).name == "/layers/spliced"
        assert hard_get(f, "/layers/nothing", path) is None
        assert hard_get(f, "/matrix/below", path) is None  # a dataset has no children
        f["alias"] = h5py.SoftLink("/layers")
    with h5py.File(path, "r") as f:
        with pytest.raises(LoomFormatError, match="SoftLink to /layers") as err:
            hard_get(f, "/alias/spliced", path)
        assert err.value.h5path == "/alias" and err.value.path == str(path)


def test_hard_get_refuses_external_links_and_external_storage(tmp_path):
    path = region_file(tmp_path / "r.loom")
    _external(path, "/row_attrs/Len")
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.arange(N, dtype=np.int64).tobytes())
    with h5py.File(path, "r+") as f:
        f.create_dataset("/row_attrs/Raw", (N,), np.int64, external=[(raw.name, 0, N * 8)])
    with h5py.File(path, "r") as f:
        with pytest.raises(LoomFormatError, match=r"ExternalLink to 'other\.h5':/copy"):
            hard_get(f, "/row_attrs/Len", path)
        with pytest.raises(LoomFormatError, match="external or virtual storage"):
            hard_get(f, "/row_attrs/Raw", path)


def test_hard_child_keeps_the_readers_rule(tmp_path):
    path = region_file(tmp_path / "r.loom")
    _external(path, "/row_attrs/Len")
    with h5py.File(path, "r") as f:
        with pytest.raises(LoomFormatError, match="follow_external"):
            hard_child(f["row_attrs"], "Len", path)
        linked = hard_child(f["row_attrs"], "Len", path, follow_external=True)
        assert linked.name == "/row_attrs/Len"
        np.testing.assert_array_equal(linked[:], np.arange(N))


def _region_attr(path: Path) -> None:
    new = xr.Dataset(coords={"Len": ("row", np.arange(10) + 100)})
    loomx.to_loom(new, path, mode="r+", region={"row": slice(0, 10)})


def _region_layer(path: Path) -> None:
    new = region_ds(slice(0, N), slice(10, 20)).drop_vars("matrix")
    loomx.to_loom(new, path, mode="r+", region={"col": slice(10, 20)})


def _write_back(path: Path) -> None:
    ds = xr.Dataset(
        {"matrix": (("row", "col"), np.zeros((N, M), np.float32))},
        coords={"Len": ("row", np.arange(N) + 7)},
    )
    loomx.to_loom(ds, path, mode="a")


def _write_back_layer(path: Path) -> None:
    ds = xr.Dataset({"spliced": (("row", "col"), np.ones((N, M), np.int64))})
    loomx.to_loom(ds, path, mode="a")


WRITES = {
    "region write of an attribute": (_region_attr, "/row_attrs/Len"),
    "region write of a layer": (_region_layer, "/layers/spliced"),
    "region write below a linked group": (_region_layer, "/layers"),
    "delete": (lambda p: loomx.delete(p, "/layers/spliced"), "/layers/spliced"),
    "delete below a linked group": (lambda p: loomx.delete(p, "/col_graphs/KNN"), "/col_graphs"),
    "write-back of an attribute": (_write_back, "/row_attrs/Len"),
    "write-back of a layer": (_write_back_layer, "/layers/spliced"),
}


@pytest.mark.parametrize("link", ["soft", "external"])
@pytest.mark.parametrize("case", list(WRITES))
def test_every_write_path_refuses_links_and_changes_nothing(tmp_path, case, link):
    write, h5path = WRITES[case]
    path = region_file(tmp_path / "r.loom")
    if link == "soft":
        _soft(path, h5path)
    else:
        _external(path, h5path)
    digest = sha256(path)
    with pytest.raises((LoomFormatError, LoomNameError), match="Link"):
        write(path)
    assert sha256(path) == digest


@pytest.mark.parametrize("h5path", ["/layers/spliced", "/col_attrs/CellID", "/layers"])
def test_append_refuses_links_and_changes_nothing(tmp_path, h5path):
    path = small_file(tmp_path / "s.loom")
    _soft(path, h5path)
    digest = sha256(path)
    with pytest.raises(LoomFormatError, match="SoftLink"):
        loomx.append(path, more_cells())
    assert sha256(path) == digest


def test_the_transaction_stages_nothing_through_a_link(tmp_path):
    path = region_file(tmp_path / "r.loom")
    _soft(path, "/layers")
    with h5py.File(path, "r") as f:
        before = sorted(f["layers_target"])
    for stage in (
        lambda txn: txn.stage("/layers/new"),
        lambda txn: txn.stage_patch("/layers/spliced", (0, 0)),
        lambda txn: txn.stage_delete("/layers/spliced"),
    ):
        with (
            pytest.raises(LoomFormatError, match="SoftLink to /layers_target"),
            transaction(str(path), what="a test") as txn,
        ):
            stage(txn)
    with (
        pytest.raises(LoomNameError, match="found nothing"),
        transaction(str(path), what="a test") as txn,
    ):
        txn.stage_delete("/row_attrs/Nothing")
    with h5py.File(path, "r") as f:
        assert sorted(f["layers_target"]) == before
        assert isinstance(f.get("layers", getlink=True), h5py.SoftLink)

"""Hostile and broken files: each gives a clear loomx error naming the file and HDF5 path,
at open where possible, otherwise at the read that meets the damage; pending commits
loomx did not write are ignored with a warning and never touch anything else."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import temp_links

import loomx
from loomx._read.layout import object_address
from loomx.errors import LoomFormatWarning, LoomxError
from loomx.testing import assert_loom_identical
from loomx.testing.fuzz import read_everything
from loomx.testing.hostile import HostileCase, hostile_corpus

IGNORED_PENDING_COMMITS = {
    "pending-commit-foreign-object",
    "pending-commit-foreign-row",
    "pending-commit-path-final",
    "pending-commit-relative-parent",
    "pending-commit-pid-text",
    "pending-commit-group",
}
APPLIED_PENDING_COMMITS = {
    "pending-commit-valid",
    "pending-commit-pid-zero",
    "pending-commit-pid-huge",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, HostileCase]:
    cases = hostile_corpus(tmp_path_factory.mktemp("hostile"))
    return {case.name: case for case in cases}


def _open(path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoomFormatWarning)
        loomx.open_loom(path).close()


def _check_error(case: HostileCase, err: LoomxError) -> None:
    assert isinstance(err, case.error), (case.name, err)
    assert err.path == case.path, (case.name, err)
    assert str(err).startswith(repr(case.path)), (case.name, str(err))
    if case.h5path is not None:
        assert err.h5path == case.h5path, (case.name, err)
    assert err.message, case.name


def test_every_case_gives_its_answer(corpus):
    """Open, then read everything: the expected loomx error at the expected step, with the
    file and HDF5 path in it, or a clean read; never another exception."""
    for case in corpus.values():
        try:
            _open(case.path)
        except LoomxError as err:
            if case.error is None or case.at == "read":
                raise AssertionError(f"{case.name}: failed at open: {err!r}") from err
            _check_error(case, err)
            continue
        assert case.at != "open" or case.error is None, f"{case.name}: opened"
        try:
            read_everything(case.path)
        except LoomxError as err:
            if case.error is None:
                raise AssertionError(f"{case.name}: failed at read: {err!r}") from err
            _check_error(case, err)
            continue
        assert case.error is None or case.at == "any", f"{case.name}: read without error"


def test_flipped_object_type_is_a_loomx_error(tmp_path):
    """The issue's own report: a flipped object header type gave a bare KeyError."""
    from loomx.testing.hostile import small_loom

    path = small_loom(str(tmp_path / "a.loom"))
    with h5py.File(path, "r") as f:
        addr = object_address(f, "/matrix")
    data = bytearray(open(path, "rb").read())  # noqa: SIM115
    data[addr : addr + 16] = bytes(16)  # the object header prefix, zeroed
    open(path, "wb").write(bytes(data))  # noqa: SIM115
    with pytest.raises(loomx.LoomFileError) as info:
        _open(path)
    assert info.value.h5path == "/matrix"
    assert "corrupt" in str(info.value)


def test_truncations_fail_at_open(corpus):
    truncated = [c for c in corpus.values() if c.name.startswith("truncated-at-")]
    assert len(truncated) >= 20
    for case in truncated:
        with pytest.raises(loomx.LoomFileError, match="truncated or corrupt"):
            _open(case.path)


def test_checksummed_chunk_damage_is_an_error_at_read(corpus):
    for name in ("gzip-chunk-flip", "fletcher32-chunk-flip"):
        case = corpus[name]
        with loomx.open_loom(case.path, chunks=None) as ds:
            ds["spliced"].values  # noqa: B018 - other layers read
            with pytest.raises(loomx.LoomFileError) as info:
                ds["matrix"].values  # noqa: B018
        assert info.value.h5path == "/matrix"


def test_absurd_declared_shape_opens_lazily(corpus):
    # the default dask chunks are opened by test_every_case; here the lazy arrays alone
    with loomx.open_loom(corpus["absurd-shape-lazy"].path, chunks=None) as ds:
        assert ds.sizes["row"] == ds.sizes["col"] == 10**7
        np.testing.assert_array_equal(ds["matrix"][:3, 5:7].values, 0)
        assert ds["matrix"][-2:, -2:].values.shape == (2, 2)


def test_nan_and_inf_read_as_stored(corpus):
    with loomx.open_loom(corpus["nan-inf-values"].path) as ds:
        score = ds["Score"].values
    assert np.isnan(score[0]) and score[1] == np.inf and score[2] == -np.inf


def test_links_out_of_the_file_are_refused_by_name(corpus):
    for name in ("external-link-layer", "soft-link-layer"):
        with pytest.raises(loomx.LoomFormatError, match="Link"):
            _open(corpus[name].path)
    with pytest.raises(loomx.LoomFormatError, match="external or virtual"):
        _open(corpus["external-storage-layer"].path)


@pytest.fixture
def linked(tmp_path):
    """A Loom file with three layers stored elsewhere: an external link to a dataset of
    another HDF5 file, a dataset with external raw storage, a virtual dataset."""
    from loomx.testing.hostile import small_loom

    path = small_loom(str(tmp_path / "linked.loom"))
    with h5py.File(path, "r") as f:
        n, m = f["matrix"].shape
    values = np.arange(n * m, dtype="f4").reshape(n, m)
    other, raw = tmp_path / "other.h5", tmp_path / "raw.bin"
    with h5py.File(other, "w") as g:
        g["x"] = values
    values.tofile(raw)
    with h5py.File(path, "r+") as f:
        f["layers/ext"] = h5py.ExternalLink(str(other), "/x")
        f.create_dataset(
            "layers/raw", shape=(n, m), dtype="f4", external=[(str(raw), 0, n * m * 4)]
        )
        layout = h5py.VirtualLayout(shape=(n, m), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "/x", shape=(n, m))
        f.create_virtual_dataset("layers/virtual", layout)
    return path, values, [other, raw]


def test_following_data_stored_elsewhere_is_an_explicit_read_only_opt_in(linked):
    path, values, elsewhere = linked
    with pytest.raises(
        loomx.LoomFormatError, match=r"ExternalLink to .*other\.h5.*follow_external"
    ):
        loomx.open_loom(path)
    with h5py.File(path, "r+") as f:
        del f["layers/ext"]  # the next refusal by name
    with pytest.raises(loomx.LoomFormatError, match="external or virtual") as info:
        loomx.open_loom(path)
    assert info.value.h5path in ("/layers/raw", "/layers/virtual")
    with h5py.File(path, "r+") as f:
        f["layers/ext"] = h5py.ExternalLink(str(elsewhere[0]), "/x")
    for chunks in ("auto", None):
        with loomx.open_loom(path, follow_external=True, chunks=chunks) as ds:
            for name in ("ext", "raw", "virtual"):
                np.testing.assert_array_equal(ds[name].values, values, err_msg=name)
                np.testing.assert_array_equal(ds[name][2:5, 3:9].values, values[2:5, 3:9])
            assert ds["ext"].encoding["loom_path"] == "/layers/ext"
    # writers never write through them: appends and region writes refuse the file
    before = [Path(p).read_bytes() for p in (path, *elsewhere)]
    more = xr.Dataset({"matrix": (("row", "col"), np.ones((values.shape[0], 3), "f4"))})
    elsewhere_refused = "ExternalLink|external or virtual storage"
    with pytest.raises(loomx.LoomFormatError, match=elsewhere_refused):
        loomx.append(path, more, fill_values="auto")
    part = xr.Dataset({"raw": (("row", "col"), np.ones((values.shape[0], 2), "f4"))})
    with pytest.raises(loomx.LoomFormatError, match=elsewhere_refused):
        loomx.to_loom(part, path, mode="r+", region={"col": slice(0, 2)})
    assert [Path(p).read_bytes() for p in (path, *elsewhere)] == before


def test_pending_commits_loomx_did_not_write_are_ignored_and_touch_nothing(corpus, tmp_path):
    valid = corpus["valid"].path
    for name in sorted(IGNORED_PENDING_COMMITS):
        case = corpus[name]
        warns = pytest.warns(LoomFormatWarning, match="ignored a pending loomx commit")
        with warns, loomx.open_loom(case.path) as ds, loomx.open_loom(valid) as ref:
            np.testing.assert_array_equal(ds["Gene"].values, ref["Gene"].values)
        with pytest.warns(LoomFormatWarning, match="ignored a pending loomx commit"):
            assert loomx.recover(case.path) == 0
        assert temp_links(case.path) == [], name
        assert_loom_identical(case.path, valid)


def test_pending_commit_naming_a_missing_object_changes_nothing(corpus):
    case = corpus["pending-commit-missing-object"]
    assert loomx.recover(case.path) == 1
    assert temp_links(case.path) == []
    assert_loom_identical(case.path, corpus["valid"].path)


def test_valid_pending_commits_of_dead_writers_are_applied(corpus):
    for name in sorted(APPLIED_PENDING_COMMITS):
        path = corpus[name].path
        with loomx.open_loom(path) as ds:
            np.testing.assert_array_equal(ds["Score"].values, np.arange(ds.sizes["row"]))
        assert loomx.recover(path) == 1, name
        assert temp_links(path) == []
        with loomx.open_loom(path) as ds:
            np.testing.assert_array_equal(ds["Score"].values, np.arange(ds.sizes["row"]))


def test_odd_pids_count_as_gone():
    from loomx._hdf5.filesystem import owner_alive

    for token in ("0-ab", "-1-ab", f"{10**30}-ab", "me-ab", "", f"{os.getpid()}x-ab"):
        assert not owner_alive(token), token
    assert owner_alive(f"{os.getpid()}-ab")


def test_filter_plugins_are_refused_unless_allowed(corpus):
    path = corpus["filter-plugin-layer"].path
    with pytest.raises(loomx.LoomFormatError, match=r"filter plugin\(s\) \[32015\]"):
        _open(path)
    with loomx.open_loom(path, allow_filter_plugins=True) as ds:  # optional: stored raw
        np.testing.assert_array_equal(ds["spliced"].values, 1)

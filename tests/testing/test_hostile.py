"""loomx.testing.hostile: the corpus is the same bytes on every run, its names are unique,
and every case is what it says as h5py sees it: a file h5py opens, or one whose expected
answer says it is no readable HDF5 (a ``LoomFileError`` at open); damage said to be in
chunk data is where h5py meets it.  Its building blocks (``small_loom``,
``stage_commit``, ``DEAD_PID``) are checked with loompy, h5py and the operating system."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import h5py
import loompy
import numpy as np
import pytest

from loomx.errors import LoomFileError, LoomxError
from loomx.testing.hostile import DEAD_PID, HostileCase, hostile_corpus, small_loom, stage_commit


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, HostileCase]:
    cases = hostile_corpus(tmp_path_factory.mktemp("hostile"))
    return {case.name: case for case in cases}


def h5py_opens(path: str) -> bool:
    try:
        with h5py.File(path, "r"):
            return True
    except (OSError, ValueError, KeyError, RuntimeError):
        return False


def test_corpus_is_large(corpus):
    assert len(corpus) >= 100


def test_names_are_unique_and_name_their_files(tmp_path):
    cases = hostile_corpus(tmp_path, truncations=4)
    names = [case.name for case in cases]
    assert len(names) == len(set(names))
    assert len({case.path for case in cases}) == len(cases)
    for case in cases:
        assert Path(case.path).parent == tmp_path
        assert Path(case.path).name == f"{case.name}.loom", case.name
        assert Path(case.path).is_file(), case.name
        assert case.error is None or issubclass(case.error, LoomxError), case.name
        assert case.at in ("open", "read", "any"), case.name
        assert case.h5path is None or case.h5path.startswith("/"), case.name


TIMESTAMPED = {"virtual-layer", "filter-plugin-layer"}
"""Cases with an object made outside h5py's high-level ``create_dataset`` (HDF5's default
would record its creation time in the object header)."""


def recorded_times(path: str) -> dict[str, int]:
    """The HDF5 objects of ``path`` that record a time in their header (h5py's view)."""
    found: dict[str, int] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str) -> None:
            try:
                info = h5py.h5o.get_info(f[name].id)
            except (OSError, KeyError, RuntimeError, ValueError):
                return  # a damaged object
            stamp = max(info.atime, info.mtime, info.ctime, info.btime)
            if stamp:
                found[name] = stamp

        with contextlib.suppress(OSError, KeyError, RuntimeError, ValueError):
            f.visit(visit)  # as far as a damaged file lets h5py go
    return found


def test_corpus_is_deterministic(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = [(c, Path(c.path).read_bytes()) for c in hostile_corpus(tmp_path / "a", 4)]
    second = [(c, Path(c.path).read_bytes()) for c in hostile_corpus(tmp_path / "b", 4)]
    assert [c.name for c, _ in first] == [c.name for c, _ in second]
    for (a, data_a), (b, data_b) in zip(first, second, strict=True):
        assert (a.error, a.at, a.h5path, a.changes_data) == (
            b.error,
            b.at,
            b.h5path,
            b.changes_data,
        )
        assert data_a == data_b, a.name
        assert not h5py_opens(a.path) or not recorded_times(a.path), a.name


def test_no_object_records_a_time(corpus):
    stamped = {name: recorded_times(corpus[name].path) for name in sorted(TIMESTAMPED)}
    assert stamped == {name: {} for name in TIMESTAMPED}


def test_every_case_opens_in_h5py_or_expects_a_file_error_at_open(corpus):
    unopened = []
    for case in corpus.values():
        if h5py_opens(case.path):
            continue
        unopened.append(case.name)
        assert case.error is not None and issubclass(LoomFileError, case.error), case.name
        assert case.at in ("open", "any"), case.name
    assert {"random-bytes", "empty", "signature-only"} <= set(unopened)


def test_cases_expected_to_read_are_loom_files_for_h5py(corpus):
    readable = [case for case in corpus.values() if case.error is None]
    assert {"valid", "nan-inf-values", "pending-commit-valid"} <= {c.name for c in readable}
    for case in readable:
        with h5py.File(case.path, "r") as f:
            assert f["matrix"].shape == (12, 20), case.name
            f["matrix"][()]
            assert {"layers", "row_attrs", "col_attrs"} <= set(f), case.name


def test_valid_case_passes_loompys_validator(corpus):
    validator = loompy.LoomValidator()
    assert validator.validate(corpus["valid"].path), validator.errors


def test_truncations_are_prefixes_spread_over_the_file(tmp_path):
    cases = hostile_corpus(tmp_path, truncations=5)
    data = Path(cases[0].path).read_bytes()
    truncated = [c for c in cases if c.name.startswith("truncated-at-")]
    assert len(truncated) == 5
    sizes = [int(c.name.rsplit("-", 1)[1]) for c in truncated]
    assert sizes[0] == 1 and sizes[-1] == len(data) - 1
    for case, size in zip(truncated, sizes, strict=True):
        assert Path(case.path).read_bytes() == data[:size]
        assert not h5py_opens(case.path)


def test_chunk_damage_is_in_chunk_data(corpus):
    """h5py opens the file and reads the other layer, and fails on /matrix."""
    for name in ("gzip-chunk-flip", "fletcher32-chunk-flip"):
        case = corpus[name]
        assert case.h5path == "/matrix" and case.at == "read"
        with h5py.File(case.path, "r") as f:
            f["layers/spliced"][()]
            with pytest.raises(OSError):
                f["matrix"][()]


def test_unchecked_damage_changes_values_h5py_reads(corpus):
    with h5py.File(corpus["valid"].path, "r") as f:
        valid = f["matrix"][()]
    for case in corpus.values():
        if case.changes_data:
            with h5py.File(case.path, "r") as f:
                assert not np.array_equal(f["matrix"][()], valid, equal_nan=True), case.name


def test_damage_no_checksum_sees_is_in_the_corpus(corpus):
    assert "raw-data-flip" in corpus
    assert corpus["raw-data-flip"].changes_data


def test_structure_cases_hold_what_their_names_say(corpus):
    with h5py.File(corpus["matrix-1d"].path, "r") as f:
        assert f["matrix"].ndim == 1
    with h5py.File(corpus["layer-wrong-shape"].path, "r") as f:
        assert f["layers/spliced"].shape == (12, 21)
    with h5py.File(corpus["soft-link-layer"].path, "r") as f:
        assert isinstance(f.get("layers/soft", getlink=True), h5py.SoftLink)
    with h5py.File(corpus["external-link-layer"].path, "r") as f:
        assert isinstance(f.get("layers/ext", getlink=True), h5py.ExternalLink)
    with h5py.File(corpus["graph-unequal"].path, "r") as f:
        knn = f["col_graphs/KNN"]
        assert knn["a"].shape != knn["w"].shape
    with h5py.File(corpus["many-attributes"].path, "r") as f:
        assert len(f["row_attrs"]) >= 1000


def test_small_loom_is_valid_for_loompy(tmp_path):
    for version in ("3.0.0", "2.0.1"):
        path = small_loom(str(tmp_path / f"{version}.loom"), version=version)
        validator = loompy.LoomValidator()
        assert validator.validate(path), validator.errors
        with loompy.connect(path, "r") as ds:
            assert ds.shape == (12, 20)
            assert set(ds.layers.keys()) == {"", "spliced"}
            assert ds.col_graphs["KNN"].nnz == 19
            assert version == ds.attrs.LOOM_SPEC_VERSION
    with h5py.File(small_loom(str(tmp_path / "p.loom"), compression=None), "r") as f:
        assert f["matrix"].compression is None and f["matrix"].chunks == (8, 8)


def test_stage_commit_leaves_what_an_interrupted_write_leaves(tmp_path):
    path = small_loom(str(tmp_path / "a.loom"))
    staged = "/row_attrs/.loomx-tmp-x"
    journal = stage_commit(
        path, [("/row_attrs", ".loomx-tmp-x", "Score")], objects={staged: np.arange(12.0)}
    )
    assert str(DEAD_PID) in journal and "0badf00d" in journal and journal.startswith("/")
    with h5py.File(path, "r") as f:
        rows = f[journal].asstr()[()]
        np.testing.assert_array_equal(rows, [["/row_attrs", ".loomx-tmp-x", "Score"]])
        np.testing.assert_array_equal(f[staged][()], np.arange(12.0))


def test_dead_pid_is_no_live_process():
    with pytest.raises(ProcessLookupError):
        os.kill(DEAD_PID, 0)

"""Many readers, one writer: HDF5 file locking keeps writers apart and away from readers
of other processes, and a Dataset opened before a write never mixes old and new data."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import python_process

import loomx
from loomx._hdf5.filesystem import TEMPORARY_TAG
from loomx.testing.hostile import small_loom

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locking")

READ = """
import sys, hashlib, numpy as np, loomx
with loomx.open_loom(sys.argv[1]) as ds:
    ds = ds.load()
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(ds[v].values).tobytes()
                                     for v in sorted(ds.data_vars))).hexdigest()
    if len(sys.argv) > 2:  # hold the file open until told
        print("holding", flush=True)
        sys.stdin.readline()
print(digest, flush=True)
"""

WRITE = """
import os, sys, time, numpy as np, xarray as xr, loomx
path, name, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
ds = xr.Dataset(coords={name: ("col", np.arange(20) + len(name))})
try:
    loomx.to_loom(ds, path, mode="a")
    print("ok", flush=True)
except loomx.LoomxError as err:  # the file is locked by the other writer
    print("refused", type(err).__name__, err, flush=True)
"""


def test_many_readers_at_once(tmp_path):
    path = small_loom(str(tmp_path / "a.loom"))
    readers = [python_process(READ, path) for _ in range(4)]
    done = [r.communicate(timeout=120) for r in readers]
    assert [r.returncode for r in readers] == [0] * 4, [err[-2000:] for _, err in done]
    out = [stdout.strip() for stdout, _ in done]
    assert len(set(out)) == 1 and len(out[0]) == 64


def test_writer_meets_a_reader_of_another_process(tmp_path):
    path = small_loom(str(tmp_path / "a.loom"))
    reader = python_process(READ, path, "hold")
    try:
        assert reader.stdout.readline().strip() == "holding"
        ds = xr.Dataset(coords={"New": ("col", np.arange(20))})
        with pytest.raises(loomx.LoomWriteError, match="another process has this file open"):
            loomx.to_loom(ds, path, mode="a")
    finally:
        reader.communicate("\n", timeout=120)  # stderr is read too
    assert reader.returncode == 0
    loomx.to_loom(ds, path, mode="a")  # once it is closed
    with loomx.open_loom(path) as back:
        np.testing.assert_array_equal(back["New"].values, np.arange(20))


@pytest.mark.parametrize("round_", range(2))
def test_racing_writers_never_both_write(tmp_path, round_):
    path = small_loom(str(tmp_path / "a.loom"))
    start = f"{time.time() + 3.0}"  # after every writer has imported loomx
    names = ["Alpha", "Beta", "Gamma"]
    writers = [python_process(WRITE, path, name, start) for name in names]
    outputs = [w.communicate(timeout=180)[0].strip() for w in writers]  # stderr: kept
    results = dict(zip(names, outputs, strict=True))
    assert all(w.returncode == 0 for w in writers), results
    assert all(r == "ok" or "another process" in r for r in results.values()), results
    done = [n for n, r in results.items() if r == "ok"]
    assert done, results
    with loomx.open_loom(path) as ds:  # every successful write is there, whole
        for name in names:
            assert (name in ds.coords) == (name in done), (name, results)
            if name in done:
                np.testing.assert_array_equal(ds[name].values, np.arange(20) + len(name))
    with h5py.File(path, "r") as f:
        found: list[str] = []
        f.visit(lambda n: found.append(n) if TEMPORARY_TAG in n else None)
        f.visititems(lambda n, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
    assert found == []


def test_dataset_opened_before_a_write_back_never_mixes(tmp_path):
    path = small_loom(str(tmp_path / "a.loom"))
    before = loomx.open_loom(path)
    matrix = before["matrix"].values
    with loomx.open_loom(path) as src:
        changed = src.load()
    changed["spliced"] = changed["spliced"] * 0 + 7
    changed = changed.assign_coords(Score=("row", np.arange(12.0)))
    loomx.to_loom(changed, path, mode="a")
    np.testing.assert_array_equal(before["matrix"].values, matrix)  # not replaced: same
    for name in ("spliced", "Score"):
        with pytest.raises(loomx.LoomFileError, match="changed since it was opened") as info:
            before[name].values  # noqa: B018
        assert info.value.h5path in ("/layers/spliced", "/row_attrs/Score")
    with loomx.open_loom(path) as after:
        np.testing.assert_array_equal(after["spliced"].values, 7)


def test_dataset_opened_before_the_file_was_replaced_never_mixes(tmp_path):
    from loomx._hdf5.files import release_handles

    path = small_loom(str(tmp_path / "a.loom"))
    before = loomx.open_loom(path)
    matrix = before["matrix"][:2].values  # the handle is open: it keeps the old file
    other = tmp_path / "b.loom"
    small_loom(str(other), chunks=(4, 4))
    with loomx.open_loom(other) as src:
        replacement = src.load()
    replacement["matrix"] = replacement["matrix"] + 1
    loomx.to_loom(replacement, path)  # mode="w": a new file renamed into place
    np.testing.assert_array_equal(before["matrix"][:2].values, matrix)  # the old file still
    release_handles(path)  # as a later write in this process does: reopened by name
    with pytest.raises(loomx.LoomFileError, match="the file was replaced"):
        before["matrix"].values  # noqa: B018
    with pytest.raises(loomx.LoomFileError, match="the file was replaced"):
        before["Gene"].values  # noqa: B018
    assert Path(path).exists()

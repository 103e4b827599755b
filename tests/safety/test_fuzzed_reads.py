"""Mutation fuzzing of the read path: only loomx errors escape, nothing crashes or hangs.

``LOOMX_FUZZ_CASES`` sets the number of mutated files (default 2000, a few minutes on
two cores); each is read in a child of a forked worker, under a timeout.  Hangs inside
HDF5's own global heap code (damage to a global heap collection, where HDF5 2.0 loops
forever) are reported apart, as a known defect of the HDF5 library.
"""

from __future__ import annotations

import os
import sys

import h5py
import numpy as np
import pytest

from loomx._hdf5.filesystem import TEMPORARY_TAG
from loomx.testing.fuzz import Fuzzer
from loomx.testing.hostile import DEAD_PID, small_loom, stage_commit

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="forks a worker per case")

CASES = int(os.environ.get("LOOMX_FUZZ_CASES", "2000"))
TIMEOUT = 4  # seconds; a case reads a 30 KB file in milliseconds


def seed_files(folder) -> list[str]:
    """Valid files in every layout the reader meets: chunked gzip 3.0.0, contiguous
    2.0.1, shuffle + fletcher32, and a commit journal of a writer that died."""
    files = [
        small_loom(str(folder / "gzip.loom")),
        small_loom(str(folder / "legacy.loom"), version="2.0.1", chunks=None),
        small_loom(str(folder / "lzf.loom"), compression="lzf", compression_opts=None),
        small_loom(str(folder / "checksums.loom")),
    ]
    with h5py.File(files[-1], "r+") as f:
        values = f["matrix"][()]
        del f["matrix"]
        f.create_dataset("matrix", data=values, chunks=(8, 8), shuffle=True, fletcher32=True)
    journal = small_loom(str(folder / "journal.loom"))
    tag = f"{TEMPORARY_TAG}{DEAD_PID}-0badf00d-"
    stage_commit(
        journal,
        [("/row_attrs", tag + "Score", "Score")],
        objects={f"/row_attrs/{tag}Score": np.arange(12.0)},
    )
    files.append(journal)
    return files


def test_only_loomx_errors_escape(tmp_path):
    with Fuzzer(seed_files(tmp_path), timeout=TIMEOUT, keep=str(tmp_path)) as fuzzer:
        report = fuzzer.run(range(CASES))
    print(f"{report.cases} cases: {dict(report.outcomes)}")
    assert report.cases == CASES
    assert report.outcomes["ok"] > CASES // 20  # mutations that miss every check read fine
    assert sum(v for k, v in report.outcomes.items() if k.startswith("Loom")) > CASES // 4
    assert report.findings == []
    assert len(report.known) <= CASES // 50  # HDF5's own loop on damaged global heaps


def test_recovery_of_damaged_files_gives_loomx_errors(tmp_path):
    files = seed_files(tmp_path)[-1:]  # the file with a commit to finish
    reader = "loomx.testing.fuzz:recover_and_read"
    with Fuzzer(files, timeout=TIMEOUT, keep=str(tmp_path), reader=reader) as fuzzer:
        report = fuzzer.run(range(CASES // 8))
    print(f"{report.cases} cases: {dict(report.outcomes)}")
    assert report.findings == []
    assert len(report.known) <= max(CASES // 50, 1)


KNOWN_SEEDS = {"crash": [81627], "hang": [81084, 81162, 81185]}
"""Cases that segfault HDF5 2.0 (listing a damaged graph group's links, on lzf.loom) or
make it loop forever (a damaged global heap), found by the long run."""


def test_known_crash_and_hang_seeds_give_loomx_errors_when_untrusted(tmp_path, monkeypatch):
    files = seed_files(tmp_path)
    seeds = [*KNOWN_SEEDS["crash"], *KNOWN_SEEDS["hang"]]
    with Fuzzer(files, timeout=TIMEOUT, keep=str(tmp_path)) as fuzzer:
        plain = fuzzer.run(seeds)  # the seeds still do what they are known for
    assert [f["seed"] for f in plain.findings] == KNOWN_SEEDS["crash"]
    assert [k["seed"] for k in plain.known] == KNOWN_SEEDS["hang"]
    monkeypatch.setenv("LOOMX_PROBE_SECONDS", "1.5")  # below the fuzzer's own timeout
    reader = "loomx.testing.fuzz:read_untrusted"
    with Fuzzer(files, timeout=TIMEOUT, keep=str(tmp_path), reader=reader) as fuzzer:
        report = fuzzer.run(seeds)
    print(f"untrusted: {dict(report.outcomes)}")
    assert report.findings == [] and report.known == []
    assert report.outcomes == {"LoomFileError": len(seeds)}

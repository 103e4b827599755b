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
from loomx.testing.fuzz import KNOWN_HANG, Fuzzer, mutate
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


def test_mutations_are_deterministic(tmp_path):
    import random

    data = open(small_loom(str(tmp_path / "a.loom")), "rb").read()  # noqa: SIM115
    first = [mutate(data, random.Random(seed)) for seed in range(50)]
    assert first == [mutate(data, random.Random(seed)) for seed in range(50)]
    assert sum(m != data for m in first) >= 45
    assert all(len(m) <= len(data) for m in first)


def test_fuzzer_reports_what_escapes(tmp_path, monkeypatch):
    """The harness itself: an exception that is not a loomx error, a crash and a hang
    are findings."""
    path = small_loom(str(tmp_path / "a.loom"))
    (tmp_path / "bad_reader.py").write_text(
        "import hashlib, os, signal, time\n"
        "def read(path):\n"
        "    if os.path.basename(path) != 'case.loom':\n"
        "        return  # the worker's warm-up\n"
        "    mode = hashlib.sha256(open(path, 'rb').read()).digest()[0] % 3\n"
        "    if mode == 0: raise KeyError('bare')\n"
        "    if mode == 1: os.kill(os.getpid(), signal.SIGSEGV)\n"
        "    time.sleep(60)\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    with Fuzzer([path], timeout=1, reader="bad_reader:read") as fuzzer:
        report = fuzzer.run(range(9))
    kinds = set(report.outcomes)
    assert report.cases == 9
    assert len(report.findings) + len(report.known) == 9  # a hang may hit a global heap
    assert {"KeyError", "crash (SIGSEGV)"} <= kinds and kinds & {"hang", KNOWN_HANG}, kinds


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

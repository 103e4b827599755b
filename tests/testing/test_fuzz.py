"""loomx.testing.fuzz, the harness itself: ``mutate`` is deterministic for a seed and
changes bytes, the global heaps it tells apart are where h5py's variable-length strings
are stored, and the worker reports every way a read can end.  (loomx's read path under
the fuzzer: tests/safety/test_fuzzed_reads.py.)"""

from __future__ import annotations

import os
import random
import sys

import h5py
import pytest

from loomx.testing.fuzz import (
    KNOWN_HANG,
    Fuzzer,
    global_heap_ranges,
    inside_global_heap,
    mutate,
    read_everything,
    recover_and_read,
)
from loomx.testing.hostile import small_loom

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="forks a worker per case")


@pytest.fixture
def valid(tmp_path) -> tuple[str, bytes]:
    path = small_loom(str(tmp_path / "a.loom"))
    return path, open(path, "rb").read()


def test_mutations_are_deterministic(tmp_path):
    data = open(small_loom(str(tmp_path / "a.loom")), "rb").read()  # noqa: SIM115
    first = [mutate(data, random.Random(seed)) for seed in range(50)]
    assert first == [mutate(data, random.Random(seed)) for seed in range(50)]
    assert sum(m != data for m in first) >= 45
    assert all(len(m) <= len(data) for m in first)


def test_mutations_differ_between_seeds_and_stay_small(valid):
    _, data = valid
    mutated = [mutate(data, random.Random(seed)) for seed in range(40)]
    assert len(set(mutated)) >= 35
    truncated = [m for m in mutated if len(m) < len(data)]
    assert truncated and all(data.startswith(m) for m in truncated)
    for m in mutated:
        if len(m) == len(data):  # in place: a few bytes or ranges, not the whole file
            changed = sum(a != b for a, b in zip(m, data, strict=True))
            assert 0 < changed <= 256, changed


def test_mutations_keep_to_the_anchors_given(valid):
    _, data = valid
    rng = random.Random(3)
    for _ in range(30):
        m = mutate(data, rng, anchors=[len(data) - 1])
        assert m != data
        assert len(m) <= len(data)


def test_global_heaps_hold_h5pys_strings(valid):
    path, data = valid
    ranges = global_heap_ranges(data)
    assert ranges
    with h5py.File(path, "r") as f:
        genes = list(f["row_attrs/Gene"].asstr()[()])
    for gene in genes:
        at = data.find(gene.encode("utf-8"))
        assert at >= 0 and any(a <= at < b for a, b in ranges), gene


def test_inside_global_heap(valid):
    _, data = valid
    start, stop = global_heap_ranges(data)[0]
    inside = bytearray(data)
    inside[start + (stop - start) // 2] ^= 1
    outside = bytearray(data)
    outside[0] ^= 1  # the superblock signature
    assert inside_global_heap(data, bytes(inside))
    assert not inside_global_heap(data, bytes(outside))
    assert not inside_global_heap(data, data[:-1])  # truncated: not in place
    assert not inside_global_heap(data, data)


def test_readers_read_a_valid_file(valid, tmp_path):
    path, _ = valid
    read_everything(path)
    recover_and_read(path)
    with h5py.File(path, "r") as f:  # left readable by h5py
        assert f["matrix"].shape == (12, 20)


@linux_only
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


@linux_only
def test_fuzzer_counts_loomx_errors_and_clean_reads_apart_from_findings(tmp_path):
    """A reader that raises a loomx error naming the file, or reads cleanly, gives no
    finding; one naming no file is a finding; each case's file is the seed's mutation."""
    path = small_loom(str(tmp_path / "a.loom"))
    (tmp_path / "checking_reader.py").write_text(
        "import os, random\n"
        "from loomx.errors import LoomFormatError\n"
        "from loomx.testing.fuzz import mutate\n"
        f"SOURCE = open({path!r}, 'rb').read()\n"
        "def read(path):\n"
        "    if os.path.basename(path) != 'case.loom':\n"
        "        return\n"
        "    data = open(path, 'rb').read()\n"
        "    seed = next(s for s in range(6) if mutate(SOURCE, random.Random(s)) == data)\n"
        "    if seed % 3 == 1: raise LoomFormatError('bad', path=path, h5path='/matrix')\n"
        "    if seed % 3 == 2: raise LoomFormatError('bad, no file')\n"
    )
    env_path = f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", env_path)
        with Fuzzer([path], timeout=20, keep=str(tmp_path), reader="checking_reader:read") as fz:
            report = fz.run(range(6))
    assert report.cases == 6
    assert report.outcomes == {
        "ok": 2,
        "LoomFormatError": 2,
        "error naming no file (LoomFormatError)": 2,
    }
    assert sorted(f["seed"] for f in report.findings) == [2, 5]
    for finding in report.findings:
        kept = open(finding["file"], "rb").read()  # noqa: SIM115 - small
        assert kept == mutate(open(path, "rb").read(), random.Random(finding["seed"]))  # noqa: SIM115

"""A fresh process loads loomx's compiled kernels from numba's on-disk cache: after one
process has run them, the next compiles none of them (numba's own cache statistics)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import loomx
from loomx._hdf5 import kernels

WORKLOAD = textwrap.dedent(
    """
    import importlib, json, sys
    import numpy as np
    import loomx
    import loomx._hdf5.kernels
    from numba.core.registry import CPUDispatcher

    source, target = sys.argv[1], sys.argv[2]
    loomx._hdf5.kernels.load()  # small first reads would run in Python before it
    ds = loomx.open_loom(source)
    ds["matrix"].sum("col").compute()  # the decode kernel and the fused sum
    ds["matrix"].std("col").compute()  # the fused moments
    loomx.calculate_qc_metrics(ds)  # the QC kernels, top-N sums included
    ds["log1p"] = np.log1p(ds["matrix"])
    loomx.to_loom(ds, target)  # the encode kernel
    report = {}
    for module in ("loomx._hdf5.kernels", "loomx._read.layer", "loomx.ops.qc_kernels"):
        for name, f in vars(importlib.import_module(module)).items():
            if isinstance(f, CPUDispatcher) and f.signatures:
                report[f"{module}.{name}"] = {
                    "hits": sum(f.stats.cache_hits.values()),
                    "misses": sum(f.stats.cache_misses.values()),
                    "cache": str(f.stats.cache_path),
                }
    print(json.dumps(report))
    """
)


def run_workload(source: str, target: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", WORKLOAD, source, target],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not kernels.available(), reason="the compiled kernels are off here")
def test_a_second_fresh_process_compiles_no_kernel(tmp_path):
    source = loomx.testing.make_counts_loom(tmp_path / "counts.loom", 300, 400, seed=1)
    run_workload(source, str(tmp_path / "first.loom"))  # compiles what is not cached yet
    second = run_workload(source, str(tmp_path / "second.loom"))
    used = {
        "_decode_compiled",
        "_encode_compiled",
        "_moments_along_rows",
        "_accumulate",
        "_top_sums",
    }
    assert used <= {name.rsplit(".", 1)[1] for name in second}
    for name, stats in second.items():
        assert stats["misses"] == 0 and stats["hits"] >= 1, (name, stats)

"""``loomx qc`` against one loomx full pass, loompy and anndata + scanpy, in one run.

Each method runs in a fresh process (``python -m benchmarks.reports.qc_report --child METHOD
FILE OUT``) while the parent samples the summed RSS of the process tree; loomx methods run twice
and report the second run (the first pays one-time costs: imports, thread pools, the
compiled kernel loaded from numba's cache), loompy and anndata once.  Every method's cell
and gene totals are checked against numpy on row bands read with h5py.

    python -m benchmarks.reports.qc_report /work/bench-data/pbmc_20000x30000.loom

prints a markdown table (wall seconds, ratio to the loomx full pass, peak RSS) and the
machine load (``uptime``) before and after.  With ``--methods interleaved`` it runs a loomx
full pass and the qc metrics alternately in one process (7 rounds after a warm-up) and
prints the ratio of their medians; the last round's results are checked the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__: list[str] = []

METHODS = {
    "loomx_full_pass": 'loomx one full pass, `m.sum("col", skipna=False)` (threads)',
    "loomx_qc": "loomx `calculate_qc_metrics(ds)`: both axes, one read (threads)",
    "loomx_qc_cli": "`loomx qc FILE` on a copy: metrics + write-back (threads)",
    "loompy_map": "loompy `ds.map([...], axis=1)` + `ds.map([...], axis=0)`: same metrics",
    "anndata_scanpy": "`anndata.read_loom` + `scanpy.pp.calculate_qc_metrics`",
}
MITO = ("MT-", "mt-")
CHILD_MODULE = "benchmarks.reports.qc_report"
"""This script as a module: each method runs in ``python -P -m CHILD_MODULE --child ...``."""


def _loomx_full_pass(path: str) -> dict[str, np.ndarray]:
    import loomx

    ds = loomx.open_loom(path)
    return {"gene_totals": ds["matrix"].sum("col", skipna=False).values}


def _loomx_qc(path: str) -> dict[str, np.ndarray]:
    import loomx
    from loomx._read.backend import chunk_layers
    from loomx._read.chunking import band_width

    lazy = loomx.open_loom(path, chunks=None)
    var = lazy["matrix"]
    width = band_width(var.shape[0], var.dtype.itemsize, var.encoding["chunksizes"][1])
    ds = chunk_layers(lazy, {"row": -1, "col": width})
    cells, genes = loomx.calculate_qc_metrics(ds)
    return {
        "cell_totals": cells["total_counts"].values,
        "gene_totals": genes["total_counts"].values,
        "n_genes": cells["n_genes_by_counts"].values,
    }


def _loomx_qc_cli(path: str) -> dict[str, np.ndarray]:
    import h5py

    from loomx.ops.qc import qc_file

    qc_file(path)
    with h5py.File(path, "r") as f:
        return {
            "cell_totals": f["col_attrs/total_counts"][:],
            "gene_totals": f["row_attrs/total_counts"][:],
            "n_genes": f["col_attrs/n_genes_by_counts"][:],
        }


def _loompy_map(path: str) -> dict[str, np.ndarray]:
    import loompy

    with loompy.connect(path, "r") as ds:
        mito = np.array([str(g).startswith(MITO) for g in ds.ra["Gene"]])

        def top(n: int) -> Any:
            def pct(x: np.ndarray) -> float:
                total = x.sum()
                return float(np.sort(x)[::-1][:n].sum() / total * 100) if total else np.nan

            pct.__name__ = f"top{n}"
            return pct

        def mito_total(x: np.ndarray) -> float:
            return float(x[mito].sum())

        cell_funcs = [np.sum, np.count_nonzero, mito_total, *(top(n) for n in (50, 100, 200, 500))]
        cells = ds.map(cell_funcs, axis=1)

        def sumsq(x: np.ndarray) -> float:
            return float(np.square(x, dtype=np.float64).sum())

        genes = ds.map([np.sum, np.count_nonzero, sumsq], axis=0)
    return {"cell_totals": cells[0], "gene_totals": genes[0], "n_genes": cells[1]}


def _anndata_scanpy(path: str) -> dict[str, np.ndarray]:
    import warnings

    import anndata
    import scanpy as sc

    reader = getattr(getattr(anndata, "io", None), "read_loom", None) or anndata.read_loom
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = reader(path, X_name="", sparse=True)
        adata.var["mt"] = adata.var_names.str.startswith(MITO)
        obs, var = sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"])
    return {
        "cell_totals": obs["total_counts"].to_numpy(),
        "gene_totals": var["total_counts"].to_numpy(),
        "n_genes": obs["n_genes_by_counts"].to_numpy(),
    }


RUNS = {
    "loomx_full_pass": (_loomx_full_pass, 2),
    "loomx_qc": (_loomx_qc, 2),
    "loomx_qc_cli": (_loomx_qc_cli, 2),
    "loompy_map": (_loompy_map, 1),
    "anndata_scanpy": (_anndata_scanpy, 1),
}


def interleaved(path: str, rounds: int = 7) -> dict[str, np.ndarray]:
    """A full pass and the qc metrics alternately, ``rounds`` times each after a warm-up of
    both: the ratio of their medians is robust to the load of a shared machine drifting."""
    import loomx

    ds = loomx.open_loom(path)
    passes, qcs = [], []
    for k in range(rounds + 1):
        start = time.perf_counter()
        gene_totals = ds["matrix"].sum("col", skipna=False).values
        middle = time.perf_counter()
        metrics = _loomx_qc(path)
        end = time.perf_counter()
        if k:  # round 0 is the warm-up
            passes.append(middle - start)
            qcs.append(end - middle)
    checked = {"pass_gene_totals": gene_totals, **{f"qc_{k}": v for k, v in metrics.items()}}
    return {"pass_times": np.array(passes), "qc_times": np.array(qcs), **checked}


def child(method: str, path: str, out: str) -> None:
    """Run ``method`` in this (fresh) process and write its times and results to ``out``."""
    if method == "interleaved":
        result = interleaved(path)
        np.savez(out, times=np.array([np.median(result["qc_times"])]), **result)
        return
    func, runs = RUNS[method]
    times = []
    result: dict[str, np.ndarray] = {}
    for _ in range(runs):
        start = time.perf_counter()
        result = func(path)
        times.append(time.perf_counter() - start)
    np.savez(out, times=np.array(times), **result)


def _tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


def measure(method: str, path: str, scratch: str) -> dict[str, Any]:
    """Run ``method`` in a fresh process; its wall times, peak tree RSS and results."""
    out = os.path.join(scratch, f"{method}.npz")
    target = path
    if method == "loomx_qc_cli":
        target = os.path.join(scratch, "copy.loom")
        shutil.copyfile(path, target)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cmd = [sys.executable, "-P", "-m", CHILD_MODULE, "--child", method, target, out]
    proc = subprocess.Popen(cmd, env=env)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_mb(proc.pid))
        time.sleep(0.02)
    if proc.returncode:
        raise RuntimeError(f"{method} failed with exit status {proc.returncode}")
    data = dict(np.load(out))
    return {"times": data.pop("times").tolist(), "peak_rss_mb": peak, "result": data}


def reference(path: str) -> dict[str, np.ndarray]:
    """Cell and gene totals and genes per cell from row bands read with h5py."""
    import h5py

    with h5py.File(path, "r") as f:
        m = f["matrix"]
        gene_totals = np.zeros(m.shape[0])
        cell_totals = np.zeros(m.shape[1])
        n_genes = np.zeros(m.shape[1], dtype=np.int64)
        for start in range(0, m.shape[0], 1024):
            band = m[start : start + 1024].astype(np.float64)
            gene_totals[start : start + len(band)] = band.sum(axis=1)
            cell_totals += band.sum(axis=0)
            n_genes += np.count_nonzero(band, axis=0)
    return {"gene_totals": gene_totals, "cell_totals": cell_totals, "n_genes": n_genes}


def check_interleaved(result: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """The last round's full pass (``pass_gene_totals``) and qc metrics (``qc_*``) of
    :func:`interleaved` must match the h5py reference."""
    np.testing.assert_allclose(result["pass_gene_totals"], expected["gene_totals"], rtol=1e-5)
    for key in ("cell_totals", "gene_totals", "n_genes"):
        np.testing.assert_allclose(result[f"qc_{key}"], expected[key], rtol=1e-5, err_msg=key)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument(
        "--methods",
        nargs="*",
        default=list(METHODS),
        help=f"of {list(METHODS)}; or 'interleaved' alone: full pass and qc alternately",
    )
    parser.add_argument("--child", metavar="METHOD")
    parser.add_argument("out", nargs="?")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.path, args.out)
        return
    if args.methods == ["interleaved"]:
        loads = [("before", _uptime())]
        with tempfile.TemporaryDirectory() as tmp:
            res = measure("interleaved", args.path, tmp)["result"]
        loads.append(("after", _uptime()))
        passes, qcs = res.pop("pass_times"), res.pop("qc_times")
        check_interleaved(res, reference(args.path))
        print(f"file: {args.path}, {len(passes)} rounds after a warm-up, alternating\n")
        print(f"full pass s: {np.round(passes, 2).tolist()}, median {np.median(passes):.2f}")
        print(f"qc metrics s: {np.round(qcs, 2).tolist()}, median {np.median(qcs):.2f}")
        print(f"ratio of medians: {np.median(qcs) / np.median(passes):.2f}; ratio per round:")
        print(f"{np.round(qcs / passes, 2).tolist()}\n")
        for when, text in loads:
            print(f"load {when}: `{text}`")
        return
    expected = reference(args.path)
    with open(args.path, "rb") as fh:  # warm the page cache: every method reads from memory
        while fh.read(2**24):
            pass
    loads = [("before", _uptime())]
    results = {}
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(args.path))) as tmp:
        for method in args.methods:
            print(f"measuring {method} ...", file=sys.stderr)
            results[method] = measure(method, args.path, tmp)
            for key, values in results[method].pop("result").items():
                np.testing.assert_allclose(values, expected[key], rtol=1e-5, err_msg=method)
    loads.append(("after", _uptime()))
    base = results.get("loomx_full_pass", {}).get("times", [None])[-1]
    qc = results.get("loomx_qc", {}).get("times", [None])[-1]
    print(f"file: {args.path}\n")
    print("| method | wall s | x loomx full pass | loomx qc faster by | peak RSS MB |")
    print("| --- | --- | --- | --- | --- |")
    for method, res in results.items():
        wall = res["times"][-1]
        ratio = f"{wall / base:.2f}" if base else "-"
        speedup = f"{wall / qc:.1f}x" if qc and not method.startswith("loomx") else "-"
        print(
            f"| {METHODS[method]} | {wall:.2f} | {ratio} | {speedup} | {res['peak_rss_mb']:.0f} |"
        )
    print()
    for when, text in loads:
        print(f"load {when}: `{text}`")
    print(json.dumps({m: r["times"] for m, r in results.items()}), file=sys.stderr)


if __name__ == "__main__":
    main()

"""normalize -> highly variable genes -> PCA, and the whole ``loomx process``, against one
loomx full pass and the peers, in one run.

Each method runs in a fresh process (``python -m benchmarks.reports.pipeline_report --child
METHOD FILE OUT``) while the parent samples the summed RSS of the process tree:

- ``loomx_full_pass``: one plain pass, ``m.sum("col")`` (the yardstick of a pass);
- ``loomx_core``: ``pp.normalize_total(target_sum=1e4)`` -> ``pp.log1p`` ->
  ``pp.highly_variable_genes(n_top_genes=2000)`` -> ``pp.pca(n_comps=50)`` and ``X_pca``
  computed (3 passes: gene sums, Gram matrix, projection);
- ``loomx_process``: ``loomx process`` on a copy (every step, written back);
- ``scanpy_memory``: scanpy in memory (CSR) on the first ``--subsample`` cells, the same
  steps (``svd_solver="arpack"``);
- ``scanpy_dask``: scanpy on dask arrays over an h5ad CSR copy (``loomx convert``), read
  with ``anndata.experimental.read_elem_lazy``, the same steps (``covariance_eigh``).

Each prints wall seconds, passes over the matrix (loomx), GB inflated per second (the
dense float bytes a pass decompresses) and peak RSS, and the machine load before and after.
The benchmark file (counts as loompy stores them: float32, gzip, written by loomx in
parallel bands) is made with ``--make CELLS GENES``:

    python -m benchmarks.reports.pipeline_report /work/bench-data/p500k.loom --make 500000 27998
    python -m benchmarks.reports.pipeline_report /work/bench-data/p500k.loom --subsample 100000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reports.qc_report import _tree_rss_mb, _uptime

__all__: list[str] = []

CHILD_MODULE = "benchmarks.reports.pipeline_report"
METHODS = {
    "loomx_full_pass": ("loomx one full pass", 1),
    "loomx_core": ("loomx normalize -> log1p -> HVG -> PCA (X_pca computed)", 3),
    "loomx_process": ("`loomx process` on a copy: every step, written back", None),
    "scanpy_memory": ("scanpy in memory (CSR), first --subsample cells", None),
    "scanpy_dask": ("scanpy on dask over an h5ad CSR copy", None),
}


# ------------------------------------------------------------------------------ the data


def _band(block: np.ndarray, block_info: Any = None, n_clusters: int = 8) -> np.ndarray:
    """Negative-binomial counts of one band of cells: clusters with marker genes."""
    n_genes, width = block.shape
    start = block_info[0]["array-location"][1][0]
    rng = np.random.default_rng(start)
    genes = np.random.default_rng(0)
    base = genes.lognormal(-1.5, 1.5, n_genes)
    markers = genes.integers(0, n_clusters, n_genes)
    boost = np.where(genes.random(n_genes) < 0.1, genes.lognormal(1.5, 0.5, n_genes), 1.0)
    clusters = rng.integers(0, n_clusters, width)
    library = rng.lognormal(0.0, 0.4, width)
    mu = base[:, None] * np.where(markers[:, None] == clusters, boost[:, None], 1.0) * library
    return rng.poisson(rng.gamma(1 / 0.3, mu * 0.3)).astype(np.float32)


def make(path: str, n_cells: int, n_genes: int) -> None:
    """Write the benchmark counts with loomx: bands of cells generated and written in
    parallel (dask), float32, loompy's gzip chunks."""
    import dask.array as da

    import loomx

    width = 512
    template = da.zeros((n_genes, n_cells), chunks=(n_genes, width), dtype=np.float32)
    matrix = template.map_blocks(_band, dtype=np.float32)
    genes = np.array([f"MT-{i}" if i < 13 else f"GENE{i}" for i in range(n_genes)], dtype=object)
    cells = np.array([f"cell{j:07d}" for j in range(n_cells)], dtype=object)
    ds = loomx.from_arrays(matrix, {"Gene": genes}, {"CellID": cells})
    loomx.to_loom(ds, path)


# ------------------------------------------------------------------------------- methods


def _loomx_full_pass(path: str, _: int) -> dict[str, np.ndarray]:
    import loomx

    return {"gene_totals": loomx.open_loom(path)["matrix"].sum("col", skipna=False).values}


def _loomx_core(path: str, _: int) -> dict[str, np.ndarray]:
    import loomx

    ds = loomx.open_loom(path)
    ds = loomx.pp.log1p(loomx.pp.normalize_total(ds, target_sum=1e4))
    ds = loomx.pp.highly_variable_genes(ds, n_top_genes=2000)
    ds = loomx.pp.pca(ds, n_comps=50)
    return {"ratio": np.asarray(ds.attrs["pca_variance_ratio"]), "x_pca": ds["X_pca"].values}


def _loomx_process(path: str, _: int) -> dict[str, np.ndarray]:
    cmd = [str(Path(sys.executable).with_name("loomx")), "process", path, "-q"]
    subprocess.run(cmd, check=True)
    return {}


def _scanpy_steps(ad: Any, solver: str) -> dict[str, np.ndarray]:
    import scanpy as sc

    sc.pp.normalize_total(ad, target_sum=1e4)
    sc.pp.log1p(ad)
    sc.pp.highly_variable_genes(ad, n_top_genes=2000)
    sc.pp.pca(ad, n_comps=50, svd_solver=solver, mask_var="highly_variable")
    return {"ratio": np.asarray(ad.uns["pca"]["variance_ratio"])}


def _scanpy_memory(path: str, subsample: int) -> dict[str, np.ndarray]:
    import anndata
    import h5py
    import scipy.sparse as sp

    with h5py.File(path, "r") as f:
        m = f["matrix"]
        k = min(subsample, m.shape[1])
        parts = [sp.csr_matrix(m[:, s : s + 4096].T) for s in range(0, k, 4096)]
    ad = anndata.AnnData(sp.vstack(parts).tocsr())
    return _scanpy_steps(ad, "arpack")


def _scanpy_dask(path: str, _: int) -> dict[str, np.ndarray]:
    import anndata
    import h5py
    from anndata.experimental import read_elem_lazy

    h5ad = path + ".h5ad"
    f = h5py.File(h5ad, "r")
    x = read_elem_lazy(f["X"], chunks=(10_000, -1))
    ad = anndata.AnnData(x)
    return _scanpy_steps(ad, "covariance_eigh")


RUNS = {
    "loomx_full_pass": _loomx_full_pass,
    "loomx_core": _loomx_core,
    "loomx_process": _loomx_process,
    "scanpy_memory": _scanpy_memory,
    "scanpy_dask": _scanpy_dask,
}


def child(method: str, path: str, out: str, subsample: int) -> None:
    import anndata  # noqa: F401  (imports are not timed)
    import scanpy  # noqa: F401

    import loomx  # noqa: F401

    start = time.perf_counter()
    result = RUNS[method](path, subsample)
    np.savez(out, seconds=np.array(time.perf_counter() - start), **result)


def measure(method: str, path: str, scratch: str, subsample: int) -> dict[str, Any]:
    out = os.path.join(scratch, f"{method}.npz")
    target = path
    if method == "loomx_process":
        target = os.path.join(scratch, "copy.loom")
        shutil.copyfile(path, target)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cmd = [sys.executable, "-P", "-m", CHILD_MODULE, "--child", method, target, out]
    proc = subprocess.Popen([*cmd, "--subsample", str(subsample)], env=env)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_mb(proc.pid))
        time.sleep(0.05)
    if proc.returncode:
        return {"seconds": float("nan"), "peak_rss_mb": peak, "failed": proc.returncode}
    data = dict(np.load(out))
    return {"seconds": float(data.pop("seconds")), "peak_rss_mb": peak, "result": data}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?")
    parser.add_argument("--make", nargs=2, type=int, metavar=("CELLS", "GENES"))
    parser.add_argument("--subsample", type=int, default=100_000)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "FILE", "OUT"))
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, args.subsample)
        return
    if args.make:
        make(args.path, *args.make)
    if "scanpy_dask" in args.methods and not os.path.exists(args.path + ".h5ad"):
        import loomx.interop.conversion as conversion

        conversion.convert(args.path, args.path + ".h5ad")
    import h5py

    with h5py.File(args.path, "r") as f:
        n_genes, n_cells = f["matrix"].shape
    gb = n_genes * n_cells * 4 / 1e9
    print(f"{args.path}: {n_genes} genes x {n_cells} cells, {gb:.2f} GB as float32")
    print(f"load before: {_uptime()}")
    print("| method | seconds | passes | GB/s inflated per pass | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods:
            label, passes = METHODS[method]
            got = measure(method, args.path, scratch, args.subsample)
            seconds = got["seconds"]
            rate = f"{gb * passes / seconds:.2f}" if passes and seconds == seconds else "-"
            print(
                f"| {label} | {seconds:.1f} | {passes or '-'} | {rate} | {got['peak_rss_mb']:.0f} |"
            )
    print(f"load after: {_uptime()}")


if __name__ == "__main__":
    main()

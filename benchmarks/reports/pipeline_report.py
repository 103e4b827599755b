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
- ``scanpy_dask``: scanpy on dask arrays over an h5ad CSR copy (``--h5ad``, default
  ``FILE.h5ad``; made by :func:`make_h5ad` when missing, one band of cells at a time), read
  with ``anndata.experimental.read_elem_lazy``, the same steps (``covariance_eigh``).

Each prints wall seconds, passes over the matrix (loomx), GB inflated per second (the
dense float bytes a pass decompresses) and peak RSS, and the machine load before and after;
each method's log lines say how far it got.  ``--max-rss-mb`` and ``--max-seconds`` stop a
method (its process tree killed) that passes either.  The benchmark file (counts as loompy
stores them: float32, gzip, written by loomx in parallel bands) is made with
``--make CELLS GENES``:

    python -m benchmarks.reports.pipeline_report /work/bench-data/p500k.loom --make 500000 27998
    python -m benchmarks.reports.pipeline_report /work/bench-data/p500k.loom --subsample 100000
"""

from __future__ import annotations

import argparse
import contextlib
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


def make_h5ad(path: str, target: str, width: int = 4096) -> None:
    """An h5ad copy of ``path`` with CSR ``X`` (cells x genes, float32, int32 indices, not
    compressed: anndata's default), written band of cells by band of cells, so that only one
    band is ever held (``loomx convert`` builds the whole CSR matrix in memory)."""
    import anndata
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    import loomx

    ds = loomx.open_loom(path)
    n_genes, n_cells = ds["matrix"].shape
    obs = pd.DataFrame(index=ds["CellID"].values.astype(str))
    var = pd.DataFrame(index=ds["Gene"].values.astype(str))
    tmp = target + ".partial"
    anndata.AnnData(obs=obs, var=var).write_h5ad(tmp)
    with h5py.File(tmp, "a") as f:
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0"})
        x.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
        data = x.create_dataset("data", (0,), np.float32, maxshape=(None,), chunks=(1 << 18,))
        indices = x.create_dataset("indices", (0,), np.int32, maxshape=(None,), chunks=(1 << 18,))
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        for start in range(0, n_cells, width):
            stop = min(start + width, n_cells)
            band = sp.csr_matrix(np.ascontiguousarray(ds["matrix"][:, start:stop].values.T))
            at = int(indptr[start])
            data.resize((at + band.nnz,))
            indices.resize((at + band.nnz,))
            data[at:] = band.data
            indices[at:] = band.indices
            indptr[start + 1 : stop + 1] = at + band.indptr[1:]
        x.create_dataset("indptr", data=indptr)
    ds.close()
    os.replace(tmp, target)


def _step(name: str, start: float) -> None:
    """How far a method got (its output goes to the run's log)."""
    print(f"    {name} at {time.perf_counter() - start:.1f} s", flush=True)


# ------------------------------------------------------------------------------- methods


def _loomx_full_pass(path: str, _: int) -> dict[str, np.ndarray]:
    import loomx

    return {"gene_totals": loomx.open_loom(path)["matrix"].sum("col", skipna=False).values}


def _loomx_core(path: str, _: int) -> dict[str, np.ndarray]:
    import dask

    import loomx

    start = time.perf_counter()
    ds = loomx.open_loom(path)
    ds = loomx.pp.log1p(loomx.pp.normalize_total(ds, target_sum=1e4))
    ds = loomx.pp.highly_variable_genes(ds, n_top_genes=2000)
    # the gene pass, timed on its own; its results kept (else pca would compute them again)
    rows = [name for name, var in ds.variables.items() if var.dims == ("row",) and var.chunks]
    values = dask.compute(*[ds.variables[name].data for name in rows])
    for name, value in zip(rows, values, strict=True):
        ds.variables[name].data = value
    _step("highly variable genes", start)
    ds = loomx.pp.pca(ds, n_comps=50)
    _step("PCA fit (Gram pass)", start)
    x_pca = ds["X_pca"].values
    _step("X_pca (projection pass)", start)
    return {"ratio": np.asarray(ds.attrs["pca_variance_ratio"]), "x_pca": x_pca}


def _loomx_process(path: str, _: int) -> dict[str, np.ndarray]:
    cmd = [str(Path(sys.executable).with_name("loomx")), "process", path]  # step times shown
    subprocess.run(cmd, check=True)
    return {}


def _scanpy_steps(ad: Any, solver: str) -> dict[str, np.ndarray]:
    import scanpy as sc

    start = time.perf_counter()
    sc.pp.normalize_total(ad, target_sum=1e4)
    sc.pp.log1p(ad)
    sc.pp.highly_variable_genes(ad, n_top_genes=2000)
    _step("normalize, log1p, highly variable genes", start)
    sc.pp.pca(ad, n_comps=50, svd_solver=solver, mask_var="highly_variable")
    _step("PCA", start)
    return {"ratio": np.asarray(ad.uns["pca"]["variance_ratio"])}


def _scanpy_memory(path: str, subsample: int) -> dict[str, np.ndarray]:
    import anndata
    import h5py
    import scipy.sparse as sp

    start = time.perf_counter()
    with h5py.File(path, "r") as f:
        m = f["matrix"]
        k = min(subsample, m.shape[1])
        parts = [sp.csr_matrix(m[:, s : min(s + 4096, k)].T) for s in range(0, k, 4096)]
    # one CSR matrix from the bands, each array joined on its own (not twice the matrix)
    shape = (k, parts[0].shape[1])
    offsets = np.cumsum([0] + [p.nnz for p in parts])
    indptr = np.concatenate(
        [[0], *(p.indptr[1:] + n for p, n in zip(parts, offsets[:-1], strict=True))]
    )
    datas, positions = [p.data for p in parts], [p.indices for p in parts]
    del parts
    data = np.concatenate(datas)
    del datas
    indices = np.concatenate(positions)
    del positions
    ad = anndata.AnnData(sp.csr_matrix((data, indices, indptr), shape=shape))
    del data, indices
    _step(f"read {k} cells into CSR ({ad.X.nnz} non-zeros)", start)
    return _scanpy_steps(ad, "arpack")


def _scanpy_dask(h5ad: str, _: int) -> dict[str, np.ndarray]:
    import anndata
    import h5py
    from anndata.experimental import read_elem_lazy

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


def measure(
    method: str,
    path: str,
    scratch: str,
    subsample: int,
    h5ad: str,
    max_rss_mb: float = float("inf"),
    max_seconds: float = float("inf"),
) -> dict[str, Any]:
    """Run ``method`` in a fresh process; stopped (its process tree killed) when its RSS
    passes ``max_rss_mb`` or it runs longer than ``max_seconds``."""
    out = os.path.join(scratch, f"{method}.npz")
    target = h5ad if method == "scanpy_dask" else path
    if method == "loomx_process":
        target = os.path.join(scratch, "copy.loom")
        shutil.copyfile(path, target)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cmd = [sys.executable, "-P", "-m", CHILD_MODULE, "--child", method, target, out]
    proc = subprocess.Popen([*cmd, "--subsample", str(subsample)], env=env)
    peak, start, stopped = 0.0, time.perf_counter(), ""
    while proc.poll() is None:
        peak = max(peak, _tree_rss_mb(proc.pid))
        elapsed = time.perf_counter() - start
        if peak > max_rss_mb or elapsed > max_seconds:
            stopped = f"stopped at {elapsed:.0f} s, {peak:.0f} MB"
            _kill_tree(proc.pid)
            proc.wait()
            break
        time.sleep(0.05)
    if stopped or proc.returncode:
        print(f"    {method}: {stopped or f'exit code {proc.returncode}'}", flush=True)
        return {"seconds": float("nan"), "peak_rss_mb": peak, "failed": stopped or "error"}
    data = dict(np.load(out))
    return {"seconds": float(data.pop("seconds")), "peak_rss_mb": peak, "result": data}


def _kill_tree(pid: int) -> None:
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        proc = psutil.Process(pid)
        for p in [*proc.children(recursive=True), proc]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?")
    parser.add_argument("--make", nargs=2, type=int, metavar=("CELLS", "GENES"))
    parser.add_argument("--subsample", type=int, default=100_000)
    parser.add_argument("--h5ad", help="the CSR copy for scanpy on dask (default: FILE.h5ad)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "FILE", "OUT"))
    parser.add_argument("--max-rss-mb", type=float, default=float("inf"), help="stop a method")
    parser.add_argument("--max-seconds", type=float, default=float("inf"), help="stop a method")
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, args.subsample)
        return
    if args.make:
        make(args.path, *args.make)
    h5ad = args.h5ad or args.path + ".h5ad"
    if "scanpy_dask" in args.methods and not os.path.exists(h5ad):
        make_h5ad(args.path, h5ad)
    import h5py

    with h5py.File(args.path, "r") as f:
        n_genes, n_cells = f["matrix"].shape
    gb = n_genes * n_cells * 4 / 1e9
    print(f"{args.path}: {n_genes} genes x {n_cells} cells, {gb:.2f} GB as float32")
    if os.path.exists(h5ad):
        with h5py.File(h5ad, "r") as f:
            nnz = f["X/data"].shape[0]
        print(f"non-zeros: {nnz} ({nnz / (n_genes * n_cells):.1%}); CSR {nnz * 8 / 1e9:.2f} GB")
    print(f"load before: {_uptime()}")
    print("| method | seconds | passes | GB/s inflated per pass | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods:
            label, passes = METHODS[method]
            got = measure(
                method, args.path, scratch, args.subsample, h5ad, args.max_rss_mb, args.max_seconds
            )
            seconds = got["seconds"]
            rate = f"{gb * passes / seconds:.2f}" if passes and seconds == seconds else "-"
            print(
                f"| {label} | {seconds:.1f} | {passes or '-'} | {rate} | {got['peak_rss_mb']:.0f} |"
            )
    print(f"load after: {_uptime()}")


if __name__ == "__main__":
    main()

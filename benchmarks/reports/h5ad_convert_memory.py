"""Peak memory of ``loomx convert x.h5ad y.loom`` (X read in bands of cells) against
``anndata.read_h5ad`` of the same file (what the conversion held before).

Writes a CSR (or CSC, or dense) ``.h5ad`` of about ``--gb`` gigabytes of stored matrix
(float32 values, int32 indices) without holding it in memory, then runs each side in a
fresh process and reports its peak resident memory (``ru_maxrss`` of the child) and wall
time; the converted file is checked against the source, band by band.

    python benchmarks/reports/h5ad_convert_memory.py --gb 2            # the full size
    python benchmarks/reports/h5ad_convert_memory.py --gb 0.02 --keep  # a quick check
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

__all__: list[str] = []

N_GENES = 20_000
DENSITY = 0.05


def make_h5ad(path: str, gb: float, layout: str, seed: int = 0) -> tuple[int, int]:
    """A ``.h5ad`` whose X holds about ``gb`` GB; obs/var written by anndata itself."""
    import anndata
    import pandas as pd

    per_cell = int(N_GENES * DENSITY)
    n_cells = max(10, int(gb * 1e9 / (8 * per_cell)))
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)])
    anndata.AnnData(obs=obs, var=var).write_h5ad(path)
    rng = np.random.default_rng(seed)
    with h5py.File(path, "r+") as f:
        if "X" in f:
            del f["X"]
        if layout == "dense":
            x = f.create_dataset("X", (n_cells, N_GENES), "f4", chunks=(256, N_GENES))
            x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
            for start in range(0, n_cells, 256):
                stop = min(start + 256, n_cells)
                x[start:stop] = rng.poisson(0.05, (stop - start, N_GENES))
            return n_cells, N_GENES
        major = n_cells if layout == "csr" else N_GENES
        minor = N_GENES if layout == "csr" else n_cells
        per = max(1, int(minor * DENSITY))
        nnz = major * per
        g = f.create_group("X")
        g.attrs.update(
            {
                "encoding-type": f"{layout}_matrix",
                "encoding-version": "0.1.0",
                "shape": np.array([n_cells, N_GENES]),
            }
        )
        g["indptr"] = np.arange(0, nnz + 1, per, dtype=np.int64)
        data = g.create_dataset("data", (nnz,), "f4", chunks=(1 << 20,))
        indices = g.create_dataset("indices", (nnz,), "i4", chunks=(1 << 20,))
        step = max(1, (1 << 24) // per)
        for start in range(0, major, step):
            stop = min(start + step, major)
            rows = [np.sort(rng.choice(minor, per, replace=False)) for _ in range(start, stop)]
            indices[start * per : stop * per] = np.concatenate(rows)
            data[start * per : stop * per] = rng.integers(1, 20, (stop - start) * per)
    return n_cells, N_GENES


def peak_of(code: str, *args: str) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of ``python -c code args`` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], check=True, env=env)
    wall = time.perf_counter() - start
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, wall


CONVERT = (
    "import sys; from loomx.interop.conversion import convert; convert(sys.argv[1], sys.argv[2])"
)
ANNDATA = "import sys, anndata; anndata.read_h5ad(sys.argv[1])"


def check(h5ad: str, loom: str) -> None:
    """The Loom matrix equals the source, band by band (anndata backed reads)."""
    import anndata

    adata = anndata.read_h5ad(h5ad, backed="r")
    with h5py.File(loom, "r") as f:
        m = f["matrix"]
        for start in range(0, adata.n_obs, 4096):
            stop = min(start + 4096, adata.n_obs)
            band = adata.X[start:stop]
            band = band.toarray() if hasattr(band, "toarray") else np.asarray(band)
            if not np.array_equal(m[:, start:stop], band.T):
                raise SystemExit(f"cells {start}:{stop} differ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0, help="stored size of X (2)")
    parser.add_argument("--layout", choices=["csr", "csc", "dense"], default="csr")
    parser.add_argument("--dir", default=None, help="where the files go (a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--no-anndata", action="store_true", help="skip anndata.read_h5ad")
    args = parser.parse_args()
    folder = args.dir or tempfile.mkdtemp(prefix="h5ad-memory-")
    h5ad, loom = os.path.join(folder, "x.h5ad"), os.path.join(folder, "x.loom")
    shape = make_h5ad(h5ad, args.gb, args.layout)
    size = os.path.getsize(h5ad) / 1e9
    print(f"| input | {args.layout} X, {shape[0]} cells x {shape[1]} genes, {size:.2f} GB |")
    print("| | peak RSS (MB) | wall (s) |")
    print("| --- | --- | --- |")
    rss, wall = peak_of(CONVERT, h5ad, loom)  # first: ru_maxrss is the largest child so far
    print(f"| `loomx convert x.h5ad x.loom` | {rss:.0f} | {wall:.1f} |")
    if not args.no_anndata:
        rss, wall = peak_of(ANNDATA, h5ad)
        print(
            f"| `anndata.read_h5ad` (whole file; at least the row above) | {rss:.0f} | {wall:.1f} |"
        )
    check(h5ad, loom)
    print("checked: the Loom matrix equals X")
    if not args.keep:
        for p in (h5ad, loom):
            os.remove(p)


if __name__ == "__main__":
    main()

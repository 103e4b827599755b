"""Write a Cell Ranger v3 ``.h5`` matrix (CSC in ``/matrix``, features, barcodes) of random
counts, for measuring ``loomx convert``.

    python -m benchmarks.data.make_10x OUT.h5 --genes 10000 --cells 100000 --density 0.03
"""

from __future__ import annotations

import argparse
import time

import h5py
import numpy as np

__all__: list[str] = []


def make_10x_h5(path: str, n_genes: int, n_cells: int, density: float, seed: int = 0) -> int:
    """Write the file; returns the number of non-zeros (each ``1 + Poisson(1.5)``)."""
    rng = np.random.default_rng(seed)
    per_cell = rng.binomial(n_genes, density, n_cells)
    indptr = np.concatenate([[0], np.cumsum(per_cell)]).astype(np.int64)
    nnz = int(indptr[-1])
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        chunk = max(1, min(1 << 20, nnz))  # 1 Mi values, or the whole array when smaller
        opts = {"chunks": (chunk,), "compression": "gzip", "compression_opts": 4}
        data = g.create_dataset("data", (nnz,), dtype="i4", **opts)
        indices = g.create_dataset("indices", (nnz,), dtype="i8", **opts)
        for start in range(0, n_cells, 5000):
            stop = min(start + 5000, n_cells)
            lo, hi = indptr[start], indptr[stop]
            picks = [np.sort(rng.choice(n_genes, k, replace=False)) for k in per_cell[start:stop]]
            indices[lo:hi] = np.concatenate(picks)
            data[lo:hi] = 1 + rng.poisson(1.5, hi - lo)
        g["indptr"] = indptr
        g["shape"] = np.array([n_genes, n_cells], dtype=np.int32)
        g["barcodes"] = np.array([f"AAAC{j:010d}-1".encode() for j in range(n_cells)])
        features = g.create_group("features")
        features["id"] = np.array([f"ENSG{i:011d}".encode() for i in range(n_genes)])
        names = [f"MT-{i}" if i < 13 else f"GENE{i}" for i in range(n_genes)]
        features["name"] = np.array([n.encode() for n in names])
        features["feature_type"] = np.array([b"Gene Expression"] * n_genes)
        features["genome"] = np.array([b"GRCh38"] * n_genes)
    return nnz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--genes", type=int, default=10000)
    parser.add_argument("--cells", type=int, default=100000)
    parser.add_argument("--density", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    nnz = make_10x_h5(args.path, args.genes, args.cells, args.density, args.seed)
    print(f"wrote {args.path}: {nnz} non-zeros in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

"""Larger Loom files made from a smaller one by copying its compressed chunks.

``/matrix`` of the output has the source's genes, dtype, chunk shape and filters and any
number of cells: the source's whole chunk columns are repeated in turn (cell ``j`` of the
output is cell ``j % period`` of the source, ``period`` = the source's cells rounded down to
whole chunks), each chunk's compressed bytes copied as they are with
``write_direct_chunk`` (nothing is inflated or deflated), in the source file's own chunk
order, so every chunk costs what the source's costs to read. Row attributes are copied;
``CellID`` is new and unique (``c0``, ``c1``, ...), ``ClusterID`` (when present) repeats the
source's. Written under a temporary name and renamed when complete; then sampled columns
are read back with h5py and compared with the source's.

Example (the 1,000,000-cell file of the scaling table from the seed file)::

    nice -n 19 python -m benchmarks.data.grow_loom /work/bench-data/seed/seed.loom \\
        /work/bench-data/scale/scale_27998x1000000.loom --cols 1000000
"""

from __future__ import annotations

import argparse
import mmap
import os
import time
from pathlib import Path

import h5py
import numpy as np


def _chunk_order(dset: h5py.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Chunk coordinates, file offsets, sizes and filter masks, in file order."""
    coords, offsets, sizes, masks = [], [], [], []

    def visit(info: h5py.h5d.StoreInfo) -> None:
        coords.append(info.chunk_offset)
        offsets.append(info.byte_offset)
        sizes.append(info.size)
        masks.append(info.filter_mask)

    dset.id.chunk_iter(visit)
    order = np.argsort(np.asarray(offsets, dtype=np.int64), kind="stable")
    return (
        np.asarray(coords, dtype=np.int64).reshape(-1, 2)[order],
        np.asarray(offsets, dtype=np.int64)[order],
        np.asarray(sizes, dtype=np.int64)[order],
        np.asarray(masks, dtype=np.int64)[order],
    )


def _copy_attrs(src: h5py.File, dst: h5py.File, cols: int, period: int) -> None:
    for key, value in src.attrs.items():
        dst.attrs[key] = value
    for name in ("attrs", "row_attrs", "row_graphs", "col_graphs", "layers"):
        if name in src:
            src.copy(src[name], dst, name=name)
    cattrs = dst.create_group("col_attrs")
    strings = h5py.string_dtype()
    ids = np.array([f"c{j}" for j in range(cols)], dtype=object)
    cattrs.create_dataset("CellID", data=ids, dtype=strings, chunks=True, compression="gzip")
    if "col_attrs/ClusterID" in src:
        cluster = src["col_attrs/ClusterID"][:period]
        cattrs.create_dataset(
            "ClusterID", data=np.resize(cluster, cols), chunks=True, compression="gzip"
        )


def grow(source: Path, target: Path, cols: int) -> Path:
    """Write ``target``: ``source``'s matrix repeated along cells to ``cols`` cells."""
    temporary = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(source, "r") as src, open(source, "rb") as raw:
        m = src["matrix"]
        rows, n = m.shape
        _, ccol = m.chunks
        period_chunks = n // ccol
        if period_chunks == 0:
            raise ValueError(f"{source}: /matrix has fewer cells ({n}) than one chunk ({ccol})")
        coords, offsets, sizes, masks = _chunk_order(m)
        whole = coords[:, 1] < period_chunks * ccol  # the partial last chunk column is skipped
        coords, offsets, sizes, masks = coords[whole], offsets[whole], sizes[whole], masks[whole]
        data = mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            with h5py.File(temporary, "w", libver="earliest") as dst:
                _copy_attrs(src, dst, cols, period_chunks * ccol)
                out = dst.create_dataset(
                    "matrix",
                    shape=(rows, cols),
                    dtype=m.dtype,
                    chunks=m.chunks,
                    maxshape=m.maxshape,
                    compression=m.compression,
                    compression_opts=m.compression_opts,
                    shuffle=m.shuffle,
                    fillvalue=m.fillvalue,
                )
                for key, value in m.attrs.items():
                    out.attrs[key] = value
                n_chunks = -(-cols // ccol)
                for cycle in range(-(-n_chunks // period_chunks)):
                    shift = cycle * period_chunks * ccol
                    for (r, c), off, size, mask in zip(
                        coords.tolist(),
                        offsets.tolist(),
                        sizes.tolist(),
                        masks.tolist(),
                        strict=True,
                    ):
                        if c + shift < cols:
                            out.id.write_direct_chunk((r, c + shift), data[off : off + size], mask)
        finally:
            data.close()
    os.replace(temporary, target)
    check(source, target)
    return target


def check(source: Path, target: Path, samples: int = 24) -> None:
    """Compare sampled columns (the first, the last, random ones) with the source's."""
    with h5py.File(source, "r") as src, h5py.File(target, "r") as dst:
        m, out = src["matrix"], dst["matrix"]
        period = (m.shape[1] // m.chunks[1]) * m.chunks[1]
        if out.shape[0] != m.shape[0] or out.chunks != m.chunks:
            raise AssertionError(f"{target}: shape {out.shape} / chunks {out.chunks} differ")
        rng = np.random.default_rng(0)
        picks = {0, out.shape[1] - 1, *rng.choice(out.shape[1], samples).tolist()}
        for j in sorted(picks):
            if not np.array_equal(out[:, j], m[:, j % period]):
                raise AssertionError(f"{target}: cell {j} differs from the source's {j % period}")
        if not np.array_equal(src["row_attrs/Gene"][:], dst["row_attrs/Gene"][:]):
            raise AssertionError(f"{target}: genes differ")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--cols", type=int, required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = grow(args.source, args.target, args.cols)
    seconds = time.perf_counter() - start
    print(f"wrote {path} in {seconds:.1f} s ({os.path.getsize(path):,} bytes), checked")


if __name__ == "__main__":
    main()

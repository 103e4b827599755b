"""The reference results, computed with plain h5py and numpy, and the result checks.

:func:`reference` computes, in band passes over a file (or the files of a folder, for
``combine``), the digest of every operation's correct result; :func:`digest` reduces a
method's canonical result (an array, a CSR matrix, or the file a write produced) to the same
few small arrays, and :func:`check` compares the two.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .operations import N_RANDOM_COLS, READ_OPS

__all__ = [
    "ATTR_NAME",
    "BAND_ROWS",
    "LAYER_NAME",
    "FileFacts",
    "Reference",
    "check",
    "digest",
    "file_facts",
    "input_files",
    "random_columns",
    "reference",
    "score_values",
    "warm_page_cache",
]

BAND_ROWS = 256
"""Rows per band of the reference passes (a multiple of loompy's 64-row chunks)."""

COMBINE_BAND_COLS = 2048
"""Columns per band of the combined-matrix digest."""

RANDOM_COLS_SEED = 0
"""Seed of :func:`random_columns`."""

LAYER_NAME = "norm"
"""Name of the layer the ``write_layer`` methods write."""

ATTR_NAME = "Score"
"""Name of the column attribute the ``write_attr`` methods write back."""

LAYER_STORAGE = {"compression": "gzip", "compression_opts": 2}
"""HDF5 storage every written layer must have (loompy's); its chunks must be ``/matrix``'s."""

RTOL = {"row_sum": 1e-6, "row_mean": 1e-5, "row_std": 1e-4, "col_sum": 1e-6, "cols_col_sum": 1e-6}
"""Relative tolerance of each floating-point digest entry; all other entries must be equal."""

REFERENCE_OF = {"scan": "col_sums"}
"""Operations whose result is checked against another operation's reference."""

BAND_OPS = ("row_mean_std", "row_sums", "col_sums", "random_cols", "scan", "csr")
"""Read operations whose reference needs a pass over ``/matrix``."""


@dataclass(frozen=True)
class FileFacts:
    """Shape and storage facts of ``/matrix`` (of a file, or of the files of a folder)."""

    path: str
    shape: tuple[int, int]
    dtype: str
    chunks: tuple[int, ...] | None
    compression: str | None
    compression_opts: Any
    size_mb: float
    raw_mb: float
    n_layers: int
    n_attrs: int
    n_files: int = 1


def input_files(path: str | os.PathLike) -> list[str]:
    """The Loom files ``path`` stands for: itself, or a folder's ``*.loom`` files in name order."""
    if os.path.isdir(path):
        files = sorted(str(p) for p in Path(path).glob("*.loom"))
        if not files:
            raise FileNotFoundError(f"{path}: no .loom files in this folder")
        return files
    return [str(path)]


def file_facts(path: str | os.PathLike) -> FileFacts:
    """Read ``/matrix``'s shape, dtype, chunks and compression, and count layers and attributes.

    For a folder: the facts of its first file, with size and raw MB summed over all files.
    """
    files = input_files(path)
    with h5py.File(files[0], "r") as f:
        d = f["matrix"]
        shape = (int(d.shape[0]), int(d.shape[1]))
        n_attrs = sum(len(f[g]) for g in ("row_attrs", "col_attrs") if g in f)
        raw_mb = 0.0
        for other in files:
            with h5py.File(other, "r") as g:
                raw_mb += g["matrix"].size * g["matrix"].dtype.itemsize / 1e6
        return FileFacts(
            path=str(path),
            shape=shape,
            dtype=str(d.dtype),
            chunks=d.chunks,
            compression=d.compression,
            compression_opts=d.compression_opts,
            size_mb=sum(Path(p).stat().st_size for p in files) / 1e6,
            raw_mb=raw_mb,
            n_layers=len(f["layers"]) if "layers" in f else 0,
            n_attrs=n_attrs,
            n_files=len(files),
        )


def warm_page_cache(path: str | os.PathLike) -> float:
    """Read a file (or a folder's Loom files, or every file of a zarr store) once so the OS
    page cache is equally warm for every method.  Returns the seconds it took."""
    start = time.perf_counter()
    if str(path).endswith(".zarr"):  # a zarr store: a folder of chunk files
        names = sorted(str(p) for p in Path(path).rglob("*") if p.is_file())
    else:
        names = input_files(path)
    for name in names:
        with open(name, "rb", buffering=0) as fh:
            while fh.read(16 * 2**20):
                pass
    return time.perf_counter() - start


def random_columns(n_cols: int, k: int = N_RANDOM_COLS, seed: int = RANDOM_COLS_SEED) -> np.ndarray:
    """``min(k, n_cols)`` distinct column positions in random (unsorted) order, fixed seed."""
    rng = np.random.default_rng(seed)
    return rng.choice(n_cols, size=min(k, n_cols), replace=False)


def score_values(n_cols: int) -> np.ndarray:
    """The values the ``write_attr`` methods write into column attribute ``Score``."""
    return np.arange(n_cols, dtype=np.float64) / 3


def iter_bands(path: str, name: str = "matrix") -> Iterator[np.ndarray]:
    """Dataset ``name`` band by band (:data:`BAND_ROWS` rows), read with plain h5py."""
    with h5py.File(path, "r") as f:
        d = f[name]
        for start in range(0, d.shape[0], BAND_ROWS):
            yield d[start : start + BAND_ROWS, :]


def _sha256(h: Any) -> np.ndarray:
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


def _hash_blocks(blocks: Iterable[np.ndarray]) -> np.ndarray:
    h = hashlib.sha256()
    for block in blocks:
        h.update(np.ascontiguousarray(block).tobytes())
    return _sha256(h)


def _strings(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _hash_strings(values: Iterable[str]) -> np.ndarray:
    return _sha256(hashlib.sha256("\n".join(values).encode()))


@dataclass
class Reference:
    """Digests of each operation's correct result, from h5py/numpy passes over the input."""

    shape: tuple[int, int]
    cols: np.ndarray
    digests: dict[str, dict[str, np.ndarray]]

    def __getitem__(self, op: str) -> dict[str, np.ndarray]:
        return self.digests[REFERENCE_OF.get(op, op)]


def _read_digests(path: str, facts: FileFacts, cols: np.ndarray) -> dict[str, dict]:
    """Digests of the read operations: one band pass over ``/matrix``.

    Row statistics and column sums are computed in float64; the random columns and the CSR
    structure are hashed exactly (the CSR's indices as int64 and values as float64, in
    canonical row-major order, no explicit zeros).
    """
    n_rows, n_cols = facts.shape
    sorted_cols = np.sort(cols)
    row_sum, row_mean, row_std, counts = [], [], [], []
    col_sum = np.zeros(n_cols)
    cols_col_sum = np.zeros(len(cols))
    h_cols, h_indices, h_data = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    for block in iter_bands(path):
        wide = block.astype(np.float64)
        row_sum.append(wide.sum(axis=1))
        row_mean.append(wide.mean(axis=1))
        row_std.append(wide.std(axis=1))
        col_sum += wide.sum(axis=0)
        picked = np.ascontiguousarray(block[:, sorted_cols])
        h_cols.update(picked.tobytes())
        cols_col_sum += picked.sum(axis=0, dtype=np.float64)
        counts.append(np.count_nonzero(block, axis=1))
        r, c = np.nonzero(block)
        h_indices.update(c.astype(np.int64).tobytes())
        h_data.update(block[r, c].astype(np.float64).tobytes())
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts) if counts else [])])
    shape = np.asarray(facts.shape, np.int64)
    return {
        "row_sums": {"row_sum": np.concatenate(row_sum)},
        "row_mean_std": {"row_mean": np.concatenate(row_mean), "row_std": np.concatenate(row_std)},
        "col_sums": {"col_sum": col_sum},
        "random_cols": {
            "shape": np.asarray((n_rows, len(cols)), np.int64),
            "dtype": np.asarray(facts.dtype),
            "sha256": _sha256(h_cols),
            "cols_col_sum": cols_col_sum,
        },
        "csr": {
            "shape": shape,
            "indptr": indptr.astype(np.int64),
            "indices_sha256": _sha256(h_indices),
            "data_sha256": _sha256(h_data),
        },
    }


def _layer_reference(path: str, facts: FileFacts) -> dict[str, np.ndarray]:
    """Digest of layer ``norm`` as ``log1p(matrix)``, stored like loompy's layers."""
    return {
        "shape": np.asarray(facts.shape, np.int64),
        "dtype": np.asarray(facts.dtype),
        "sha256": _hash_blocks(np.log1p(block) for block in iter_bands(path)),
        "chunks": np.asarray(facts.chunks, np.int64),
        "compression": np.asarray(LAYER_STORAGE["compression"]),
        "compression_opts": np.asarray(LAYER_STORAGE["compression_opts"]),
    }


def _combined_digest(
    files: list[h5py.File], orders: list[np.ndarray], accession: list[str]
) -> dict[str, np.ndarray]:
    """Digest of the column-wise concatenation of ``files``' matrices, rows in ``orders``.

    The matrix is hashed in global column bands of :data:`COMBINE_BAND_COLS`, each band's rows
    sorted by ``Accession``, so the digest does not depend on the output's row order.
    """
    widths = [f["matrix"].shape[1] for f in files]
    edges = np.concatenate([[0], np.cumsum(widths)])

    def bands() -> Iterator[np.ndarray]:
        for start in range(0, int(edges[-1]), COMBINE_BAND_COLS):
            stop = min(start + COMBINE_BAND_COLS, int(edges[-1]))
            pieces = []
            for f, order, lo, hi in zip(files, orders, edges[:-1], edges[1:], strict=True):
                a, b = max(start, lo), min(stop, hi)
                if a < b:
                    pieces.append(f["matrix"][:, a - lo : b - lo][order])
            yield np.hstack(pieces)

    cell_ids = [c for f in files for c in _strings(f["col_attrs/CellID"][:])]
    cluster_ids = np.concatenate([f["col_attrs/ClusterID"][:].astype(np.int64) for f in files])
    return {
        "shape": np.asarray((len(accession), int(edges[-1])), np.int64),
        "dtype": np.asarray(str(files[0]["matrix"].dtype)),
        "sha256": _hash_blocks(bands()),
        "accession_sha256": _hash_strings(sorted(accession)),
        "cell_id_sha256": _hash_strings(cell_ids),
        "cluster_id": cluster_ids,
    }


def _combine_reference(paths: list[str]) -> dict[str, np.ndarray]:
    """Digest of the expected ``combine`` output of ``paths``, rows matched by ``Accession``."""
    files = [h5py.File(p, "r") for p in paths]
    try:
        accessions = [_strings(f["row_attrs/Accession"][:]) for f in files]
        orders = [np.argsort(np.asarray(a, dtype=object)) for a in accessions]
        return _combined_digest(files, orders, accessions[0])
    finally:
        for f in files:
            f.close()


def reference(path: str | os.PathLike, ops: Iterable[str] = READ_OPS) -> Reference:
    """Compute the reference digests of operations ``ops`` on ``path`` (h5py bands + numpy).

    ``path`` is a Loom file, or for ``combine`` a folder of Loom files.  Only the passes that
    ``ops`` need are made.
    """
    path = str(path)
    ops = set(ops)
    facts = file_facts(path)
    n_cols = facts.shape[1]
    cols = random_columns(n_cols)
    digests: dict[str, dict[str, np.ndarray]] = {
        "open": {"shape": np.asarray(facts.shape, np.int64)}
    }
    if ops & set(BAND_OPS):
        digests.update(_read_digests(path, facts, cols))
    if "write_layer" in ops:
        digests["write_layer"] = _layer_reference(path, facts)
    if "write_attr" in ops:
        values = score_values(n_cols)
        digests["write_attr"] = {
            "dtype": np.asarray(str(values.dtype)),
            "sha256": _hash_blocks([values]),
        }
    if "combine" in ops:
        digests["combine"] = _combine_reference(input_files(path))
    return Reference(facts.shape, cols, digests)


def digest(op: str, result: Any) -> dict[str, np.ndarray]:
    """Reduce an operation's canonical result to the small arrays :func:`check` compares.

    The canonical result of ``write_layer`` and ``combine`` is the path of the written file;
    that of ``write_attr`` is ``(path, growth_bytes)``, and its digest also records the
    file's growth and the attribute's size (reported, not checked).
    """
    if op == "open":
        return {"shape": np.asarray(result, np.int64)}
    if op == "row_sums":
        return {"row_sum": np.asarray(result, np.float64).ravel()}
    if op == "row_mean_std":
        mean, std = result
        return {
            "row_mean": np.asarray(mean, np.float64).ravel(),
            "row_std": np.asarray(std, np.float64).ravel(),
        }
    if op in ("col_sums", "scan"):
        return {"col_sum": np.asarray(result, np.float64).ravel()}
    if op == "random_cols":
        values = np.ascontiguousarray(np.asarray(result))
        return {
            "shape": np.asarray(values.shape, np.int64),
            "dtype": np.asarray(str(values.dtype)),
            "sha256": _hash_blocks([values]),
            "cols_col_sum": values.sum(axis=0, dtype=np.float64),
        }
    if op == "csr":
        import scipy.sparse

        matrix = scipy.sparse.csr_matrix(result, copy=True)
        matrix.sum_duplicates()
        return {
            "shape": np.asarray(matrix.shape, np.int64),
            "indptr": matrix.indptr.astype(np.int64),
            "indices_sha256": _sha256(hashlib.sha256(matrix.indices.astype(np.int64).tobytes())),
            "data_sha256": _sha256(hashlib.sha256(matrix.data.astype(np.float64).tobytes())),
        }
    if op == "write_layer":
        with h5py.File(result, "r") as f:
            layer = f[f"layers/{LAYER_NAME}"]
            facts = {
                "shape": np.asarray(layer.shape, np.int64),
                "dtype": np.asarray(str(layer.dtype)),
                "chunks": np.asarray(layer.chunks, np.int64),
                "compression": np.asarray(str(layer.compression)),
                "compression_opts": np.asarray(layer.compression_opts),
            }
        return {**facts, "sha256": _hash_blocks(iter_bands(result, f"layers/{LAYER_NAME}"))}
    if op == "write_attr":
        path, growth = result
        with h5py.File(path, "r") as f:
            values = f[f"col_attrs/{ATTR_NAME}"][:]
        return {
            "dtype": np.asarray(str(values.dtype)),
            "sha256": _hash_blocks([values]),
            "growth_bytes": np.asarray(growth, np.int64),
            "attr_bytes": np.asarray(values.nbytes, np.int64),
        }
    if op == "combine":
        with h5py.File(result, "r") as f:
            accession = _strings(f["row_attrs/Accession"][:])
            order = np.argsort(np.asarray(accession, dtype=object))
            return _combined_digest([f], [order], accession)
    raise ValueError(f"unknown operation {op!r}")


def check(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], label: str) -> None:
    """Raise ``AssertionError`` unless digest ``got`` matches the reference digest ``expected``.

    Entries named in :data:`RTOL` are compared with that relative tolerance, all others
    exactly (shapes, dtypes, CSR ``indptr``, SHA-256 hashes).  Entries of ``got`` that
    ``expected`` lacks (e.g. a write-back's file growth) are not checked.
    """
    missing = sorted(set(expected) - set(got))
    if missing:
        raise AssertionError(f"{label}: result lacks {missing}")
    for key, want in expected.items():
        have = np.asarray(got[key])
        if key in RTOL:
            if have.shape != want.shape:
                raise AssertionError(f"{label}: {key} shape {have.shape}, expected {want.shape}")
            np.testing.assert_allclose(have, want, rtol=RTOL[key], err_msg=f"{label}: {key}")
        elif not np.array_equal(have, want):
            raise AssertionError(f"{label}: {key} differs from the reference")

"""loompy's creating and editing tasks, loomx vs loompy, side by side in one run.

Tables (``--tables``, all by default):

``create``
    ``loomx.from_arrays(csr).loom.to_loom`` vs ``loompy.create`` on the CSR of ``--file``'s
    matrix: wall time and peak memory over the input.
``memory``
    peak memory of both writing a synthetic float32 CSR (5% dense) of 20000 rows and 50000
    and 100000 columns (``--wide-cols``): loomx's must not grow with the columns.
``batches``
    a file built from ``--batches`` batches of 1000 cells (``loomx.append`` vs loompy's
    ``new`` + ``add_columns``): time of the first and the last batch.
``region``
    100 columns written into a copy of ``--big-file`` (``to_loom(mode="r+", region=...)``
    vs loompy's ``ds[:, a:b] = values``): time and file growth against the compressed size of
    the chunks the region touches.
``repack``
    ``loomx.repack`` vs ``h5repack`` (when installed) of a copy of ``--big-file`` whose
    matrix was copied into a layer that is then deleted.

Every measurement runs in a fresh process; results are checked with h5py.

Usage::

    python -m benchmarks.reports.parity_report --file /work/bench-data/pbmc_20000x30000.loom \\
        --big-file /work/bench-data/big_20000x30000.loom --scratch /work/bench-data/tmp
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this checkout's benchmarks and loomx
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import h5py
import numpy as np

from benchmarks.harness.provenance import uptime

__all__: list[str] = []

TABLES = ("create", "memory", "batches", "region", "repack")

PRELUDE = textwrap.dedent(
    """
    import json, os, sys, time, warnings
    import numpy as np, scipy.sparse as sp
    warnings.simplefilter("ignore")
    if not hasattr(np, "in1d"):
        np.in1d = np.isin  # loompy 3.0.8 calls np.in1d, which numpy 2.4 removed

    def rss(field):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")

    def report(**values):
        print("RESULT " + json.dumps(values), flush=True)
    """
)


def run_child(code: str, *args: str, timeout: float = 3600) -> dict:
    """Run ``PRELUDE + code`` in a fresh interpreter; return what it reported."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT ") :])


# --------------------------------------------------------------------------- create

CREATE = """
kind, npz, out = sys.argv[1:4]
data = np.load(npz)
csr = sp.csr_matrix((data["data"], data["indices"], data["indptr"]), shape=tuple(data["shape"]))
genes = {"Gene": np.array([f"g{i}" for i in range(csr.shape[0])])}
cells = {"CellID": np.array([f"c{j}" for j in range(csr.shape[1])])}
reset_peak()
base = rss("VmRSS")
start = time.perf_counter()
if kind == "loompy":
    import loompy
    loompy.create(out, csr, genes, cells)
else:
    import loomx
    loomx.from_arrays(csr, genes, cells).loom.to_loom(out)
report(wall_s=time.perf_counter() - start, peak_increase_mb=rss("VmHWM") - base)
"""


def _save_csr(csr, path: Path) -> None:
    np.savez(path, data=csr.data, indices=csr.indices, indptr=csr.indptr, shape=csr.shape)


def _check_matrix(out: Path, csr, band: int = 2048) -> None:
    with h5py.File(out, "r") as f:
        m = f["matrix"]
        for c in range(0, csr.shape[1], band):
            expected = csr[:, c : c + band].toarray()
            if not np.array_equal(m[:, c : c + band], expected):
                raise AssertionError(f"{out}: columns {c}.. differ from the input")


def create_table(file: str, scratch: Path) -> list[str]:
    import loomx

    with loomx.open_loom(file) as ds:
        csr = ds.loom.to_scipy("matrix", "csr")
    npz = scratch / "input.npz"
    _save_csr(csr, npz)
    rows = []
    for kind in ("loompy", "loomx"):
        out = scratch / f"create-{kind}.loom"
        res = run_child(CREATE, kind, str(npz), str(out))
        _check_matrix(out, csr)
        rows.append((kind, res, os.path.getsize(out)))
        out.unlink()
    npz.unlink()
    (_, lp, _), (_, lx, _) = rows
    lines = [
        f"CSR of `{Path(file).name}`'s matrix: {csr.shape[0]} x {csr.shape[1]} "
        f"{csr.dtype}, {csr.nnz} non-zeros.",
        "",
        "| writer | wall s | peak memory over the input MB | file MB |",
        "| --- | ---: | ---: | ---: |",
    ]
    for kind, res, size in rows:
        lines.append(
            f"| {kind} | {res['wall_s']:.1f} | {res['peak_increase_mb']:.0f} | {size / 1e6:.0f} |"
        )
    lines += ["", f"loomx is {lp['wall_s'] / lx['wall_s']:.2f}x faster than loompy.create."]
    return lines


def synthetic_csr(n: int, m: int, density: float = 0.05, seed: int = 0):
    """A float32 CSR with ``density`` of each row set, in a strided pattern (no big temporaries)."""
    import scipy.sparse as sp

    step = round(1 / density)
    per_row = -(-m // step)
    rng = np.random.default_rng(seed)
    indptr = np.zeros(n + 1, dtype=np.int64)
    indices = np.empty(n * per_row, dtype=np.int32)
    base = np.arange(0, m, step, dtype=np.int32)
    k = 0
    for i in range(n):
        cols = base + (i % step)
        cols = cols[cols < m]
        indices[k : k + len(cols)] = cols
        k += len(cols)
        indptr[i + 1] = k
    indices = indices[:k]
    data = rng.integers(1, 30, k).astype(np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(n, m))


def memory_table(scratch: Path, widths: list[int], loompy_width: int) -> list[str]:
    lines = [
        "| writer | CSR shape | non-zeros | wall s | peak memory over the input MB |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for width in widths:
        csr = synthetic_csr(20000, width)
        npz = scratch / "wide.npz"
        _save_csr(csr, npz)
        kinds = ["loomx"] + (["loompy"] if width == loompy_width else [])
        for kind in kinds:
            out = scratch / f"wide-{kind}.loom"
            res = run_child(CREATE, kind, str(npz), str(out))
            _check_matrix(out, csr, band=8192)
            lines.append(
                f"| {kind} | 20000 x {width} | {csr.nnz} | {res['wall_s']:.1f} | "
                f"{res['peak_increase_mb']:.0f} |"
            )
            out.unlink()
        npz.unlink()
        del csr
    return lines


# --------------------------------------------------------------------------- batches

BATCHES = """
kind, out, n_batches, n_genes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
genes = np.array([f"g{i}" for i in range(n_genes)])
times = []
if kind == "loompy":
    import loompy
    dsout = loompy.new(out)
else:
    import loomx, xarray as xr
for b in range(n_batches):
    counts = rng.poisson(0.3, (n_genes, 1000)).astype(np.float32)
    cells = np.array([f"b{b}_c{j}" for j in range(1000)])
    start = time.perf_counter()
    if kind == "loompy":
        dsout.add_columns({"": counts}, {"CellID": cells}, row_attrs={"Gene": genes})
    else:
        batch = xr.Dataset({"matrix": (("row", "col"), counts)},
                           coords={"Gene": ("row", genes), "CellID": ("col", cells)})
        loomx.append(out, batch)
    times.append(time.perf_counter() - start)
if kind == "loompy":
    dsout.close()
report(times=times)
"""


def batches_table(scratch: Path, n_batches: int, n_genes: int) -> list[str]:
    lines = [
        f"{n_batches} batches of {n_genes} genes x 1000 cells (Poisson(0.3) counts, float32), "
        "appended one after the other.",
        "",
        "| writer | first batch s | median batch s | last batch s | last / first | total s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in ("loompy", "loomx"):
        out = scratch / f"batches-{kind}.loom"
        res = run_child(BATCHES, kind, str(out), str(n_batches), str(n_genes))
        with h5py.File(out, "r") as f:
            if f["matrix"].shape != (n_genes, 1000 * n_batches):
                raise AssertionError(f"{out}: shape {f['matrix'].shape}")
        t = np.asarray(res["times"])
        first, last = t[0], np.median(t[-5:])
        lines.append(
            f"| {kind} | {first:.3f} | {np.median(t):.3f} | {last:.3f} (median of the last 5) "
            f"| {last / first:.2f} | {t.sum():.1f} |"
        )
        out.unlink()
    return lines


# --------------------------------------------------------------------------- region

REGION = """
kind, path, a, b = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import h5py
with h5py.File(path, "r") as f:
    n = f["matrix"].shape[0]
values = np.full((n, b - a), 7, dtype=np.float32)
start = time.perf_counter()
if kind == "loompy":
    import loompy
    with loompy.connect(path) as ds:
        ds[:, a:b] = values
else:
    import loomx, xarray as xr
    part = xr.Dataset({"matrix": (("row", "col"), values)})
    loomx.to_loom(part, path, mode="r+", region={"col": slice(a, b)})
report(wall_s=time.perf_counter() - start)
"""


def _chunk_infos(path: Path, h5path: str) -> list:
    """Every stored chunk's info (``chunk_iter``: one pass, not one index walk a chunk)."""
    infos: list = []
    with h5py.File(path, "r") as f:
        f[h5path].id.chunk_iter(infos.append)
    return infos


def _synced_copy(src: str | Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as fh:
        os.fsync(fh.fileno())


def _touched_bytes(path: Path, a: int, b: int) -> int:
    with h5py.File(path, "r") as f:
        width = f["matrix"].chunks[1]
    lo = a // width * width
    return sum(i.size for i in _chunk_infos(path, "matrix") if lo <= i.chunk_offset[1] < b)


def region_table(big_file: str, scratch: Path) -> list[str]:
    a, b = 10000, 10100
    touched = _touched_bytes(Path(big_file), a, b)
    lines = [
        f"100 columns ({a}:{b}) of `{Path(big_file).name}` "
        f"({os.path.getsize(big_file) / 1e9:.2f} GB) set to 7; the chunks they touch hold "
        f"{touched / 1e6:.1f} MB compressed.",
        "",
        "| writer | wall s | file growth MB | growth / touched chunks | all-or-nothing |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for kind in ("loompy", "loomx"):
        copy = scratch / f"region-{kind}.loom"
        _synced_copy(big_file, copy)  # nothing of the copy left to flush: loomx fsyncs
        size = os.path.getsize(copy)
        res = run_child(REGION, kind, str(copy), str(a), str(b))
        with h5py.File(copy, "r") as f:
            if not np.all(f["matrix"][:, a:b] == 7):
                raise AssertionError(f"{copy}: region not written")
        growth = os.path.getsize(copy) - size
        safe = "yes (journaled patch)" if kind == "loomx" else "no (in place)"
        ratio = growth / touched
        lines.append(
            f"| {kind} | {res['wall_s']:.2f} | {growth / 1e6:.1f} | {ratio:.2f} | {safe} |"
        )
        copy.unlink()
    return lines


# --------------------------------------------------------------------------- repack


def repack_table(big_file: str, scratch: Path) -> list[str]:
    import loomx

    work = scratch / "repack.loom"
    shutil.copyfile(big_file, work)
    with h5py.File(work, "r+") as f:
        biggest = max(f["layers"], key=lambda k: f["layers"][k].id.get_storage_size())
        f.copy(f["layers"][biggest], f["layers"], name="copy")  # raw chunk copy
    layer = sum(i.size for i in _chunk_infos(work, "layers/copy"))
    loomx.delete(work, "copy")
    before = os.path.getsize(work)
    lines = [
        f"A copy of `{Path(big_file).name}` plus a copy of its largest layer "
        f"({layer / 1e9:.2f} GB compressed), then deleted: {before / 1e9:.2f} GB on disk.",
        "",
        "| tool | wall s | file GB after | shrank by GB |",
        "| --- | ---: | ---: | ---: |",
    ]
    runs = [("loomx.repack", None)]
    if shutil.which("h5repack"):
        runs.append(("h5repack", shutil.which("h5repack")))
    for name, exe in runs:
        src = scratch / f"in-{name}.loom"
        _synced_copy(work, src)
        out = scratch / f"out-{name}.loom"
        start = time.perf_counter()
        if exe is None:
            loomx.repack(src, out)
        else:
            subprocess.run([exe, str(src), str(out)], check=True)
        wall = time.perf_counter() - start
        after = os.path.getsize(out)
        with h5py.File(out, "r") as f, h5py.File(big_file, "r") as g:
            if "copy" in f["layers"] or f["matrix"].chunks != g["matrix"].chunks:
                raise AssertionError(f"{out}: not what was expected")
        lines.append(f"| {name} | {wall:.1f} | {after / 1e9:.2f} | {(before - after) / 1e9:.2f} |")
        src.unlink()
        out.unlink()
    work.unlink()
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", required=True)
    parser.add_argument("--big-file", required=True)
    parser.add_argument("--scratch", default=None)
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    parser.add_argument("--wide-cols", nargs="+", type=int, default=[50000, 100000])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-genes", type=int, default=2000)
    args = parser.parse_args(argv)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="loomx-parity-"))
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"`uptime` before: {uptime()}\n")
    makers = {
        "create": lambda: create_table(args.file, scratch),
        "memory": lambda: memory_table(scratch, args.wide_cols, max(args.wide_cols)),
        "batches": lambda: batches_table(scratch, args.batches, args.batch_genes),
        "region": lambda: region_table(args.big_file, scratch),
        "repack": lambda: repack_table(args.big_file, scratch),
    }
    for name in args.tables:
        print(f"### {name}\n")
        print("\n".join(makers[name]()))
        print(f"\n`uptime` after: {uptime()}\n", flush=True)


if __name__ == "__main__":
    main()

"""Report plumbing: the machine's facts, ``uptime`` and the loomx code a run measures.

:func:`snapshot_loomx` copies the ``loomx`` package so that a long run measures one version
of the code while the working tree changes; :func:`loomx_fingerprint` and
:func:`loomx_sources` tell whether it changed; :func:`machine_facts` and :func:`uptime` go
into the report's header.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from .operations import ncores

__all__ = [
    "loomx_fingerprint",
    "loomx_source_dir",
    "loomx_sources",
    "machine_facts",
    "snapshot_loomx",
    "uptime",
]


def _git(args: list[str]) -> str:
    """Output of a read-only git command in this repository ('' without git)."""
    try:
        return subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:  # pragma: no cover - no git
        return ""


def uptime() -> str:
    """Output of ``uptime`` (or the load averages where it is missing)."""
    try:
        out = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    except OSError:  # pragma: no cover - no uptime
        out = ""
    return out.strip() or "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def snapshot_loomx(dest: str | os.PathLike) -> str:
    """Copy the ``loomx`` package source into ``dest`` and import it from there from now on.

    ``dest`` goes first on ``sys.path`` and on ``PYTHONPATH``, so this process and every
    process it starts (measuring children, their pools and cluster workers) import the copy:
    a run measures one version of the code even while the working tree changes.  Call it
    before ``loomx`` is imported.  Returns the copy's folder.
    """
    import importlib.util

    if "loomx" in sys.modules:
        raise RuntimeError("snapshot_loomx must run before loomx is imported")
    spec = importlib.util.find_spec("loomx")
    if spec is None or spec.origin is None:
        raise RuntimeError("loomx is not installed")
    target = Path(dest) / "loomx"
    shutil.copytree(Path(spec.origin).parent, target, ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(dest))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(dest), os.environ.get("PYTHONPATH")) if p
    )
    return str(target)


def loomx_source_dir() -> Path:
    """Folder of the ``loomx`` package that ``import loomx`` would load (without importing it)."""
    import importlib.util

    if "loomx" in sys.modules:
        return Path(sys.modules["loomx"].__file__).parent
    spec = importlib.util.find_spec("loomx")
    if spec is None or spec.origin is None:
        raise RuntimeError("loomx is not installed")
    return Path(spec.origin).parent


def loomx_sources(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Short SHA-256 of every ``.py`` file under ``root`` (default: loomx's folder), by path."""
    root = Path(root) if root is not None else loomx_source_dir()
    return {
        str(source.relative_to(root)): hashlib.sha256(source.read_bytes()).hexdigest()[:12]
        for source in sorted(root.rglob("*.py"))
    }


def loomx_fingerprint(root: str | os.PathLike | None = None) -> str:
    """Short hash of the loomx source under ``root`` (default: loomx's folder)."""
    return hashlib.sha256(json.dumps(loomx_sources(root)).encode()).hexdigest()[:12]


def _version(package: str) -> str:
    """The installed version of ``package``, or ``not installed``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def machine_facts() -> dict[str, str]:
    """``nproc``, CPU model, memory, OS and library versions of this machine."""
    import dask
    import distributed
    import loompy
    import psutil
    import scipy
    import xarray

    import loomx
    from loomx._hdf5.chunks import DEFAULT_INFLATER

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover - not Linux
        model = platform.processor() or "unknown"
    rev = _git(["rev-parse", "--short", "HEAD"])
    if rev and _git(["status", "--porcelain", "--", "loomx"]):
        rev += " + uncommitted changes in loomx/"
    return {
        "nproc": str(ncores()),
        "cpu": model,
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": (
            f"loomx {loomx.__version__} (git {rev or '?'}, inflater {DEFAULT_INFLATER}), "
            f"h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version}), numpy "
            f"{np.__version__}, scipy {scipy.__version__}, dask {dask.__version__}, "
            f"distributed {distributed.__version__}, xarray {xarray.__version__}, "
            f"loompy {loompy.__version__}, anndata {_version('anndata')}, "
            f"zarr {_version('zarr')}"
        ),
    }

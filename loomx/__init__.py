"""loomx: Loom files as lazy xarray Datasets on dask.

The names below are imported on first use (module ``__getattr__``, as scientific-Python
packages do), so that ``import loomx`` and the ``loomx`` command start without loading
xarray, dask or numba; the first use also registers the ``ds.loom`` accessor.

Examples
--------
>>> import loomx
>>> ds = loomx.open_loom("pbmc.loom")  # doctest: +SKIP
>>> ds["matrix"].mean("col").compute()  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from loomx.errors import (
    LoomFileError,
    LoomFileNotFoundError,
    LoomFormatError,
    LoomFormatWarning,
    LoomInvalidNameError,
    LoomNameError,
    LoomTypeError,
    LoomWriteError,
    LoomxError,
)

if TYPE_CHECKING:
    from loomx._format.spec import LOOM_SPEC_VERSION
    from loomx._read.backend import open_loom
    from loomx._read.references import to_kerchunk
    from loomx._read.validate import validate_loom
    from loomx._write.append import append
    from loomx._write.combine import combine
    from loomx._write.maintain import delete, repack
    from loomx._write.transaction import recover
    from loomx._write.writer import to_loom
    from loomx.analysis import pp, tl
    from loomx.interop.anndata import from_anndata, to_anndata
    from loomx.interop.arrays import from_arrays
    from loomx.ops.qc import assign_qc, calculate_qc_metrics

__version__ = "0.1.0"

_LAZY = {
    "LOOM_SPEC_VERSION": "loomx._format.spec",
    "open_loom": "loomx._read.backend",
    "to_kerchunk": "loomx._read.references",
    "validate_loom": "loomx._read.validate",
    "append": "loomx._write.append",
    "combine": "loomx._write.combine",
    "delete": "loomx._write.maintain",
    "repack": "loomx._write.maintain",
    "recover": "loomx._write.transaction",
    "to_loom": "loomx._write.writer",
    "from_anndata": "loomx.interop.anndata",
    "to_anndata": "loomx.interop.anndata",
    "from_arrays": "loomx.interop.arrays",
    "assign_qc": "loomx.ops.qc",
    "calculate_qc_metrics": "loomx.ops.qc",
    "pp": "loomx.analysis",
    "tl": "loomx.analysis",
}
"""Public name -> the module that defines it (imported on first use)."""

_ACCESSOR = "loomx.ops.accessor"
"""Registers ``ds.loom`` when imported."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'loomx' has no attribute {name!r}")
    importlib.import_module(_ACCESSOR)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


if "xarray" in sys.modules:  # xarray is loaded already: nothing to save, register ds.loom now
    importlib.import_module(_ACCESSOR)

__all__ = [
    "LOOM_SPEC_VERSION",
    "LoomFileError",
    "LoomFileNotFoundError",
    "LoomFormatError",
    "LoomFormatWarning",
    "LoomInvalidNameError",
    "LoomNameError",
    "LoomTypeError",
    "LoomWriteError",
    "LoomxError",
    "__version__",
    "append",
    "assign_qc",
    "calculate_qc_metrics",
    "combine",
    "delete",
    "from_anndata",
    "from_arrays",
    "open_loom",
    "pp",
    "recover",
    "repack",
    "tl",
    "to_anndata",
    "to_kerchunk",
    "to_loom",
    "validate_loom",
]

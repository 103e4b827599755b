"""loomx: Loom files as lazy xarray Datasets on dask.

Examples
--------
>>> import loomx
>>> ds = loomx.open_loom("pbmc.loom")  # doctest: +SKIP
>>> ds["matrix"].mean("col").compute()  # doctest: +SKIP
"""

from __future__ import annotations

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
from loomx.interop.anndata import from_anndata, to_anndata
from loomx.interop.arrays import from_arrays
from loomx.ops import accessor as _accessor  # noqa: F401  (registers ds.loom)
from loomx.ops.qc import assign_qc, calculate_qc_metrics

__version__ = "0.1.0"

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

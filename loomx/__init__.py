"""loomx: Loom files as lazy xarray Datasets on dask.

Examples
--------
>>> import loomx
>>> ds = loomx.open_loom("pbmc.loom")  # doctest: +SKIP
>>> ds["matrix"].mean("col").compute()  # doctest: +SKIP
"""

from __future__ import annotations

from . import accessor as _accessor  # noqa: F401  (registers ds.loom)
from ._append import append
from ._combine import combine
from ._create import from_arrays
from ._journal import recover
from ._maintain import delete, repack
from ._spec import LOOM_SPEC_VERSION
from ._writer import to_loom
from .backend import open_loom
from .errors import (
    LoomFileError,
    LoomFileNotFoundError,
    LoomFormatError,
    LoomFormatWarning,
    LoomInvalidNameError,
    LoomNameError,
    LoomWriteError,
    LoomxError,
)
from .interop import from_anndata, to_anndata
from .qc import assign_qc, calculate_qc_metrics
from .references import to_kerchunk
from .validate import validate_loom

__version__ = "0.1.0"

__all__ = [
    "LOOM_SPEC_VERSION",
    "LoomFileError",
    "LoomFileNotFoundError",
    "LoomFormatError",
    "LoomFormatWarning",
    "LoomInvalidNameError",
    "LoomNameError",
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
    "recover",
    "repack",
    "to_anndata",
    "to_kerchunk",
    "to_loom",
    "validate_loom",
]

"""HDF5's filter codes: the one table of the filters loomx knows."""

from __future__ import annotations

BUILTIN_FILTERS = {
    1: "deflate",
    2: "shuffle",
    3: "fletcher32",
    4: "szip",
    5: "nbit",
    6: "scaleoffset",
    32000: "lzf",
}
"""HDF5 filters built into HDF5 and h5py; any other filter is a plugin HDF5 would load
from disk (refused unless a reader allows plugins)."""

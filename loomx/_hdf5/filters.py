"""HDF5's filter codes: the one table of the filters loomx knows, and of those its chunk
reader and kernels decode themselves."""

from __future__ import annotations

__all__ = ["BUILTIN_FILTERS", "DECODED_FILTERS", "DEFLATE", "FLETCHER32", "SHUFFLE"]

DEFLATE = 1
"""gzip/zlib compression (``compression="gzip"`` in h5py; zarr's and numcodecs' ``zlib``)."""
SHUFFLE = 2
"""Byte shuffle: the i-th bytes of every element stored together."""
FLETCHER32 = 3
"""Fletcher-32 checksum of the chunk, stored after it (4 bytes)."""
SZIP = 4
NBIT = 5
SCALEOFFSET = 6
LZF = 32000
"""h5py's own LZF filter."""

BUILTIN_FILTERS = {
    DEFLATE: "deflate",
    SHUFFLE: "shuffle",
    FLETCHER32: "fletcher32",
    SZIP: "szip",
    NBIT: "nbit",
    SCALEOFFSET: "scaleoffset",
    LZF: "lzf",
}
"""HDF5 filters built into HDF5 and h5py; any other filter is a plugin HDF5 would load
from disk (refused unless a reader allows plugins)."""

DECODED_FILTERS = frozenset({DEFLATE, SHUFFLE, FLETCHER32})
"""The filters loomx's chunk reader (:mod:`loomx._hdf5.chunks`) and compiled kernels
(:mod:`loomx._hdf5.kernels`) decode themselves; datasets with others are read by h5py."""

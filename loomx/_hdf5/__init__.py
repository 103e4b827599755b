"""Bytes and HDF5: the one opener and the handle manager, the rollback journal, remote
sources, the chunk index and reader, the compiled kernels, the filter table.  No xarray,
no dask.
"""

__all__: list[str] = []

"""Bytes and HDF5: the one opener and its handles, the rollback journal, remote sources,
the chunk index and reader, the compiled kernels.  No xarray, no dask.
"""

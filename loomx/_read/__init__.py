"""Reading: the layout, the picklable store, the xarray backend, the chunking policy,
layer arrays, pending commits, kerchunk references, validation.
"""

__all__: list[str] = []

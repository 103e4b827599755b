"""The Loom format as loomx models it: spec paths and versions, the one mapping between
Loom paths and xarray names, value encodings, graph rules.
"""

__all__: list[str] = []

"""Writers of the benchmark input files (Loom, AnnData copies, Cell Ranger ``.h5``)."""

__all__: list[str] = []

"""Report scripts: each measures in fresh processes, checks every result and prints
markdown tables."""

__all__: list[str] = []

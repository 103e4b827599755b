"""Report scripts: each checks every result and prints markdown tables."""

__all__: list[str] = []

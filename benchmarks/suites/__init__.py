"""pytest-benchmark suites: every measured method on small generated files, each result checked."""

__all__: list[str] = []

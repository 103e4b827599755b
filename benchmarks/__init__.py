"""Benchmarks of loomx against loompy, h5py, AnnData and the machine's limits (see ``README.md``).

A package so that ``suites/conftest.py`` does not shadow ``tests/conftest.py`` and the
report scripts import the harness as ``benchmarks.harness``.
"""

__all__: list[str] = []

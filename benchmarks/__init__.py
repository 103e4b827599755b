"""Read benchmarks of loomx (a package so its ``conftest`` does not shadow ``tests/conftest``)."""

"""Helpers for testing code that uses loomx: example files and assertions."""

from __future__ import annotations

from loomx.testing._assert import assert_loom_identical
from loomx.testing._example import make_counts_loom, make_example_loom, write_loom_h5py

__all__ = ["assert_loom_identical", "make_counts_loom", "make_example_loom", "write_loom_h5py"]

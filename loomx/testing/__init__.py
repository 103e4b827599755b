"""Helpers for testing code that uses loomx: example files and assertions."""

from __future__ import annotations

from ._example import make_example_loom, write_loom_h5py

__all__ = ["make_example_loom", "write_loom_h5py"]

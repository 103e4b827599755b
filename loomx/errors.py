"""Errors and warnings raised by loomx.

Every error subclasses :class:`LoomxError` *and* the builtin exception a caller would
naturally catch (``ValueError``, ``KeyError``, ``OSError``), so code written against plain
Python exceptions keeps working.  Messages name the file, the HDF5 path, what was found and
what was expected.
"""

from __future__ import annotations

__all__ = [
    "LoomFileError",
    "LoomFormatError",
    "LoomFormatWarning",
    "LoomNameError",
    "LoomWriteError",
    "LoomxError",
]


class LoomxError(Exception):
    """Base class of every error loomx raises on purpose."""


class LoomFormatError(LoomxError, ValueError):
    """The file (or a Dataset about to be written) breaks the Loom spec.

    Examples: a layer whose shape differs from ``/matrix``, an attribute whose length is
    not the axis length, a non-numeric layer, a graph with unequal ``a``/``b``/``w`` lengths.
    """


class LoomFileError(LoomxError, OSError):
    """The file cannot be opened or read as HDF5: missing, not HDF5, truncated, locked."""


class LoomNameError(LoomxError, KeyError):
    """A layer, attribute or graph name that does not exist or is not allowed."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


class LoomWriteError(LoomxError, OSError):
    """Writing a Loom file failed; the original data is left readable."""


class LoomFormatWarning(UserWarning):
    """The file breaks the Loom spec in a way loomx can read around (files from the wild)."""


def describe(path: object, h5path: str) -> str:
    """Return ``"'file.loom', /h5/path"`` for use at the start of error messages."""
    return f"{str(path)!r}, {h5path}"

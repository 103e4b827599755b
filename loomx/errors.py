"""Errors and warnings raised by loomx.

Every error subclasses :class:`LoomxError` *and* the builtin exception a caller would
naturally catch (``ValueError``, ``TypeError``, ``KeyError``, ``OSError``,
``FileNotFoundError``), so code written against plain Python exceptions keeps working.
Messages name the file, the HDF5 path, what was found and what was expected; the file and
the HDF5 path are also attributes (:attr:`LoomxError.path`, :attr:`LoomxError.h5path`),
``None`` where they do not apply.

Examples
--------
>>> try:
...     loomx.open_loom("missing.loom")
... except loomx.LoomFileNotFoundError as err:
...     print(err.path)  # doctest: +SKIP
missing.loom
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "LoomFileError",
    "LoomFileNotFoundError",
    "LoomFormatError",
    "LoomFormatWarning",
    "LoomInvalidNameError",
    "LoomNameError",
    "LoomTypeError",
    "LoomWriteError",
    "LoomxError",
]


def describe(path: object, h5path: str) -> str:
    """Return ``"'file.loom', /h5/path"`` for use at the start of error messages."""
    return f"{str(path)!r}, {h5path}"


class LoomxError(Exception):
    """Base class of every error loomx raises on purpose.

    Parameters
    ----------
    message
        What was found and what was expected.
    path
        The file the error is about; when given, the message starts with it.
    h5path
        The HDF5 object inside the file; when given (with ``path``), the message starts
        with ``'file.loom', /h5/path:``.
    """

    path: str | None
    h5path: str | None
    message: str

    def __init__(
        self,
        message: str = "",
        *,
        path: str | os.PathLike[str] | None = None,
        h5path: str | None = None,
    ) -> None:
        self.path = None if path is None else os.fspath(path)
        self.h5path = h5path
        self.message = message  # without the file and HDF5 path
        if self.path is not None:
            where = describe(self.path, h5path) if h5path else repr(self.path)
            message = f"{where}: {message}" if message else where
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # keep the attributes when errors travel from dask workers (pickled)
        return (_rebuild, (type(self), str(self.args[0]) if self.args else "", self.__dict__))


def _rebuild(cls: type[LoomxError], message: str, state: dict[str, Any]) -> LoomxError:
    err = cls(message)
    err.__dict__.update(state)
    return err


class LoomFormatError(LoomxError, ValueError):
    """The file (or a Dataset about to be written) breaks the Loom spec.

    Examples: a layer whose shape differs from ``/matrix``, an attribute whose length is
    not the axis length, a non-numeric layer, a graph with unequal ``a``/``b``/``w`` lengths.
    """


class LoomInvalidNameError(LoomFormatError):
    """A name that cannot be stored (not an HDF5 link name, or two variables mapping to
    one HDF5 path): a ``ValueError``, unlike :class:`LoomNameError` for names not found."""


class LoomTypeError(LoomxError, TypeError):
    """Values of a dtype an operation cannot take together, such as string and numeric
    attributes asked for as one stacked array."""


class LoomFileError(LoomxError, OSError):
    """The file cannot be opened or read as HDF5: not HDF5, truncated, locked."""


class LoomFileNotFoundError(LoomFileError, FileNotFoundError):
    """The file does not exist (also a :class:`FileNotFoundError`)."""


class LoomNameError(LoomxError, KeyError):
    """A layer, attribute or graph name that does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


class LoomWriteError(LoomxError, OSError):
    """Writing a Loom file failed; the original data is left readable."""


class LoomFormatWarning(UserWarning):
    """The file breaks the Loom spec in a way loomx can read around (files from the wild)."""

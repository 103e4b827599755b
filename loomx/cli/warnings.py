"""Warnings for people: while a command runs, each distinct warning is printed once, as one
line (``loomx: warning: /col_attrs/RegulonsAUC: compound dtype ...``), never with the
source line Python's default format adds.  Python callers of loomx keep ordinary
:mod:`warnings`: only the command line installs this.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from loomx._hdf5.filesystem import TEMPORARY_TAG
from loomx.errors import LoomFormatWarning

_NAMED = re.compile(r"^'((?:[^'\\]|\\.)*)', ")
"""A message naming its file first, as :func:`loomx.errors.describe` writes it."""

__all__ = ["command_inputs", "one_line", "warnings_for_people"]


def one_line(message: Warning | str, category: type[Warning], inputs: Sequence[str] = ()) -> str:
    """The line a person reads for one warning.

    The file name is left out when the command reads one file (it is the one the person
    named, or the temporary copy a command works on); warnings other than loomx's own say
    their kind.

    >>> one_line(LoomFormatWarning("'a.loom', /col_attrs/X: odd"), LoomFormatWarning, ["a.loom"])
    'loomx: warning: /col_attrs/X: odd'
    """
    text = " ".join(str(message).split())
    named = _NAMED.match(text)
    if named and len(inputs) == 1 and named.group(1) in (inputs[0], repr(inputs[0])[1:-1]):
        text = text[named.end() :]
    elif named and len(inputs) <= 1 and TEMPORARY_TAG in named.group(1):
        text = text[named.end() :]  # the copy a command works on (qc --output), not the input
    if not issubclass(category, LoomFormatWarning):
        text = f"{category.__name__}: {text}"
    return f"loomx: warning: {text}"


@contextlib.contextmanager
def warnings_for_people(inputs: Sequence[str] = (), stream: TextIO | None = None) -> Iterator[None]:
    """Print each distinct warning raised inside the block once, as :func:`one_line`.

    Which warnings are shown is left to the filters in force (loomx's own always are).
    """
    seen: set[str] = set()
    lock = threading.Lock()
    files = [str(p) for p in inputs]

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = one_line(message, category, files)
        with lock:
            if text in seen:
                return
            seen.add(text)
        print(text, file=stream or sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.filterwarnings("always", category=LoomFormatWarning)
        warnings.showwarning = show
        yield


def command_inputs(args: Any) -> list[str]:
    """The files a command reads, as the person gave them."""
    found = []
    for key in ("path", "source", "paths", "inputs"):
        value = getattr(args, key, None)
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, str):
                found.append(item)
    return found

"""The ``loomx`` command line: one function per subcommand in :mod:`loomx.cli.commands`,
how a command runs on a dask scheduler in :mod:`loomx.cli.run`, and what ``loomx info``
prints in :mod:`loomx.cli.summary`.

Importing this package loads nothing but the standard library's ``sys`` and ``signal``: an
interrupt (Ctrl-C) while the command itself loads still ends quietly, with exit status 130.

Examples
--------
>>> from loomx.cli import main
>>> main(["info", "pbmc.loom"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

__all__ = ["SUBCOMMANDS", "build_parser", "interrupted", "main", "report_interrupt"]

_INTERRUPTS: list[int] = []


def interrupted() -> bool:
    """Whether Ctrl-C arrived while this command ran.  An import it interrupts can surface
    as an ``ImportError`` (NumPy turns it into one), which then means "interrupted"."""
    return bool(_INTERRUPTS)


def report_interrupt() -> int:
    """Say that the command was interrupted; its exit status (130, as a shell's for SIGINT)."""
    print("loomx: interrupted", file=sys.stderr)
    return 130


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    _INTERRUPTS.append(signum)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``loomx`` console script (see :func:`loomx.cli.commands.main`)."""
    _INTERRUPTS.clear()
    try:
        previous = signal.signal(signal.SIGINT, _on_interrupt)
    except ValueError:  # not the main thread: Python's own handler stays
        previous = None
    try:
        try:
            from loomx.cli.commands import main as run
        except ImportError:
            if not interrupted():  # Ctrl-C inside an import surfaces as one
                raise
            return report_interrupt()
        except KeyboardInterrupt:
            return report_interrupt()
        return run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def __getattr__(name: str) -> Any:
    if name in ("SUBCOMMANDS", "build_parser"):
        from loomx.cli import commands

        return getattr(commands, name)
    raise AttributeError(f"module 'loomx.cli' has no attribute {name!r}")

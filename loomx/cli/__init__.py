"""The ``loomx`` command line: one function per subcommand in :mod:`loomx.cli.commands`,
how a command runs on a dask scheduler in :mod:`loomx.cli.run`, and what ``loomx info``
prints in :mod:`loomx.cli.summary`.

Importing this package loads nothing but the standard library's ``sys``: an interrupt
(Ctrl-C) while the command itself loads still ends quietly, with exit status 130.

Examples
--------
>>> from loomx.cli import main
>>> main(["info", "pbmc.loom"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["SUBCOMMANDS", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``loomx`` console script (see :func:`loomx.cli.commands.main`)."""
    try:
        from loomx.cli.commands import main as run
    except KeyboardInterrupt:
        print("loomx: interrupted", file=sys.stderr)
        return 130
    return run(argv)


def __getattr__(name: str) -> Any:
    if name in ("SUBCOMMANDS", "build_parser"):
        from loomx.cli import commands

        return getattr(commands, name)
    raise AttributeError(f"module 'loomx.cli' has no attribute {name!r}")

"""The ``loomx`` command line: one function per subcommand in :mod:`loomx.cli.commands`,
how a command runs on a dask scheduler in :mod:`loomx.cli.run`, and what ``loomx info``
prints in :mod:`loomx.cli.summary`.

Examples
--------
>>> from loomx.cli import main
>>> main(["info", "pbmc.loom"])  # doctest: +SKIP
0
"""

from loomx.cli.commands import SUBCOMMANDS, build_parser, main

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

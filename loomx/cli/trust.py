"""Untrusted input files: read first in a child process, unless ``--trusted``.

A command whose arguments name input files declares them with :func:`trusted_argument`;
:func:`main <loomx.cli.commands.main>` calls :func:`probe_untrusted_inputs` after parsing,
before the command runs.  A file that makes HDF5 hang, crash or fail there ends the command
with a :class:`~loomx.errors.LoomFileError` naming the object being read, and this process
never opens it.  Standard library only at import (``loomx --help`` stays fast).

Examples
--------
>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> _ = parser.add_argument("path")
>>> trusted_argument(parser, "path")
>>> args = parser.parse_args(["x.loom", "--trusted"])
>>> probe_untrusted_inputs(args)  # --trusted: nothing is read
"""

from __future__ import annotations

import argparse

__all__ = ["probe_untrusted_inputs", "trusted_argument"]

_INPUTS = "untrusted_inputs"
"""The namespace attribute that lists the arguments naming input files."""


def trusted_argument(parser: argparse.ArgumentParser, *names: str) -> None:
    """Give ``parser`` a ``--trusted`` flag, and record that its arguments ``names`` are
    input files to read in a child process first when the flag is not given."""
    parser.add_argument(
        "--trusted",
        action="store_true",
        help="skip reading the file in a time- and memory-limited child process first",
    )
    parser.set_defaults(**{_INPUTS: names})


def probe_untrusted_inputs(args: argparse.Namespace) -> None:
    """Read each input file of the parsed command in a child process
    (:func:`loomx._hdf5.probe.probe_file`), unless ``--trusted`` was given or the command
    declared none; raises the probe's :class:`~loomx.errors.LoomFileError`."""
    names = getattr(args, _INPUTS, ())
    if not names or getattr(args, "trusted", False):
        return
    from loomx._hdf5.probe import is_hdf5, probe_file
    from loomx.cli.checks import is_url, source_path

    for name in names:
        path = getattr(args, name)
        if path is None or is_url(str(path)):  # remote: h5py reads ranges, not the file
            continue
        path = source_path(str(path))
        if is_hdf5(path):
            probe_file(path)

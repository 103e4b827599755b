"""``loomx index FILE``: write the chunk index of a Loom file beside it
(``FILE.kerchunk.json``, kerchunk references), where :func:`loomx.open_loom` of the file's
URL finds it and reads the layers without fetching HDF5's chunk index.

Examples
--------
>>> index_command(build_parser().parse_args(["index", "pbmc.loom"]))  # doctest: +SKIP
pbmc.loom.kerchunk.json: the chunk index of 3 layers (1204 chunks, 0.1 MB)
"""

from __future__ import annotations

import argparse
import json
import os

__all__ = ["index_arguments", "index_command"]


def index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE", help="the Loom file (a path or a URL)")
    parser.add_argument(
        "--output",
        "-o",
        metavar="OUT",
        help="write here (default: FILE.kerchunk.json beside a local FILE; needed for a URL)",
    )


def index_command(args: argparse.Namespace) -> int:
    from loomx._read.sidecar import write_sidecar

    written = write_sidecar(args.path, args.output)
    with open(written, encoding="utf-8") as fh:
        refs = json.load(fh)["refs"]  # what zarr and kerchunk read
    layers = sum(1 for key in refs if key.endswith("/.zarray"))
    chunks = sum(1 for key in refs if not key.rpartition("/")[2].startswith("."))
    size = os.path.getsize(written) / 1e6
    print(f"{written}: the chunk index of {layers} layers ({chunks} chunks, {size:.1f} MB)")
    return 0

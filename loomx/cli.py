"""The ``loomx`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import xarray as xr

from . import _conventions as conv
from .backend import open_loom
from .errors import LoomxError
from .graphs import graph_names


def info(path: str) -> str:
    """A short text summary of a Loom file: shape, layers, attributes, graphs, globals."""
    with open_loom(path) as ds:
        return "\n".join(_summary(path, ds))


def _summary(path: str, ds: xr.Dataset) -> list[str]:
    row_dim, col_dim = ds.loom.dims
    lines = [f"{path}: {ds.sizes[row_dim]} rows x {ds.sizes[col_dim]} columns"]
    lines.append(f"  spec version: {ds.encoding.get('loom_spec_version')}")
    for name in ds.loom.layers:
        var = ds[name]
        enc = var.encoding
        lines.append(
            f"  layer {name}: {var.dtype}, HDF5 chunks {enc.get('chunksizes')}, "
            f"{enc.get('compression')}, dask chunks {tuple(c[0] for c in var.chunks or ())}"
        )
    paths = conv.variable_paths(ds, (row_dim, col_dim))
    for space in ("row_attrs", "col_attrs"):
        attrs = [name for name, h5path in paths.items() if conv.path_kind(h5path) == space]
        lines.append(f"  {space} ({len(attrs)}): {', '.join(attrs)}")
    for space in ("row_graphs", "col_graphs"):
        lines.append(f"  {space}: {', '.join(graph_names(ds, space)) or '-'}")
    for key, value in ds.attrs.items():
        text = np.array2string(value) if isinstance(value, np.ndarray) else str(value)
        lines.append(f"  attrs[{key!r}] = {text[:60]}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``loomx`` console script."""
    parser = argparse.ArgumentParser(prog="loomx", description="Work with Loom files.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="summarise a Loom file")
    p_info.add_argument("path")
    p_example = sub.add_parser("example", help="write a synthetic example Loom file")
    p_example.add_argument("path")
    p_example.add_argument("--rows", type=int, default=500)
    p_example.add_argument("--cols", type=int, default=1200)
    p_recover = sub.add_parser(
        "recover", help="finish or roll back a loomx write that was interrupted"
    )
    p_recover.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            print(info(args.path))
        elif args.command == "example":
            from .testing import make_example_loom

            make_example_loom(args.path, args.rows, args.cols)
            print(f"wrote {args.path}")
        elif args.command == "recover":
            from ._journal import recover

            finished = recover(args.path)
            print(f"{args.path}: {finished} interrupted write(s) finished; nothing left over")
    except LoomxError as err:
        print(f"loomx: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

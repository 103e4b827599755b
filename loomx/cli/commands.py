"""The ``loomx`` command line.

Each subcommand is two functions: ``<name>_arguments(parser)`` declares its arguments and
``<name>_command(args)`` runs it and returns the exit status; :data:`SUBCOMMANDS` lists
them.  Errors print one line, ``loomx: ...``, on stderr and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from loomx.cli.process import process_arguments, process_command
from loomx.cli.warnings import command_inputs, warnings_for_people
from loomx.errors import LoomxError

__all__ = ["SUBCOMMANDS", "build_parser", "main"]


def _progress_wanted(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--scheduler", metavar="ADDRESS", help="connect to a dask.distributed scheduler"
    )
    group.add_argument("--processes", metavar="N", type=int, help="run on N local worker processes")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


# --------------------------------------------------------------------------- qc


def qc_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE", help="the Loom file")
    parser.add_argument("--layer", default="matrix", help="layer holding counts (matrix)")
    parser.add_argument(
        "--mito-prefix",
        nargs="*",
        default=["MT-", "mt-"],
        metavar="PREFIX",
        help="gene symbol prefixes of mitochondrial genes (MT- mt-); none to leave out",
    )
    parser.add_argument(
        "--output", "-o", metavar="OUT.loom", help="write a copy with the metrics instead"
    )
    parser.add_argument(
        "--gene-symbols",
        metavar="ATTR",
        help="row attribute holding gene symbols (default: the first of Gene, gene_name, "
        "features, var_names, ... the file has)",
    )
    _scheduler_arguments(parser)


def qc_command(args: argparse.Namespace) -> int:
    from loomx.cli.run import compute, scheduler
    from loomx.ops.qc import qc_file

    with scheduler(args.scheduler, args.processes) as client:

        def run(*collections: Any) -> tuple[Any, ...]:
            return compute(*collections, client=client, progress=_progress_wanted(args))

        summary = qc_file(
            args.path,
            layer=args.layer,
            mito_prefixes=args.mito_prefix,
            output=args.output,
            compute=run,
            gene_symbols=args.gene_symbols,
        )
    mt = summary["median_pct_counts_mt"]
    if summary["mito_genes"] is None:
        mt_text = "- (no gene symbols, or no --mito-prefix)"
    else:
        mt_text = f"{mt:.2f} ({summary['mito_genes']} mitochondrial genes)"
    rows = [
        ("cells", f"{summary['cells']}"),
        ("genes", f"{summary['genes']}"),
        ("median total_counts", f"{summary['median_total_counts']:g}"),
        ("median n_genes_by_counts", f"{summary['median_n_genes_by_counts']:g}"),
        ("median pct_counts_mt", mt_text),
        ("gene symbols", summary["gene_symbols"] or "- (none found; name one: --gene-symbols)"),
        ("time", f"{summary['seconds']:.2f} s"),
    ]
    print(f"loomx qc: {summary['file']} (layer {summary['layer']})")
    for label, value in rows:
        print(f"  {label:<26}{value}")
    print(f"metrics written to {summary['file']} as column and row attributes")
    return 0


# --------------------------------------------------------------------------- info


def info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE", help="the Loom file")
    parser.add_argument("--json", action="store_true", help="print JSON")


def info_command(args: argparse.Namespace) -> int:
    from loomx.cli.summary import describe_file, format_description

    description = describe_file(args.path)
    print(json.dumps(description, indent=2) if args.json else format_description(description))
    return 0


# --------------------------------------------------------------------------- validate


def validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE", help="the Loom file")
    parser.add_argument(
        "--conventions",
        action="store_true",
        help="also check loompy's attribute conventions (CellID, ClusterID, ...)",
    )


def validate_command(args: argparse.Namespace) -> int:
    from loomx._read.validate import validate_loom

    problems = validate_loom(args.path, conventions=args.conventions)
    for problem in problems:
        print(f"{problem.h5path}: {problem.message}")
    level = "spec and conventions" if args.conventions else "spec"
    if problems:
        print(f"{args.path}: {len(problems)} problem(s) ({level})", file=sys.stderr)
        return 1
    print(f"{args.path}: valid ({level})")
    return 0


# --------------------------------------------------------------------------- convert


def convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="IN",
        help="a .loom, .h5ad, 10x .h5 (filtered_feature_bc_matrix.h5) or 10x MEX folder",
    )
    parser.add_argument("target", metavar="OUT", help="a .loom or .h5ad file")
    parser.add_argument(
        "--genome", metavar="NAME", help="10x input: the genome to convert (one of several)"
    )
    parser.add_argument(
        "--feature-type",
        metavar="TYPE",
        help="10x input: convert only features of this type (e.g. 'Gene Expression', 'Peaks')",
    )
    _scheduler_arguments(parser)


def convert_command(args: argparse.Namespace) -> int:
    from loomx.cli.run import scheduler
    from loomx.interop.conversion import convert

    start = time.perf_counter()
    with scheduler(args.scheduler, args.processes):
        shape = convert(
            args.source,
            args.target,
            progress=_progress_wanted(args),
            genome=args.genome,
            feature_type=args.feature_type,
        )
    seconds = time.perf_counter() - start
    print(f"wrote {args.target}: {shape[0]} genes x {shape[1]} cells in {seconds:.2f} s")
    return 0


# --------------------------------------------------------------------------- aggregate


def aggregate_arguments(parser: argparse.ArgumentParser) -> None:
    from loomx.ops.operations import AGGREGATIONS

    parser.add_argument("path", metavar="FILE", help="the Loom file")
    parser.add_argument("target", metavar="OUT", help="the Loom file to write")
    parser.add_argument("--by", default="ClusterID", help="column attribute (ClusterID)")
    parser.add_argument("--func", default="mean", choices=AGGREGATIONS, help="(mean)")
    parser.add_argument(
        "--enrichment", action="store_true", help="add cytograph's per-group enrichment layer"
    )
    _scheduler_arguments(parser)


def aggregate_command(args: argparse.Namespace) -> int:
    from loomx.cli.run import scheduler
    from loomx.interop.conversion import aggregate_file

    with scheduler(args.scheduler, args.processes):
        shape = aggregate_file(args.path, args.target, args.by, args.func, args.enrichment)
    print(f"wrote {args.target}: {shape[0]} rows x {shape[1]} groups of {args.by}")
    return 0


# --------------------------------------------------------------------------- example


def example_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE")
    parser.add_argument(
        "--counts",
        action="store_true",
        help="realistic counts: negative binomial, clusters, MT- genes (genes x cells)",
    )
    parser.add_argument("--rows", "--genes", type=int, default=None, help="rows (genes)")
    parser.add_argument("--cols", "--cells", type=int, default=None, help="columns (cells)")
    parser.add_argument("--seed", type=int, default=0)


def example_command(args: argparse.Namespace) -> int:
    from loomx.testing import make_counts_loom, make_example_loom

    if args.counts:
        make_counts_loom(args.path, args.rows or 2000, args.cols or 3000, seed=args.seed)
    else:
        make_example_loom(args.path, args.rows or 500, args.cols or 1200, seed=args.seed)
    print(f"wrote {args.path}")
    return 0


# --------------------------------------------------------------------------- recover


def recover_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE")


def recover_command(args: argparse.Namespace) -> int:
    from loomx._write.transaction import recover

    finished = recover(args.path)
    print(f"{args.path}: {finished} interrupted write(s) undone or finished; nothing left over")
    return 0


# --------------------------------------------------------------------------- delete, repack


def delete_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE", help="the Loom file")
    parser.add_argument(
        "names",
        metavar="NAME",
        nargs="+",
        help="layers, attributes or graphs (spliced, Gene, col_graphs:KNN, /layers/x)",
    )


def delete_command(args: argparse.Namespace) -> int:
    from loomx._write.maintain import delete

    delete(args.path, args.names)
    print(f"{args.path}: deleted {', '.join(args.names)} (loomx repack gives the space back)")
    return 0


def repack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="IN", help="the Loom file")
    parser.add_argument(
        "target", metavar="OUT", nargs="?", help="write here instead of replacing IN"
    )


def repack_command(args: argparse.Namespace) -> int:
    import os

    from loomx._write.maintain import repack

    before = os.path.getsize(args.path) if os.path.isfile(args.path) else 0
    repack(args.path, args.target)
    after = os.path.getsize(args.target or args.path)
    print(f"{args.target or args.path}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
    return 0


# --------------------------------------------------------------------------- main

Arguments = Callable[[argparse.ArgumentParser], None]
Command = Callable[[argparse.Namespace], int]

SUBCOMMANDS: dict[str, tuple[str, Arguments, Command]] = {
    "qc": ("compute scanpy's QC metrics in one pass, store them", qc_arguments, qc_command),
    "info": ("summarise a Loom file", info_arguments, info_command),
    "validate": ("check a Loom file against the spec", validate_arguments, validate_command),
    "convert": ("convert between Loom, h5ad and 10x", convert_arguments, convert_command),
    "aggregate": ("one column per group", aggregate_arguments, aggregate_command),
    "example": ("write a synthetic example Loom file", example_arguments, example_command),
    "recover": (
        "finish or roll back a loomx write that was interrupted",
        recover_arguments,
        recover_command,
    ),
    "delete": (
        "delete layers, attributes or graphs, all at once",
        delete_arguments,
        delete_command,
    ),
    "repack": ("give the space of deleted objects back", repack_arguments, repack_command),
    "process": ("QC to clusters and markers, resumable", process_arguments, process_command),
}
"""name -> (help, declare arguments, run); add a subcommand by adding an entry."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="loomx", description="Work with Loom files.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, arguments, command) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        arguments(sub_parser)
        sub_parser.set_defaults(run=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``loomx`` console script."""
    args = build_parser().parse_args(argv)
    try:
        with warnings_for_people(command_inputs(args)):
            return int(args.run(args))
    except LoomxError as err:
        print(f"loomx: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print("loomx: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, ImportError) as err:
        print(f"loomx: {type(err).__name__}: {err}", file=sys.stderr)
    except Exception as err:  # a bug: still one line, with what to report
        print(f"loomx: unexpected {type(err).__name__}: {err} (please report)", file=sys.stderr)
    return 1

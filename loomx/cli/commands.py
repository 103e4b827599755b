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

from loomx.cli import interrupted, report_interrupt
from loomx.cli.index import index_arguments, index_command
from loomx.cli.process import process_arguments, process_command
from loomx.cli.trust import probe_untrusted_inputs, trusted_argument
from loomx.cli.warnings import command_inputs, warnings_for_people
from loomx.errors import LoomxError

__all__ = ["SUBCOMMANDS", "build_parser", "main"]


def _progress_wanted(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _progress(args: argparse.Namespace) -> Any:
    """A progress bar on stderr for the dask computations inside, when wanted."""
    import contextlib

    if not _progress_wanted(args):
        return contextlib.nullcontext()
    from loomx.cli.progress import ProgressBar

    return ProgressBar()


def _scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--scheduler", metavar="ADDRESS", help="connect to a dask.distributed scheduler"
    )
    group.add_argument("--processes", metavar="N", type=int, help="run on N local worker processes")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


# --------------------------------------------------------------------------- qc


_MITO_PREFIXES = ["MT-", "mt-"]  # as loomx.ops.qc.MITO_PREFIXES (not imported to start fast)


def qc_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE", help="the Loom file")
    parser.add_argument("--layer", default="matrix", help="layer holding counts (default: matrix)")
    parser.add_argument(
        "--mito-prefix",
        action="append",
        metavar="PREFIX",
        help="gene symbol prefix of mitochondrial genes; repeat for more (default MT- and mt-)",
    )
    parser.add_argument(
        "--no-mito",
        action="store_true",
        help="skip the mitochondrial metrics (and remove those of an earlier run)",
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


def _mito_text(summary: dict[str, Any], skipped: bool) -> str:
    """The summary's ``median pct_counts_mt`` value: a number, or why there is none."""
    if skipped:
        return "- (skipped: --no-mito)"
    if summary["gene_symbols"] is None:
        return "- (no gene symbol attribute)"
    if not summary["mito_genes"]:
        prefixes = ", ".join(summary["mito_prefixes"])
        return f"- (no gene in {summary['gene_symbols']} starts with {prefixes})"
    mt = summary["median_pct_counts_mt"]
    return f"{mt:.2f} ({summary['mito_genes']} mitochondrial genes)"


def qc_command(args: argparse.Namespace) -> int:
    from loomx.cli import checks

    args.path = checks.loom_source(args.path)
    if args.output:
        checks.check_output(args.output, args.path)
    else:
        checks.check_in_place(args.path)
    from loomx.cli.run import compute, scheduler
    from loomx.ops.qc import qc_file

    with scheduler(args.scheduler, args.processes) as client:

        def run(*collections: Any) -> tuple[Any, ...]:
            return compute(*collections, client=client, progress=_progress_wanted(args))

        options = {
            "layer": args.layer,
            "mito_prefixes": None if args.no_mito else args.mito_prefix or _MITO_PREFIXES,
            "compute": run,
            "gene_symbols": args.gene_symbols,
        }
        if checks.is_url(args.path):
            summary = _qc_remote(args.path, args.output, options)
        else:
            summary = qc_file(args.path, output=args.output, **options)
    mt_text = _mito_text(summary, args.no_mito)
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
    if summary["removed"]:
        print(f"removed metrics of an earlier run: {', '.join(summary['removed'])}")
    return 0


def _qc_remote(url: str, output: str, options: dict[str, Any]) -> dict[str, Any]:
    """``qc_file`` on a local copy of ``url`` that becomes ``output``."""
    from loomx._hdf5.remote import local_copy
    from loomx.ops.qc import qc_file

    with local_copy(url, output) as tmp:
        try:
            summary = qc_file(tmp, **options)
        except LoomxError as err:  # name the URL, not the temporary copy
            raise type(err)(err.message, path=url, h5path=err.h5path) from None
    return {**summary, "file": output}


# --------------------------------------------------------------------------- info


def info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE", help="the Loom file")
    parser.add_argument("--json", action="store_true", help="print JSON")
    trusted_argument(parser, "path")


def info_command(args: argparse.Namespace) -> int:
    from loomx.cli.checks import loom_source
    from loomx.cli.summary import describe_file, format_description

    description = describe_file(loom_source(args.path))
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
    parser.add_argument(
        "--deep",
        action="store_true",
        help="also read every chunk of every layer (checksums verified) and decode every "
        "string, in a child process",
    )
    trusted_argument(parser, "path")


def validate_command(args: argparse.Namespace) -> int:
    from loomx._read.validate import validate_loom
    from loomx.cli.checks import loom_source

    if args.deep:
        from loomx._read.deep import validate_deep
        from loomx.cli.progress import ProgressLine

        started, line = time.perf_counter(), ProgressLine(sys.stderr)

        def draw(done: int, total: int) -> None:
            line.draw(done, total, time.perf_counter() - started)
            if done == total:
                line.end()

        source = loom_source(args.path)
        problems = validate_deep(
            source, conventions=args.conventions, progress=draw if sys.stderr.isatty() else None
        )
    else:
        problems = validate_loom(loom_source(args.path), conventions=args.conventions)
    for problem in problems:
        print(f"{problem.h5path}: {problem.message}")
    level = "spec and conventions" if args.conventions else "spec"
    level += ", every chunk and string" if args.deep else ""
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
    trusted_argument(parser, "source")


def convert_command(args: argparse.Namespace) -> int:
    from loomx.cli import checks

    args.source = checks.source_path(args.source)
    checks.check_output(args.target, args.source)
    from loomx.cli.run import scheduler
    from loomx.interop.conversion import convert

    start = time.perf_counter()
    with scheduler(args.scheduler, args.processes), _progress(args):
        shape = convert(
            args.source, args.target, genome=args.genome, feature_type=args.feature_type
        )
    seconds = time.perf_counter() - start
    print(f"wrote {args.target}: {shape[0]} genes x {shape[1]} cells in {seconds:.2f} s")
    return 0


# --------------------------------------------------------------------------- aggregate


AGGREGATIONS = (
    *("sum", "prod", "mean", "max", "min", "std", "var", "median"),
    *("count_nonzero", "first", "last"),
)
"""As ``loomx.ops.operations.AGGREGATIONS`` (not imported here, to start fast)."""


def aggregate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE", help="the Loom file")
    parser.add_argument("target", metavar="OUT", help="the Loom file to write")
    parser.add_argument(
        "--by", default="ClusterID", help="column attribute to group by (default: ClusterID)"
    )
    parser.add_argument(
        "--func",
        default="mean",
        choices=AGGREGATIONS,
        help="how a group's values become one (default: mean)",
    )
    parser.add_argument(
        "--enrichment", action="store_true", help="add cytograph's per-group enrichment layer"
    )
    _scheduler_arguments(parser)


def aggregate_command(args: argparse.Namespace) -> int:
    from loomx.cli import checks

    args.path = checks.loom_source(args.path)
    checks.check_output(args.target, args.path)
    checks.check_column_attribute(args.path, args.by)
    from loomx.cli.run import scheduler
    from loomx.interop.conversion import aggregate_file

    with scheduler(args.scheduler, args.processes), _progress(args):
        shape = aggregate_file(args.path, args.target, args.by, args.func, args.enrichment)
    print(f"wrote {args.target}: {shape[0]} rows x {shape[1]} groups of {args.by}")
    return 0


# --------------------------------------------------------------------------- example


def example_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE", help="the Loom file to write")
    parser.add_argument(
        "--counts",
        action="store_true",
        help="realistic counts: negative binomial, clusters, MT- genes (genes x cells)",
    )
    parser.add_argument("--rows", "--genes", type=int, default=None, help="rows (genes)")
    parser.add_argument("--cols", "--cells", type=int, default=None, help="columns (cells)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed: same seed, same file (default: 0)"
    )


def example_command(args: argparse.Namespace) -> int:
    from loomx.cli.checks import check_output

    check_output(args.path)
    from loomx.testing import make_counts_loom, make_example_loom

    if args.counts:
        make_counts_loom(args.path, args.rows or 2000, args.cols or 3000, seed=args.seed)
    else:
        make_example_loom(args.path, args.rows or 500, args.cols or 1200, seed=args.seed)
    print(f"wrote {args.path}")
    return 0


# --------------------------------------------------------------------------- recover


def recover_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE", help="the Loom file a killed write left")


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
    from loomx.cli.checks import check_in_place

    check_in_place(args.path, "a writable copy (loomx repack IN OUT, then delete in OUT)")
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
    from loomx.cli import checks

    if args.target:
        checks.check_output(args.target, args.path)
    else:
        checks.check_in_place(args.path, "OUT (loomx repack IN OUT)")
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
    "index": ("write the chunk index of a file beside it", index_arguments, index_command),
}
"""name -> (help, declare arguments, run); add a subcommand by adding an entry."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from loomx import __version__
    from loomx.cli.examples import EXAMPLES

    parser = argparse.ArgumentParser(
        prog="loomx",
        description="Work with Loom files.",
        epilog="example:\n  loomx info pbmc.loom\n  loomx qc --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"loomx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, arguments, command) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        arguments(sub_parser)
        sub_parser.set_defaults(run=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``loomx`` console script."""
    try:
        args = build_parser().parse_args(argv)
        import loomx.ops.accessor  # noqa: F401  (registers ds.loom, which commands use)

        probe_untrusted_inputs(args)
        with warnings_for_people(command_inputs(args)):
            status = int(args.run(args))
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except KeyboardInterrupt:
        return report_interrupt()
    except BrokenPipeError:  # `loomx info x.loom | head`: the reader has what it wanted
        return _quiet_broken_pipe()
    except Exception as err:
        if isinstance(err, ImportError) and interrupted():  # Ctrl-C inside an import
            return report_interrupt()
        from loomx.cli.messages import describe

        print(f"loomx: {describe(err)}", file=sys.stderr)
    return 1


def _quiet_broken_pipe() -> int:
    """Exit status 141 (as a shell reports SIGPIPE), with stdout sent nowhere so that the
    interpreter's last flush does not complain."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141

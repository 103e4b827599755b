"""``loomx process FILE``: the whole analysis chain (:mod:`loomx.analysis.pipeline`) with
progress per step and a summary; flags for each step's main parameters."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["process_arguments", "process_command"]


def process_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``loomx process``."""
    parser.add_argument(
        "path", metavar="FILE", help="the Loom file (results are written into it) or a URL"
    )
    parser.add_argument(
        "--output", "-o", metavar="OUT.loom", help="work on this copy instead (needed for URLs)"
    )
    add = parser.add_argument
    add("--min-cells", type=int, default=3, help="genes in fewer valid cells are not valid (3)")
    add("--target-sum", type=float, default=None, help="counts per cell after normalizing (median)")
    add(
        "--flavor",
        default="seurat",
        choices=["seurat", "cell_ranger", "seurat_v3"],
        help="scanpy's highly-variable-genes flavor (seurat)",
    )
    add("--n-top-genes", type=int, default=2000, help="highly variable genes to select (2000)")
    add("--batch-key", default=None, help="column attribute of batches for gene selection")
    add("--n-comps", type=int, default=None, help="principal components (scanpy's default)")
    add("--n-neighbors", type=int, default=15, help="neighbors per cell (15)")
    add("--resolution", type=float, default=1.0, help="Leiden resolution (1.0)")
    add("--random-state", type=int, default=0, help="seed of neighbors, Leiden and UMAP (0)")
    add(
        "--method",
        default="t-test",
        choices=["t-test", "t-test_overestim_var"],
        help="marker-gene test per ClusterID (t-test)",
    )
    schedulers = parser.add_mutually_exclusive_group()
    schedulers.add_argument("--scheduler", metavar="ADDRESS", help="a dask.distributed scheduler")
    schedulers.add_argument("--processes", metavar="N", type=int, help="N local worker processes")
    add("--quiet", "-q", action="store_true", help="no progress")


def _params(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    seed = args.random_state
    hvg: dict[str, Any] = {"flavor": args.flavor, "n_top_genes": args.n_top_genes}
    if args.batch_key:
        hvg["batch_key"] = args.batch_key
    return {
        "filter_genes": {"min_cells": args.min_cells},
        "normalize": {"target_sum": args.target_sum, "base": None},
        "highly_variable_genes": hvg,
        "pca": {"n_comps": args.n_comps},
        "neighbors": {"n_neighbors": args.n_neighbors, "random_state": seed},
        "leiden": {"resolution": args.resolution, "random_state": seed},
        "umap": {"min_dist": 0.5, "random_state": seed},
        "rank_genes_groups": {"groupby": "ClusterID", "method": args.method},
    }


def process_command(args: argparse.Namespace) -> int:
    """Run ``loomx process``; print a line per step and a summary."""
    from loomx.cli import checks

    args.path = checks.loom_source(args.path)
    if args.output:
        checks.check_output(args.output, args.path)
    else:
        checks.check_in_place(args.path, "--output OUT.loom")  # a URL needs --output
    from loomx.analysis.pipeline import STEPS, process_file
    from loomx.cli.run import compute, scheduler

    bar = not args.quiet and sys.stderr.isatty()

    def progress(index: int, step: str, state: str, seconds: float) -> None:
        if args.quiet:
            return
        head = f"[{index + 1}/{len(STEPS)}] {step}"
        if state == "start":
            print(f"{head} ...", flush=True)
        elif state == "skipped":
            print(f"{head}: skipped (done before, same parameters)", flush=True)
        else:
            print(f"{head}: done in {seconds:.1f} s", flush=True)

    with scheduler(args.scheduler, args.processes) as client:

        def run(*collections: Any) -> tuple[Any, ...]:
            return compute(*collections, client=client, progress=bar)

        summary = process_file(
            args.path, params=_params(args), output=args.output, compute=run, progress=progress
        )
    print(f"loomx process: {summary['file']}")
    rows = [
        ("cells (valid)", f"{summary['cells']} ({summary['valid_cells']})"),
        ("genes (valid)", f"{summary['genes']} ({summary['valid_genes']})"),
        ("selected genes", f"{summary['selected_genes']}"),
        ("clusters", f"{summary['clusters']}"),
        ("steps run", f"{sum(s == 'done' for s in summary['steps'].values())} of {len(STEPS)}"),
        ("time", f"{sum(summary['seconds'].values()):.1f} s"),
    ]
    for label, value in rows:
        print(f"  {label:<18}{value}")
    return 0

"""Every subcommand's ``--help`` example (:mod:`loomx.cli.examples`)."""

from __future__ import annotations

from loomx.cli import SUBCOMMANDS
from loomx.cli.commands import AGGREGATIONS
from loomx.cli.examples import EXAMPLES


def test_every_subcommand_has_an_example_of_itself():
    assert set(EXAMPLES) == set(SUBCOMMANDS)
    for name, text in EXAMPLES.items():
        assert text.startswith("example:\n") and f"loomx {name} " in text


def test_the_cli_offers_the_aggregations_there_are():
    from loomx.ops.operations import AGGREGATIONS as ops_aggregations

    assert tuple(AGGREGATIONS) == tuple(ops_aggregations)

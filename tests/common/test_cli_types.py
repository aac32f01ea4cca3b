"""The click parameter types every option shares: each bad value is refused with a message that names it."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from dawnpipe.common.cli_types import CommaList, Finite, explicit_options, typed_command


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "2", "x"])
def test_finite_refuses_nan_infinities_and_values_outside_its_range(bad):
    with pytest.raises(click.BadParameter):
        Finite(0, 1).convert(bad, None, None)
    assert Finite(0, 1).convert("0.25", None, None) == 0.25


def test_comma_list_checks_names_numbers_ranges_and_repeats():
    names = CommaList("modes", ("none", "flip"), allow_all=True)
    assert names.convert("none, flip", None, None) == ("none", "flip")
    assert names.convert(("flip",), None, None) == ("flip",)  # a parsed default passes through
    widths = CommaList("list", kind=float, low=0.0, high=4.0, repeats=False)
    assert widths.convert("0.5,1.25", None, None) == (0.5, 1.25)
    for kind, value, said in (
        (names, "none,bogus", "unknown modes bogus; choose from none, flip or all"),
        (names, " , ", "no mode given"),
        (widths, "0,1", "each value must lie in (0, 4]"),  # floats: open at the low end
        (widths, "1,nan", "each value must lie in (0, 4]"),
        (widths, "1,1.0", "repeats a value"),
        (widths, "1,x", "is not a comma-separated list of floats"),
        (CommaList("seeds", kind=int, low=0, high=9), "-1", "each value must lie in [0, 9]"),  # integers: closed
    ):
        with pytest.raises(click.BadParameter, match=said.replace("(", r"\(").replace("[", r"\[")):
            kind.convert(value, None, None)


def test_the_command_line_as_typed_holds_only_what_was_typed_in_the_commands_order():
    seen = {}

    @click.command("pipeline")
    @click.option("--widths", type=CommaList("list", kind=float), default="1")
    @click.option("--name", default="x")
    @click.option("--resume", is_flag=True)
    @click.option("--rule", "rules", multiple=True)
    def command(**opts):
        explicit = explicit_options(opts)
        seen["explicit"], seen["line"] = explicit, typed_command(opts, explicit)

    args = ["--resume", "--rule", "a", "--name", "my run", "--rule", "b", "--widths", "0.5,1"]
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 0, result.output
    assert seen["explicit"] == {"widths", "name", "resume", "rules"}
    # options in the command's order, defaults left out, values shell-quoted, lists rejoined with commas
    assert seen["line"] == "dawnpipe pipeline --widths 0.5,1.0 --name 'my run' --resume --rule a --rule b"
    CliRunner().invoke(command, [])
    assert seen == {"explicit": set(), "line": "dawnpipe pipeline"}

"""The command line's generic parts: parameter types that refuse a bad value in one line before any work starts (a
float range that also refuses nan and inf, and a comma-separated list of names or numbers, each checked and never
repeated); the group that prints every expected failure as one line; a config dataclass's field default (where
every default lives) and one decorator for a group of options; and the two questions a command asks of its own
command line: which options were typed, and the line as typed. cli.py declares dawnpipe's options with these."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import click

from dawnpipe.common.errors import DawnpipeError


def default(config: type, name: str) -> object:
    """The default of field ``name`` of dataclass ``config``: where every default lives, shown by --help."""
    found = {f.name: f for f in dataclasses.fields(config)}[name]
    return found.default if found.default is not dataclasses.MISSING else found.default_factory()


class OneLineErrors(click.Group):
    """A click group that prints a DawnpipeError as ``error: <problem>; <fix>`` (exit 1) and a bad option value as one
    line naming the command's --help (exit 2): never a traceback, never click's three-line usage block."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DawnpipeError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(1)
        except click.UsageError as err:  # bad option values: one line too (click's default prints three)
            where = err.ctx.command_path if err.ctx else "dawnpipe"
            message = " ".join(err.format_message().split())
            click.echo(f"error: {message}; see `{where} --help`", err=True)
            ctx.exit(2)


def options(*declared: Callable) -> Callable:
    """Apply click options in the order listed (one decorator for a whole group)."""

    def apply(command):
        for option in reversed(declared):
            command = option(command)
        return command

    return apply


class Finite(click.FloatRange):
    """A float range that also refuses nan and inf (click's FloatRange lets nan through every comparison)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class CommaList(click.ParamType):
    """Comma-separated values: names from ``choices`` (plus ``all`` when allowed), or numbers of ``kind`` in a
    range, each checked, never repeated; a tuple passes through (a default already parsed)."""

    def __init__(self, name: str, choices=(), allow_all=False, kind=str, low=None, high=None, repeats=True) -> None:
        self.name, self.choices, self.allow_all = name, tuple(choices), allow_all
        self.kind, self.low, self.high, self.repeats = kind, low, high, repeats

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            items = tuple(self.kind(v.strip()) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.kind.__name__}s", param, ctx)
        if not items:
            self.fail(f"no {self.name[:-1] if self.name.endswith('s') else self.name} given", param, ctx)
        if self.choices:
            known = (*self.choices, "all") if self.allow_all else self.choices
            unknown = [v for v in items if v not in known]
            if unknown:
                listed = ", ".join(self.choices) + (" or all" if self.allow_all else "")
                self.fail(f"unknown {self.name} {', '.join(unknown)}; choose from {listed}", param, ctx)
        if self.low is not None:  # floats in (low, high], integers in [low, high]
            closed = self.kind is int
            bad = [v for v in items if not (math.isfinite(v) and (v >= self.low if closed else v > self.low))]
            bad += [v for v in items if v > self.high]
            if bad:
                span = f"{'[' if closed else '('}{self.low:g}, {self.high:g}]"
                self.fail(f"{value!r}: each value must lie in {span}", param, ctx)
        if not self.repeats and len(set(items)) != len(items):
            self.fail(f"{value!r} repeats a value", param, ctx)
        return items

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        names = (*self.choices, "all") if self.allow_all else self.choices
        return [CompletionItem(c) for c in names if c.startswith(incomplete)]


def typed_command(opts: dict, explicit: set[str]) -> str:
    """The command line as typed (the options given explicitly, in the command's order), shell-quoted."""
    import shlex

    ctx = click.get_current_context()
    words = ["dawnpipe", ctx.info_name or "pipeline"]
    for param in ctx.command.params:
        if param.name not in explicit or not isinstance(param, click.Option):
            continue
        value, flag = opts[param.name], param.opts[0]
        if param.is_flag:
            words += [flag] if value else []
        elif param.multiple:
            words += [w for v in value for w in (flag, str(v))]
        else:
            words += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return shlex.join(words)


def explicit_options(opts: dict) -> set[str]:
    """The options the user typed (not defaults): these win over a preset's values."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {name for name in opts if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}

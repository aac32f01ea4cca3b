"""click parameter types that refuse a bad value in one line before any work starts (a float range that also
refuses nan and inf, and a comma-separated list of names or numbers, each checked and never repeated), and the two
questions a command asks of its own command line: which options were typed, and the line as typed."""

from __future__ import annotations

import math

import click


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

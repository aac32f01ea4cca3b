"""Every command's options, names and defaults against a snapshot taken before cli.py was rewritten (issue 34):
declaring each option once must not change what a user types or gets by default. Options added since are listed
below with the issue that added them; anything else that differs fails."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dawnpipe.cli import main

SNAPSHOT = Path(__file__).with_name("cli_options_before.json")
NEW_COMMANDS = {"recheck", "import"}  # 31: recompute a report's margins from the file alone; 47: import an entrant
ADDED_CHOICES = {
    "openvino": "issue 33: the OpenVINO backend",
    "airbench94": "issue 47: airbench94's own six weighted views",
    "selective-airbench94": "issue 47: airbench94's views, selectively",
}
ADDED = {  # (command, option): why it is new
    ("serve", "backend"): "issue 33: serve on any backend, openvino among them",
    ("pipeline", "latency_calls"): "issue 34: a family times with eval's --latency-calls",
    ("pipeline", "throughput_batch"): "issue 34: the throughput figure's batch, as eval's",
    ("eval", "throughput_batch"): "issue 34: the throughput figure's batch, named (it was fixed at 256)",
    ("pipeline", "calibration_method"): "issue 32: the family's int8 range method (minmax was refused at w1.25)",
    ("eval", "latency_only"): "issue 32: time a family's scored rows in one session without scoring them again",
    ("train", "precision"): "issue 43: precision is the caller's choice (auto keeps the machine's choice)",
    ("pipeline", "precision"): "issue 43: the family's training and torch rows at a chosen precision",
    ("eval", "precision"): "issue 43: the torch backends' precision as a choice",
    ("train", "cuda_graph"): "issue 45: the CUDA graph of the training step can be turned off",
    ("pipeline", "cuda_graph"): "issue 45: the family's training step, as train's",
}
WIDENED = {  # (command, parameter before): (parameter now, why); a widening: what was typed before still works
    ("eval", "artifact"): ("artifacts", "issue 32: several artifacts timed in one session, one still accepted"),
}


def describe(command: click.Command) -> list[dict]:
    """Each parameter's name, flags, kind, default (as text), choices and whether it is a flag, repeatable or
    required: what the snapshot holds."""
    out = []
    for p in command.params:
        if isinstance(p, click.Option) and p.name == "help":
            continue
        value = p.default
        value = list(value) if isinstance(value, tuple) else value
        if value is not None and not isinstance(value, bool | int | float | list):
            value = str(value)
        out.append(
            {
                "name": p.name,
                "opts": list(p.opts) + list(getattr(p, "secondary_opts", [])),
                "kind": type(p).__name__,
                "default": value,
                "flag": bool(getattr(p, "is_flag", False)),
                "multiple": bool(p.multiple),
                "required": bool(p.required),
                "choices": [c for c in getattr(p.type, "choices", []) or [] if c not in ADDED_CHOICES],
            }
        )
    return out


def test_every_option_keeps_its_name_and_default():
    before = json.loads(SNAPSHOT.read_text())
    now = {name: describe(command) for name, command in sorted(main.commands.items())}
    assert sorted(now) == sorted(set(before) | NEW_COMMANDS)
    for name, params in now.items():
        if name in NEW_COMMANDS:
            continue
        kept = [p for p in params if (name, p["name"]) not in ADDED]
        was = [_widened(name, p) for p in before[name]]
        assert kept == was, name
    for command, option in ADDED:
        assert any(p["name"] == option for p in now[command]), (command, option)


def _widened(command: str, param: dict) -> dict:
    """The snapshot's entry as the widened parameter now describes itself: renamed (it takes one or more values)."""
    if (command, param["name"]) not in WIDENED:
        return param
    now, _ = WIDENED[(command, param["name"])]
    return {**param, "name": now, "opts": [now]}  # nargs=-1 (checked below) is not in the snapshot


def test_eval_takes_one_artifact_as_before_and_several_now():
    params = {p.name: p for p in main.commands["eval"].params}
    assert params["artifacts"].nargs == -1 and params["artifacts"].required

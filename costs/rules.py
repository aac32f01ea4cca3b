"""Benchmark TTA rules as data, and the decision each one makes over a set of measured configurations.

Built-in rules (each names the statistic it uses):
- ``no-tta``: TTA banned, exactly one view per image; ranked by accuracy.
- ``dawnbench``: DAWNBench's inference track: among configurations reaching an accuracy threshold (default
  94%, settable since the JPEG copy tops out lower), the lowest batch-1 latency per image (mean) wins.
- ``total-flops``: the Myrtle.ai proposal: total inference FLOPs per image (model FLOPs x views) at most a
  budget (default one ResNet-18 pass on a 32x32 image, computed by costs.reference); ranked by accuracy.
- ``latency``: batch-1 mean latency per image at most a budget in ms (needs --budget-ms); ranked by accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.costs.points import Point, compare, scope

RULE_NAMES = ("no-tta", "dawnbench", "total-flops", "latency")
DEFAULT_RULES = ("no-tta", "dawnbench", "total-flops")


@dataclass(frozen=True)
class Rule:
    """A rule: what it limits, its budget, the statistic it ranks by, and (dawnbench) its accuracy threshold."""

    name: str
    limits: str  # "views" | "accuracy" | "gflops" | "latency_ms"
    budget: float | None  # views, GFLOPs or ms per image; the accuracy fraction for dawnbench
    ranks_by: str  # "accuracy" (higher wins) | "latency" (batch-1 mean ms per image, lower wins)
    description: str


@dataclass(frozen=True)
class Verdict:
    """Whether a point is eligible under a rule, and why, in numbers."""

    rule: str
    label: str
    passed: bool
    reason: str


@dataclass
class Decision:
    """A rule's outcome: winner, runner-up, the margin between them, and whether TTA earns its cost."""

    rule: Rule
    eligible: list[Point]
    winner: Point | None
    runner_up: Point | None
    margin: dict[str, Any] | None
    tta_answer: str
    backend: str = ""  # the backend and precision every point of this decision runs on
    lift: str = ""  # dawnbench: whether TTA is what lifts configurations over the bar

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for report.json."""
        return {
            "rule": self.rule.name,
            "backend": self.backend,
            "ranks_by": self.rule.ranks_by,
            "eligible": len(self.eligible),
            "winner": self.winner.label if self.winner else None,
            "runner_up": self.runner_up.label if self.runner_up else None,
            "margin": self.margin,
            "does_tta_earn_its_cost": self.tta_answer,
            "tta_lifts_over_the_bar": self.lift or None,
        }


def make_rules(
    names: list[str] | tuple[str, ...],
    *,
    budget_gflops: float | None = None,
    budget_ms: float | None = None,
    reference_gflops: float | None = None,
    accuracy_threshold: float = 94.0,
) -> list[Rule]:
    """Rules by name with their budgets; unknown names and bad budgets are one-line errors."""
    for label, value in (("--budget-gflops", budget_gflops), ("--budget-ms", budget_ms)):
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise DawnpipeError(f"{label} {value} is not a positive finite budget", f"pass {label} greater than 0")
    if not (isinstance(accuracy_threshold, int | float) and 0 <= accuracy_threshold <= 100):
        raise DawnpipeError(f"--accuracy-threshold {accuracy_threshold!r} is not a percentage", "pass e.g. 94")
    rules = []
    for name in names:
        if name not in RULE_NAMES:
            raise DawnpipeError(f"unknown rule {name!r}", f"use one of {', '.join(RULE_NAMES)}")
        if name == "no-tta":
            rules.append(Rule(name, "views", 1.0, "accuracy", "TTA banned: one view per image; highest accuracy wins"))
        elif name == "dawnbench":
            rules.append(
                Rule(
                    name,
                    "accuracy",
                    accuracy_threshold / 100,
                    "latency",
                    f"TTA allowed; among configurations reaching {accuracy_threshold:g}% accuracy, the lowest "
                    "batch-1 mean latency per image wins (DAWNBench's inference track)",
                )
            )
        elif name == "total-flops":
            budget = budget_gflops if budget_gflops is not None else reference_gflops
            if budget is None:
                from dawnpipe.costs.reference import resnet18_flops

                budget = resnet18_flops() / 1e9
            source = "user budget" if budget_gflops is not None else "one ResNet-18 pass on 32x32"
            rules.append(
                Rule(
                    name,
                    "gflops",
                    budget,
                    "accuracy",
                    f"total inference FLOPs per image (model x views) <= {budget:.4g} GFLOP ({source}); "
                    "highest accuracy wins",
                )
            )
        elif name == "latency":
            if budget_ms is None:
                raise DawnpipeError("the latency rule needs a budget", "pass --budget-ms MS")
            rules.append(
                Rule(
                    name,
                    "latency_ms",
                    budget_ms,
                    "accuracy",
                    f"batch-1 mean latency per image <= {budget_ms:g} ms; highest accuracy wins",
                )
            )
    return rules


def verdict(rule: Rule, point: Point) -> Verdict:
    """Is ``point`` eligible under ``rule``? (pure: no I/O, no measurement)."""
    if rule.limits == "views":
        ok = not point.uses_tta
        return Verdict(rule.name, point.label, ok, f"{point.views_per_image:.2f} views/image")
    if rule.limits == "accuracy":
        if point.latency_ms is None:
            return Verdict(rule.name, point.label, False, "latency not measured, so it cannot be ranked")
        ok = point.accuracy >= rule.budget  # type: ignore[operator]
        sign = ">=" if ok else "<"
        return Verdict(
            rule.name, point.label, ok, f"accuracy {100 * point.accuracy:.2f}% {sign} {100 * rule.budget:g}%"
        )
    if rule.limits == "gflops":
        ok = point.gflops_per_image <= rule.budget * (1 + 1e-9)  # type: ignore[operator]
        sign = "<=" if ok else ">"
        return Verdict(rule.name, point.label, ok, f"{point.gflops_per_image:.4f} GFLOP/image {sign} {rule.budget:.4f}")
    if point.latency_ms is None:
        return Verdict(rule.name, point.label, False, "latency not measured, so it cannot be shown within budget")
    ok = point.latency_ms <= rule.budget  # type: ignore[operator]
    return Verdict(rule.name, point.label, ok, f"{point.latency_ms:.3f} ms/image {'<=' if ok else '>'} {rule.budget:g}")


def _rank(rule: Rule, points: list[Point]) -> list[Point]:
    if rule.ranks_by == "latency":
        return sorted(points, key=lambda p: (p.latency_ms, -p.accuracy))
    return sorted(points, key=lambda p: (-p.accuracy, p.gflops_per_image, p.latency_ms or 0.0))


def decide(rule: Rule, points: list[Point]) -> Decision:
    """Winner and runner-up under ``rule``, their margin, and a sentence on whether TTA earns its cost."""
    eligible = _rank(rule, [p for p in points if verdict(rule, p).passed])
    winner = eligible[0] if eligible else None
    runner_up = eligible[1] if len(eligible) > 1 else None
    margin = compare(winner, runner_up, rule.ranks_by) if winner and runner_up else None
    backends = sorted({f"{p.backend} {p.precision}" for p in points})
    answer = _tta_answer(rule, points, eligible)
    lift = _lift(rule, points) if rule.limits == "accuracy" else ""
    return Decision(rule, eligible, winner, runner_up, margin, answer, ", ".join(backends), lift)


def _lift(rule: Rule, points: list[Point]) -> str:
    """Which networks clear the accuracy bar only with TTA (their single-view twin on the same backend falls short),
    and whether the fastest configuration over the bar is one of them."""
    bar = rule.budget or 0.0
    over = [p for p in points if p.accuracy >= bar]
    if not over:
        return "No configuration clears the bar, with or without TTA."
    lifted = []
    for _, model in sorted({(p.width, p.model) for p in over}):  # entrants (width 0) by name, then family widths
        twin = next((q for q in points if q.model == model and not q.uses_tta), None)
        with_tta = sorted((p for p in over if p.model == model and p.uses_tta), key=lambda p: p.views_per_image)
        if twin is not None and twin.accuracy < bar and with_tta:
            lifted.append(
                f"{model} ({100 * twin.accuracy:.2f}% with one view; over with {', '.join(p.tta for p in with_tta)})"
            )
    timed = [p for p in over if p.latency_ms is not None]
    fastest = min(timed, key=lambda p: p.latency_ms) if timed else None
    head = f"Over the bar only with TTA: {'; '.join(lifted)}." if lifted else "TTA lifts no width over the bar."
    if fastest is None:
        return head
    if fastest.uses_tta:
        twin = next((q for q in points if q.model == fastest.model and not q.uses_tta), None)
        if twin is not None and twin.accuracy < bar:
            return f"{head} The fastest configuration over the bar, {fastest.label}, gets there by TTA."
        return f"{head} The fastest configuration over the bar, {fastest.label}, uses TTA its width did not need."
    return f"{head} The fastest configuration over the bar, {fastest.label}, needs no TTA."


def _ms_interval(m: dict[str, Any]) -> str:
    if m.get("low") is None:
        why = m.get("method") or "no timing rounds recorded"
        return f"{m['difference']:.3f} ms/image (no interval: {why})"
    return f"{m['difference']:.3f} ms/image (95% CI {m['low']:.3f} to {m['high']:.3f})"


def _fmt_interval(m: dict[str, Any], unit: str = "points") -> str:
    scale = 100 if unit == "points" else 1
    return f"{scale * m['difference']:+.2f} {unit} (95% CI {scale * m['low']:+.2f} to {scale * m['high']:+.2f})"


def _tta_answer(rule: Rule, points: list[Point], eligible: list[Point]) -> str:
    if rule.limits == "views":
        return "No TTA is allowed under this rule, so the question does not arise: only single-view models compete."
    if not eligible:
        if rule.limits == "accuracy":
            best = max(points, key=lambda p: p.accuracy) if points else None
            top = f" (best: {best.label} at {100 * best.accuracy:.2f}%)" if best else ""
            return f"Nothing reaches {100 * rule.budget:g}%{top}, so this rule ranks nothing here."
        return "No configuration fits this rule's budget."
    tta = [p for p in eligible if p.uses_tta]
    plain = [p for p in eligible if not p.uses_tta]
    if rule.ranks_by == "latency":
        winner = eligible[0]
        if winner.uses_tta and not plain:
            return f"Yes: only TTA configurations reach {100 * rule.budget:g}%, and {winner.label} is the fastest."
        # the fastest of the other kind is the comparison a reader needs (TTA against no TTA), with its interval over
        # timing rounds; a margin whose interval holds zero decides nothing, whatever the means say
        if winner.uses_tta:
            m = compare(winner, plain[0], "latency")
            word = "Yes" if m.get("significant") else "Not shown"
            tail = "" if m.get("significant") else "; within noise over these timing rounds"
            return (
                f"{word}: with TTA, {winner.label} reaches the threshold faster than the fastest single-view model "
                f"({plain[0].label}) by {_ms_interval(m)}{tail}."
            )
        if tta:
            m = compare(winner, tta[0], "latency")
            word, tail = (
                ("No", "extra views cost more time than scaling")
                if m.get("significant")
                else ("Not shown", "within noise over these timing rounds")
            )
            return (
                f"{word}: a single-view model ({winner.label}) reaches the threshold {_ms_interval(m)} faster than the "
                f"fastest TTA configuration ({tta[0].label}); {tail}."
            )
        return "No: no TTA configuration reaches the threshold."
    if not tta:
        return "No: no TTA configuration fits the budget; the budget is spent on the network, not on views."
    if not plain:
        return f"Yes by default: only TTA configurations fit; the best is {tta[0].label}."
    m = compare(tta[0], plain[0], "accuracy")
    if m.get("low") is None:
        return (
            f"Undecided: {tta[0].label} vs {plain[0].label} differ by {100 * m['difference']:+.2f} points (unpaired)."
        )
    verdict_word = "Yes" if m["significant"] and m["difference"] > 0 else ("No" if m["significant"] else "Not shown")
    tail = {
        "Yes": "the extra views buy more accuracy than the best single-view model within the same limit",
        "No": "the best single-view model within the same limit is more accurate",
        "Not shown": "the difference is within noise at this sample size",
    }[verdict_word]
    return (
        f"{verdict_word}: the best TTA configuration ({tta[0].label}) vs the best single-view one "
        f"({plain[0].label}): {_fmt_interval(m)}; {tail}{scope(m)}."
    )

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.costs.stats import paired_difference, round_difference, seed_spread

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
class Point:
    """One configuration (width x TTA mode x backend x precision), pooled over its seeds."""

    label: str
    width: float
    tta: str
    backend: str
    precision: str
    seeds: tuple[int, ...]
    accuracy: float  # mean over seeds (= the mean over images of each image's seed mean)
    accuracy_std: float  # sample std over seeds (0 with one seed): the seed-to-seed spread, beside the interval
    ci95: tuple[float, float]  # each test image counted once (costs.stats.accuracy_interval)
    views_per_image: float
    gflops_per_image: float
    latency_ms: float | None = None  # batch-1 mean per image, averaged over seeds
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_std_ms: float | None = None
    latency_calls: int = 0
    latency_flagged: bool = False
    selected_fraction: float | None = None
    selected_fraction_holdout: float | None = None  # what the threshold selects on the run's hold-out (its fit)
    threshold_source: str | None = None  # where the selective threshold came from (per artifact, or training)
    correct: tuple[np.ndarray, ...] = field(default=(), repr=False, compare=False)  # per seed, for pairing
    latency_rounds_ms: tuple[tuple[float, ...], ...] = field(default=(), repr=False, compare=False)  # per seed
    latency_sessions: tuple[str, ...] = field(default=(), repr=False, compare=False)  # per seed: its timing session
    latency_drift: float | None = None  # largest round-to-round drift of the sessions it was timed in

    @property
    def uses_tta(self) -> bool:
        """More than one view per image on average."""
        return self.views_per_image > 1.0 + 1e-9


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


def cheapest_at_least(
    cost: float, candidates: list[Point], price: Callable[[Point], float]
) -> tuple[Point | None, bool]:
    """The network to set against a configuration costing ``cost``: the cheapest of ``candidates`` whose ``price`` is
    at least ``cost`` (True), else the most expensive (False); (None, False) without candidates. A relative 1e-9
    counts float noise as equal. The views-against-network tables and the entrants' pairings both choose here."""
    ranked = sorted(candidates, key=price)
    if not ranked:
        return None, False
    at_least = [q for q in ranked if price(q) >= cost * (1 - 1e-9)]
    return (at_least[0], True) if at_least else (ranked[-1], False)


def compare(a: Point, b: Point, by: str) -> dict[str, Any]:
    """Margin of ``a`` over ``b`` with its 95% interval: paired accuracy (same images and seeds) or latency."""
    if by == "latency":
        return _latency_margin(a, b)
    # pair seed k of A with seed k of B by seed value, never by position: in a family stopped part-way one width
    # may hold seeds (0, 1) and another (0,) only; the margin then covers the seeds both have, and says which
    seeds = sorted(set(a.seeds) & set(b.seeds))
    if not seeds or not a.correct or not b.correct:
        return {"statistic": "accuracy", "difference": a.accuracy - b.accuracy, "low": None, "high": None}
    a_by_seed = dict(zip(a.seeds, a.correct, strict=True))
    b_by_seed = dict(zip(b.seeds, b.correct, strict=True))
    paired = paired_difference([a_by_seed[s] for s in seeds], [b_by_seed[s] for s in seeds])
    partial = len(seeds) < max(len(a.seeds), len(b.seeds))
    return {
        "statistic": "accuracy (paired, each image once)",
        **paired.to_dict(),
        "seeds": seeds,
        "partial_seeds": partial,
        "seed_spread": seed_spread(a_by_seed, b_by_seed, seeds),
    }


def _latency_margin(a: Point, b: Point) -> dict[str, Any]:
    """Batch-1 ms per image ``a`` saves over ``b``, the timing round the unit: each side's seeds averaged within each
    (session, round) first, so a round counts once however many seeds it timed; paired round by round when both
    sides were timed in the same rounds, else the two sides' rounds compared as two samples (costs.stats)."""
    if a.latency_ms is None or b.latency_ms is None:
        return {"statistic": "latency", "difference": None}
    a_by, b_by = _rounds_by_seed(a), _rounds_by_seed(b)
    if not a_by or not b_by:  # rows timed before rounds were recorded: the means, with no interval
        return {"statistic": "batch-1 mean ms/image saved", "difference": b.latency_ms - a.latency_ms, "low": None,
                "high": None, "significant": False, "method": "no timing rounds recorded"}  # fmt: skip
    common = sorted(set(a_by) & set(b_by))
    a_rounds = _round_means({s: a_by[s] for s in common} if common else a_by)
    b_rounds = _round_means({s: b_by[s] for s in common} if common else b_by)
    paired = bool(common) and set(a_rounds) == set(b_rounds) and all(session for session, _ in a_rounds)
    if paired:
        keys = sorted(a_rounds)
        margin = round_difference([a_rounds[k] for k in keys], [b_rounds[k] for k in keys], True)
    else:
        margin = round_difference(list(a_rounds.values()), list(b_rounds.values()), False)
    return {
        "statistic": "batch-1 mean ms/image saved",
        "difference": margin.difference,
        "low": margin.low,
        "high": margin.high,
        "significant": margin.significant,
        "rounds": margin.rounds,
        "paired_rounds": margin.paired,
        "method": margin.method,
    }


def _round_means(by_seed: dict[int, tuple[tuple[float, ...], str]]) -> dict[tuple[str, int], float]:
    """Per (session, round index): the mean over the seeds timed in that round of their per-round latency. Rows
    timed before sessions were recorded have session "" and never pair."""
    groups: dict[tuple[str, int], list[float]] = {}
    for rounds, session in by_seed.values():
        for index, value in enumerate(rounds):
            groups.setdefault((session, index), []).append(value)
    return {key: float(np.mean(values)) for key, values in groups.items()}


def _rounds_by_seed(p: Point) -> dict[int, tuple[tuple[float, ...], str]]:
    sessions = p.latency_sessions or ("",) * len(p.latency_rounds_ms)
    return {
        seed: (rounds, session)
        for seed, rounds, session in zip(p.seeds, p.latency_rounds_ms, sessions, strict=False)
        if rounds
    }


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
    """Which widths clear the accuracy bar only with TTA (their single-view twin on the same backend falls short),
    and whether the fastest configuration over the bar is one of them."""
    bar = rule.budget or 0.0
    over = [p for p in points if p.accuracy >= bar]
    if not over:
        return "No configuration clears the bar, with or without TTA."
    lifted = []
    for width in sorted({p.width for p in over}):
        twin = next((q for q in points if q.width == width and not q.uses_tta), None)
        with_tta = sorted((p for p in over if p.width == width and p.uses_tta), key=lambda p: p.views_per_image)
        if twin is not None and twin.accuracy < bar and with_tta:
            lifted.append(
                f"w{width:g} ({100 * twin.accuracy:.2f}% with one view; over with {', '.join(p.tta for p in with_tta)})"
            )
    timed = [p for p in over if p.latency_ms is not None]
    fastest = min(timed, key=lambda p: p.latency_ms) if timed else None
    head = f"Over the bar only with TTA: {'; '.join(lifted)}." if lifted else "TTA lifts no width over the bar."
    if fastest is None:
        return head
    if fastest.uses_tta:
        twin = next((q for q in points if q.width == fastest.width and not q.uses_tta), None)
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


def scope(m: dict[str, Any]) -> str:
    """What a significant accuracy margin covers: the image interval speaks for these trained weights ("for these
    runs"); the recipe ("across seeds") only when every seed's own margin has the same sign. Empty when the
    interval holds zero (nothing to scope)."""
    if not m.get("significant"):
        return ""
    spread = m.get("seed_spread") or {}
    per_seed = spread.get("per_seed") or {}
    if len(per_seed) < 2:
        return " (for these runs: one seed, so nothing is shown across seeds)"
    each = ", ".join(f"seed {s} {100 * v:+.2f}" for s, v in per_seed.items())
    if spread.get("seeds_agree_in_sign"):
        return f" (for these runs, and across seeds: every seed agrees, {each} points)"
    return f" (for these runs only: the seeds disagree, {each} points)"


def pareto_front(points: list[Point], cost: str) -> list[Point]:
    """Points no other point beats on both accuracy (higher) and ``cost`` (lower), sorted by cost."""
    key = (lambda p: p.gflops_per_image) if cost == "gflops" else (lambda p: p.latency_ms)
    usable = sorted((p for p in points if key(p) is not None), key=lambda p: (key(p), -p.accuracy))
    front, best = [], -1.0
    for p in usable:
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front

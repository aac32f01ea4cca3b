"""Benchmark TTA rules as data; verdicts as pure functions of (accuracy, FLOPs per image, latency, views).

Built-in rules:
- ``no-tta``: strict ban; one view per image.
- ``dawnbench``: TTA allowed; inference is scored by batch-1 latency per image (DAWNBench's metric), no cap.
- ``total-flops``: the Myrtle.ai proposal: total inference FLOPs per image (model FLOPs x views) at most a
  budget; default one ResNet-18 pass on a 32x32 image, computed by costs.reference.
- ``latency``: batch-1 p50 latency per image at most a budget in ms (needs --budget-ms).
"""

from __future__ import annotations

from dataclasses import dataclass

from dawnpipe.common.errors import DawnpipeError

RULE_NAMES = ("no-tta", "dawnbench", "total-flops", "latency")


@dataclass(frozen=True)
class Rule:
    """A rule: what it limits and its budget (GFLOPs per image or ms per image; None where it has none)."""

    name: str
    limits: str  # "views" | "none" | "gflops" | "latency_ms"
    budget: float | None
    description: str


@dataclass(frozen=True)
class Point:
    """One measured configuration (a TTA mode on a backend at a precision)."""

    label: str
    accuracy: float
    gflops_per_image: float
    views_per_image: float
    latency_ms: float | None  # batch-1 p50 per image; None if not measured


@dataclass(frozen=True)
class Verdict:
    """Pass or fail, and why, in numbers."""

    rule: str
    label: str
    passed: bool
    reason: str


def make_rules(
    names: list[str] | tuple[str, ...],
    *,
    budget_gflops: float | None = None,
    budget_ms: float | None = None,
    reference_gflops: float | None = None,
) -> list[Rule]:
    """Rules by name with their budgets; unknown names and non-positive budgets are one-line errors."""
    for label, value in (("--budget-gflops", budget_gflops), ("--budget-ms", budget_ms)):
        if value is not None and not value > 0:
            raise DawnpipeError(f"{label} {value} is not a positive budget", f"pass {label} greater than 0")
    rules = []
    for name in names:
        if name not in RULE_NAMES:
            raise DawnpipeError(f"unknown rule {name!r}", f"use one of {', '.join(RULE_NAMES)}")
        if name == "no-tta":
            rules.append(Rule(name, "views", 1.0, "TTA banned: exactly one view per image"))
        elif name == "dawnbench":
            rules.append(Rule(name, "none", None, "TTA allowed; ranked by batch-1 latency per image"))
        elif name == "total-flops":
            budget = budget_gflops if budget_gflops is not None else reference_gflops
            if budget is None:
                from dawnpipe.costs.reference import resnet18_flops

                budget = resnet18_flops() / 1e9
            source = "user budget" if budget_gflops is not None else "one ResNet-18 pass on 32x32"
            rules.append(
                Rule(name, "gflops", budget, f"total inference FLOPs per image <= {budget:.4g} GFLOP ({source})")
            )
        elif name == "latency":
            if budget_ms is None:
                raise DawnpipeError("the latency rule needs a budget", "pass --budget-ms MS")
            rules.append(Rule(name, "latency_ms", budget_ms, f"batch-1 p50 latency per image <= {budget_ms:g} ms"))
    return rules


def verdict(rule: Rule, point: Point) -> Verdict:
    """Judge one point under one rule (pure: no I/O, no measurement)."""
    if rule.limits == "views":
        ok = point.views_per_image <= 1.0
        return Verdict(
            rule.name,
            point.label,
            ok,
            f"{point.views_per_image:g} view(s) per image ({'no TTA' if ok else 'TTA is banned'})",
        )
    if rule.limits == "none":
        if point.latency_ms is None:
            return Verdict(rule.name, point.label, True, "allowed; latency not measured, so no score")
        return Verdict(
            rule.name, point.label, True, f"allowed; scored by batch-1 latency {point.latency_ms:.3f} ms/image"
        )
    if rule.limits == "gflops":
        ok = point.gflops_per_image <= rule.budget  # type: ignore[operator]
        return Verdict(
            rule.name,
            point.label,
            ok,
            f"{point.gflops_per_image:.4f} GFLOP/image {'<=' if ok else '>'} budget {rule.budget:.4f}",
        )
    if point.latency_ms is None:
        return Verdict(rule.name, point.label, False, "latency not measured, so it cannot be shown within budget")
    ok = point.latency_ms <= rule.budget  # type: ignore[operator]
    return Verdict(
        rule.name, point.label, ok, f"{point.latency_ms:.3f} ms/image {'<=' if ok else '>'} budget {rule.budget:g} ms"
    )


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

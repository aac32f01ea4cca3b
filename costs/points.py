"""A measured configuration (width x TTA mode x backend x precision, pooled over its seeds) and the margin
between two, with its 95% interval: accuracy paired image by image (each test image once, seeds matched by value),
latency paired round by round (each timing round once, however many seeds it timed). Rules (costs.rules), the
report's tables and the recheck all compare configurations here, so a margin is computed one way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dawnpipe.costs.stats import paired_difference, round_difference, seed_spread


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
    def model(self) -> str:
        """The network this point runs: ``w<width>`` for a family member, the entrant's name for an import (the label's
        first word; the same network on every backend, precision and TTA mode)."""
        return self.label.split(" ", 1)[0]

    @property
    def uses_tta(self) -> bool:
        """More than one view per image on average."""
        return self.views_per_image > 1.0 + 1e-9


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


def reference_rows(points: list[Point]) -> list[Point]:
    """``points`` on the backend and precision where they have the most configurations (fp32 first, then by name):
    where a network, or the family, is judged when a comparison crosses backends (costs.entrants, costs.entry_rules)."""
    counts: dict[tuple[str, str], int] = {}
    for p in points:
        counts[(p.backend, p.precision)] = counts.get((p.backend, p.precision), 0) + 1
    if not counts:
        return []
    chosen = min(counts, key=lambda b: (-counts[b], b[1] != "fp32", b))
    return [p for p in points if (p.backend, p.precision) == chosen]


def reference_rows_by_model(points: list[Point]) -> dict[str, list[Point]]:
    """Each network's reference rows (reference_rows), by network name in order: how entrants are placed beside the
    family wherever a comparison crosses backends (the rules over every entry, the FLOPs plot)."""
    return {m: reference_rows([p for p in points if p.model == m]) for m in sorted({p.model for p in points})}


def timed_with(anchors: list[Point], others: list[Point]) -> list[Point]:
    """The ``others`` whose latency compares with the ``anchors``': timed, on an anchor's backend and precision, in a
    timing session an anchor was timed in (latency is the machine's: only rows timed together compare). One rule
    for the entrants' latency rival, the latency rules over every entry and the latency plot."""
    places = {(p.backend, p.precision) for p in anchors}
    sessions = {s for p in anchors for s in p.latency_sessions if s}
    return [
        q for q in others
        if q.latency_ms is not None and (q.backend, q.precision) in places and sessions & set(q.latency_sessions)
    ]  # fmt: skip


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

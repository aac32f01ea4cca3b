"""A report anyone can recheck: report.json read back, its bits held to its counts, every margin recomputed.

report.json carries each point's per-image correctness per seed (packed bits, in the order its ``test_images``
names) and each seed's timing rounds, so the accuracy and latency margins of the decisions, of "extra views or a
bigger network" (on FLOPs and on latency) and of the precision comparison can be recomputed without the run
folders. A file whose bits disagree with its own counts is refused when read back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.costs.points import Point, compare

TOLERANCE = 0.0005  # a recomputed accuracy margin must agree to within 0.05 points (latency: 0.0005 ms; p: 0.0005)


@dataclass
class Recheck:
    """What recomputing a report's margins found."""

    margins: int = 0
    largest_accuracy_gap: float = 0.0  # fraction (0.0001 = 0.01 points)
    largest_latency_gap: float = 0.0  # ms per image
    decisions: int = 0  # decisions whose winner and runner-up were decided again
    disagreements: list[str] = field(default_factory=list)


def read_report(path: str | Path) -> dict[str, Any]:
    """report.json, checked: its format, and every point's per-image bits against its own correct counts."""
    from dawnpipe.costs.report import REPORT_FORMAT

    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DawnpipeError(f"{path} is not readable JSON ({type(err).__name__})", "pass a report.json") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        found = report.get("format") if isinstance(report, dict) else None
        raise DawnpipeError(
            f"{path} is not a {REPORT_FORMAT} report (format {found!r}); older reports carry no per-image bits",
            "rebuild it with `dawnpipe costs` from its run folders",
        )
    count = (report.get("test_images") or {}).get("count")
    if not isinstance(count, int) or count < 1 or not isinstance(report.get("points"), list):
        raise DawnpipeError(f"{path} names no test images or holds no points", "rebuild it with `dawnpipe costs`")
    for point in report["points"]:
        _check_point(path, point, count)
    return report


def _check_point(path: Path, point: dict[str, Any], count: int) -> None:
    from dawnpipe.infer.scoring import unpack_bits

    label = point.get("label", "?")
    seeds, bits, counts = point.get("seeds"), point.get("correct_bits_by_seed"), point.get("correct_by_seed")
    if not (isinstance(seeds, list) and isinstance(bits, list) and isinstance(counts, list)):
        raise DawnpipeError(f"{path}: point {label} has no per-image bits per seed", "rebuild it with `dawnpipe costs`")
    if not len(seeds) == len(bits) == len(counts):
        raise DawnpipeError(f"{path}: point {label} has {len(seeds)} seeds but {len(bits)} bit sets", "rebuild it")
    for seed, text, said in zip(seeds, bits, counts, strict=True):
        held = int(unpack_bits(text, count).sum())
        if held != said:
            raise DawnpipeError(
                f"{path}: point {label} seed {seed}: its bits hold {held} correct images, its count says {said}",
                "the file was altered or damaged; rebuild it with `dawnpipe costs` from its run folders",
            )
    mean = float(np.mean([c / count for c in counts]))
    if not isinstance(point.get("accuracy"), int | float) or abs(mean - point["accuracy"]) > 1e-9:
        raise DawnpipeError(
            f"{path}: point {label} says accuracy {point.get('accuracy')!r} but its bits give {mean:.6f}",
            "the file was altered or damaged; rebuild it with `dawnpipe costs` from its run folders",
        )


def points_of(report: dict[str, Any], key: str = "points") -> dict[str, Point]:
    """The report's points rebuilt (figures, per-seed bits and timing rounds), by label; ``key``: the family's
    points, or ``entrant_points``."""
    from dawnpipe.infer.scoring import unpack_bits

    names = {f.name for f in fields(Point)} - {"correct", "latency_rounds_ms", "latency_sessions"}
    count = report["test_images"]["count"]
    out = {}
    for record in report.get(key) or []:
        values = {k: v for k, v in record.items() if k in names}
        values["seeds"], values["ci95"] = tuple(values["seeds"]), tuple(values["ci95"])
        out[record["label"]] = Point(
            **values,
            correct=tuple(unpack_bits(text, count) for text in record["correct_bits_by_seed"]),
            latency_rounds_ms=tuple(tuple(r) for r in record.get("latency_rounds_ms") or ()),
            latency_sessions=tuple(record.get("latency_sessions") or ()),
        )
    return out


def recheck_command(path: str | Path, say: Callable[[str], None] = print) -> str:
    """``dawnpipe recheck``: the line that says what recomputing found; when anything disagrees, every disagreement
    is said (one line each) and a one-line refusal is raised, so the command exits non-zero."""
    found = recheck(path)
    if found.disagreements:
        for line in found.disagreements:
            say(f"disagrees: {line}")
        raise DawnpipeError(
            f"{len(found.disagreements)} of the report's margins, flags, winners or counts disagree with the file's "
            "own data (each named above)",
            "rebuild the report with `dawnpipe costs` from its run folders",
        )
    return (
        f"{found.margins} margins recomputed from {path} (with their significance, p-values and the "
        f"{found.decisions} decisions' winners): largest gap {100 * found.largest_accuracy_gap:.4f} points "
        f"(accuracy), {found.largest_latency_gap:.4f} ms (latency)"
    )


def recheck(path: str | Path) -> Recheck:
    """Recompute from report.json's bits and rounds every margin it states (difference, interval, significance,
    p-value), every decision's winner and runner-up, and the views-against-network counts, and compare. A margin
    whose points the file does not hold is a disagreement, not a skip."""
    report = read_report(path)
    points = points_of(report)
    found = Recheck()
    margins: list[tuple[str, str, str, dict[str, Any]]] = []
    for key in ("views_vs_width", "views_vs_width_latency"):
        margins += [(r["tta"], r["network"], "accuracy", r["margin"]) for r in report.get(key) or []]
    margins += [(r["configuration"], r["fp32"], "accuracy", r["accuracy_margin"]) for r in report["precision_vs_fp32"]]
    for d in report.get("decisions") or []:
        if d.get("winner") and d.get("runner_up") and d.get("margin"):
            by = "latency" if d["ranks_by"] == "latency" else "accuracy"
            margins.append((d["winner"], d["runner_up"], by, d["margin"]))
    for a, b, by, stated in margins:
        _recheck_margin(found, points, a, b, by, stated)
    # entrants' margins pair their points with each other and with the family's; the family's decisions never see
    # them, the decisions over every entry do
    everything = {**points, **points_of(report, "entrant_points")}
    for r in report.get("entrant_margins") or []:
        pairs = ((r["plain"], r["views_margin"]), (r["network"], r["network_margin"]))
        for other, margin in (*pairs, (r.get("latency_network"), r.get("latency_margin"))):
            if other is not None:
                _recheck_margin(found, everything, r["configuration"], other, "accuracy", margin)
    for d in report.get("entry_decisions") or []:
        if d.get("winner") and d.get("runner_up") and d.get("margin"):
            by = "latency" if d["ranks_by"] == "latency" else "accuracy"
            _recheck_margin(found, everything, d["winner"], d["runner_up"], by, d["margin"])
    _recheck_decisions(found, report, points)
    _recheck_entry_decisions(found, report, everything)
    _recheck_counts(found, report, points)
    return found


def _recheck_margin(found: Recheck, points: dict[str, Point], a: str, b: str, by: str, stated: dict) -> None:
    """One stated margin against its recomputation: every number within TOLERANCE, the same significance."""
    name = f"{a} vs {b} ({by})"
    missing = [label for label in (a, b) if label not in points]
    if missing:
        found.disagreements.append(f"{name}: the report holds no point {', '.join(missing)}")
        return
    again = compare(points[a], points[b], by)
    found.margins += 1
    problems = []
    for key in ("difference", "low", "high", "p_value"):
        if key not in stated and key not in again:
            continue
        x, y = stated.get(key), again.get(key)
        if x is None or y is None:
            if x is not y:
                problems.append(f"{key} stated {x}, recomputed {y}")
            continue
        gap = abs(float(x) - float(y))
        if key != "p_value":
            if by == "latency":
                found.largest_latency_gap = max(found.largest_latency_gap, gap)
            else:
                found.largest_accuracy_gap = max(found.largest_accuracy_gap, gap)
        if gap > TOLERANCE:
            problems.append(f"{key} stated {float(x):+.5f}, recomputed {float(y):+.5f}")
    if bool(stated.get("significant")) != bool(again.get("significant")):
        problems.append(f"significant stated {stated.get('significant')}, recomputed {again.get('significant')}")
    if problems:
        found.disagreements.append(f"{name}: {'; '.join(problems)}")


def _recheck_decisions(found: Recheck, report: dict[str, Any], points: dict[str, Point]) -> None:
    """Each decision's winner and runner-up, decided again among the points of its backend."""
    from dawnpipe.costs.rules import Rule, decide

    rules = {r["name"]: Rule(**r) for r in report.get("rules") or []}
    for d in report.get("decisions") or []:
        rule = rules.get(d.get("rule"))
        if rule is None:
            found.disagreements.append(f"decision {d.get('rule')} ({d.get('backend')}): the report holds no such rule")
            continue
        backend = [p for p in points.values() if f"{p.backend} {p.precision}" == d.get("backend")]
        again = decide(rule, backend)
        found.decisions += 1
        for role, ours in (("winner", again.winner), ("runner_up", again.runner_up)):
            label = ours.label if ours else None
            if label != d.get(role):
                found.disagreements.append(
                    f"decision {rule.name} ({d.get('backend')}): {role} stated {d.get(role)}, recomputed {label}"
                )


def _recheck_entry_decisions(found: Recheck, report: dict[str, Any], points: dict[str, Point]) -> None:
    """Each decision over every entry (costs.entry_rules): its winner and runner-up, decided again among the rows it
    names as ranked; a named row the file does not hold is a disagreement."""
    from dawnpipe.costs.rules import Rule, decide

    rules = {r["name"]: Rule(**r) for r in report.get("rules") or []}
    for d in report.get("entry_decisions") or []:
        rule, entries = rules.get(d.get("rule")), d.get("entries") or []
        where = f"decision over every entry {d.get('rule')} ({d.get('scope')})"
        missing = [label for label in entries if label not in points]
        if rule is None or missing:
            found.disagreements.append(f"{where}: the report holds no {'rule' if rule is None else missing[0]}")
            continue
        again = decide(rule, [points[label] for label in entries])
        found.decisions += 1
        for role, ours in (("winner", again.winner), ("runner_up", again.runner_up)):
            label = ours.label if ours else None
            if label != d.get(role):
                found.disagreements.append(f"{where}: {role} stated {d.get(role)}, recomputed {label}")


def _recheck_counts(found: Recheck, report: dict[str, Any], points: dict[str, Point]) -> None:
    """The views-against-network counts (distinct comparisons, ahead and behind, raw and after Holm)."""
    from dawnpipe.costs.multiplicity import pairing_summary

    for table in ("views_vs_width", "views_vs_width_latency"):
        stated = report.get(f"{table}_summary")
        if stated is None:
            continue
        again = pairing_summary(report.get(table) or [], list(points.values()))
        for key in ("distinct_comparisons", "ahead", "behind", "ahead_after_holm", "behind_after_holm"):
            if stated.get(key) != again[key]:
                found.disagreements.append(f"{table} counts: {key} stated {stated.get(key)}, recomputed {again[key]}")

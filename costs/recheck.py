"""A report anyone can recheck: report.json read back, its bits held to its counts, every margin recomputed.

report.json carries each point's per-image correctness per seed (packed bits, in the order its ``test_images``
names) and each seed's timing rounds, so the accuracy and latency margins of the decisions, of "extra views or a
bigger network" (on FLOPs and on latency) and of the precision comparison can be recomputed without the run
folders. A file whose bits disagree with its own counts is refused when read back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.costs.rules import Point, compare

TOLERANCE = 0.0005  # a recomputed accuracy margin must agree to within 0.05 points (latency: 0.0005 ms)


@dataclass
class Recheck:
    """What recomputing a report's margins found."""

    margins: int = 0
    largest_accuracy_gap: float = 0.0  # fraction (0.0001 = 0.01 points)
    largest_latency_gap: float = 0.0  # ms per image
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


def points_of(report: dict[str, Any]) -> dict[str, Point]:
    """The report's points rebuilt (figures, per-seed bits and timing rounds), by label."""
    from dawnpipe.infer.scoring import unpack_bits

    names = {f.name for f in fields(Point)} - {"correct", "latency_rounds_ms", "latency_sessions"}
    count = report["test_images"]["count"]
    out = {}
    for record in report["points"]:
        values = {k: v for k, v in record.items() if k in names}
        values["seeds"], values["ci95"] = tuple(values["seeds"]), tuple(values["ci95"])
        out[record["label"]] = Point(
            **values,
            correct=tuple(unpack_bits(text, count) for text in record["correct_bits_by_seed"]),
            latency_rounds_ms=tuple(tuple(r) for r in record.get("latency_rounds_ms") or ()),
            latency_sessions=tuple(record.get("latency_sessions") or ()),
        )
    return out


def recheck_command(path: str | Path) -> str:
    """``dawnpipe recheck``: the line that says what recomputing found, or the one-line refusal when any margin
    disagrees with the file's own data by more than TOLERANCE."""
    found = recheck(path)
    if found.disagreements:
        raise DawnpipeError(
            f"{len(found.disagreements)} margin(s) disagree by more than {TOLERANCE} with the file's own data, first "
            f"{found.disagreements[0]}",
            "rebuild the report with `dawnpipe costs` from its run folders",
        )
    return (
        f"{found.margins} margins recomputed from {path}: largest gap {100 * found.largest_accuracy_gap:.4f} points "
        f"(accuracy), {found.largest_latency_gap:.4f} ms (latency)"
    )


def recheck(path: str | Path) -> Recheck:
    """Recompute every margin report.json states from its bits and rounds, and compare."""
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
        if stated.get("low") is None or a not in points or b not in points:
            continue
        again = compare(points[a], points[b], by)
        gap = max(abs(again[k] - stated[k]) for k in ("difference", "low", "high"))
        found.margins += 1
        if by == "latency":
            found.largest_latency_gap = max(found.largest_latency_gap, gap)
        else:
            found.largest_accuracy_gap = max(found.largest_accuracy_gap, gap)
        if gap > TOLERANCE:
            found.disagreements.append(f"{a} vs {b} ({by}): stated {stated['difference']:+.5f}, recomputed "
                                       f"{again['difference']:+.5f}")  # fmt: skip
    return found

"""How many distinct comparisons a views-against-network table makes, and how many stay significant after Holm.

A table pairs every TTA configuration with a network per backend, but two backends that compute identical per-image
results (torch and torch-graphs on the GPU family: identical bits for 22 of 35 configurations) repeat the same
comparison: counting both would double the evidence. Here a comparison is identified by the per-image bits of both
sides (per seed), so rows that repeat one bit for bit count once and are named. Over the m distinct comparisons the
raw count of significant margins is reported beside the count that survives Holm's step-down adjustment (Holm
1979) at the family-wise 5% level, since m comparisons at 5% each would find about m/20 by chance.
"""

from __future__ import annotations

import hashlib
from typing import Any

from dawnpipe.costs.points import Point

ALPHA = 0.05


def pairing_summary(rows: list[dict[str, Any]], points: list[Point]) -> dict[str, Any]:
    """Counts over a views_vs_width table's real pairings (the network costs at least as much, and the margin has
    an interval): rows, distinct comparisons, the repeats left out, and ahead/behind raw and after Holm."""
    by_label = {p.label: p for p in points}
    real = [r for r in rows if r["network_costs_at_least_as_much"] and r["margin"].get("low") is not None]
    distinct: dict[str, dict[str, Any]] = {}
    repeats: list[dict[str, str]] = []
    for row in real:
        key = _identity(by_label.get(row["tta"]), by_label.get(row["network"])) or f"{row['tta']}|{row['network']}"
        if key in distinct:
            repeats.append({"row": f"{row['tta']} vs {row['network']}", "repeats": distinct[key]["label"]})
            continue
        distinct[key] = {"label": f"{row['tta']} vs {row['network']}", "margin": row["margin"]}
    margins = [d["margin"] for d in distinct.values()]
    survive = holm([m.get("p_value", 1.0) for m in margins])
    return {
        "rows": len(rows),
        "real_rows": len(real),
        "cheaper_only_rows": len(rows) - len(real),
        "distinct_comparisons": len(margins),
        "repeated_rows": repeats,
        "ahead": sum(m["low"] > 0 for m in margins),
        "behind": sum(m["high"] < 0 for m in margins),
        "ahead_after_holm": sum(keep and m["difference"] > 0 for keep, m in zip(survive, margins, strict=True)),
        "behind_after_holm": sum(keep and m["difference"] < 0 for keep, m in zip(survive, margins, strict=True)),
        "adjustment": f"Holm step-down over the {len(margins)} distinct comparisons, family-wise {ALPHA:g}",
    }


def holm(p_values: list[float], alpha: float = ALPHA) -> list[bool]:
    """Which hypotheses Holm's step-down procedure rejects: the i-th smallest p-value (from 0) is compared with
    alpha / (m - i), stopping at the first that fails."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, index in enumerate(order):
        if p_values[index] > alpha / (len(p_values) - rank):
            break
        rejected[index] = True
    return rejected


def _identity(a: Point | None, b: Point | None) -> str | None:
    """A digest of both sides' seeds and per-image bits: equal for two rows that make the same comparison."""
    if a is None or b is None or not a.correct or not b.correct:
        return None
    digest = hashlib.sha256()
    for point in (a, b):
        digest.update(repr(point.seeds).encode())
        for bits in point.correct:
            digest.update(bits.astype("bool").tobytes())
    return digest.hexdigest()

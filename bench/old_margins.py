"""The worst case of a report written before intervals counted each test image once (format dawnpipe-report/2).

    python bench/old_margins.py docs/results/cpu-10-epoch/report.json   # -> bench/results/old_margins.json

Those reports pooled two seeds as 2n independent image pairs. Counting each image once (its correctness averaged
over the seeds) gives a standard error sqrt(1 + rho) times the pooled one, where rho is the correlation of the two
seeds' per-image differences: at most sqrt(2) (seeds that agree on every image), 1 when they are independent. The
per-image bits those reports were computed from were not kept, so rho cannot be measured; this script widens every
paired margin of such a report by the worst case, sqrt(2) on each side of its estimate, and says which findings
that excluded zero still do. A finding that survives the worst case survives the exact recomputation too; one that
does not is undecided until its runs are scored again.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result  # noqa: E402

WORST = math.sqrt(2.0)


def widen(margin: dict) -> dict | None:
    """The margin with each side of its interval stretched by sqrt(2) about its estimate (None if unpaired)."""
    if margin.get("low") is None or not str(margin.get("statistic", "")).startswith("accuracy"):
        return None
    d = margin["difference"]
    low, high = d - WORST * (d - margin["low"]), d + WORST * (margin["high"] - d)
    return {"difference": d, "low": low, "high": high, "significant": low > 0 or high < 0,
            "was_significant": bool(margin.get("significant")), "seeds": margin.get("seeds")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    found = []
    for key in ("views_vs_width", "views_vs_width_latency"):
        for row in report.get(key) or []:
            worst = widen(row["margin"])
            if worst and len(worst["seeds"] or []) > 1:
                pairing = {"table": key, "tta": row["tta"], "network": row["network"]}
                found.append(
                    {**pairing, "network_costs_at_least_as_much": row["network_costs_at_least_as_much"], **worst}
                )
    for row in report.get("precision_vs_fp32") or []:
        worst = widen(row["accuracy_margin"])
        if worst and len(worst["seeds"] or []) > 1:
            found.append({"table": "precision_vs_fp32", "tta": row["configuration"], "network": row["fp32"], **worst})
    for d in report.get("decisions") or []:
        worst = widen(d.get("margin") or {})
        if worst and len(worst["seeds"] or []) > 1:
            found.append({"table": f"decision {d['rule']}", "tta": d["winner"], "network": d["runner_up"], **worst})
    claimed = [f for f in found if f["was_significant"]]
    write_result(
        "old_margins",
        {
            "report": str(args.report),
            "format": report.get("format"),
            "rule": "each side of every two-seed paired accuracy interval stretched by sqrt(2) about its estimate: "
            "the worst case of counting each test image once (seeds that agree on every image)",
            "significant_before": len(claimed),
            "significant_in_the_worst_case": sum(f["significant"] for f in claimed),
            "lost_in_the_worst_case": [
                f"{f['table']}: {f['tta']} vs {f['network']}" for f in claimed if not f["significant"]
            ],  # fmt: skip
            "margins": found,
        },
    )


if __name__ == "__main__":
    main()

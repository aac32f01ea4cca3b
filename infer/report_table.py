"""The plain-text table eval prints (one row per backend and TTA mode)."""

from __future__ import annotations

from typing import Any


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table: accuracy with 95% interval, views, GFLOPs, batch-1 latency, throughput."""
    header = (
        f"{'backend':<16} {'precision':<9} {'tta':<24} {'acc %':>7} {'95% CI':>15} {'views':>6} "
        f"{'GFLOP/img':>9} {'p50 ms':>7} {'p99 ms':>7} {'img/s':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lat = r.get("latency", {})
        b1, bulk = lat.get("batch1", {}), lat.get("throughput", {})
        backend = r["backend"] + ("/" + r["provider"].replace("ExecutionProvider", "") if r.get("provider") else "")
        lines.append(
            f"{backend:<16} {r['precision']:<9} {r['tta']:<24} {100 * r['accuracy']:>7.2f} "
            f"{100 * r['ci95'][0]:>6.2f}-{100 * r['ci95'][1]:<6.2f}  {r['views_per_image']:>6.2f} "
            f"{r['gflops_per_image']:>9.3f} {b1.get('p50_ms', float('nan')):>7.2f} "
            f"{b1.get('p99_ms', float('nan')):>7.2f} {bulk.get('images_per_s', float('nan')):>8.1f}"
        )
    return "\n".join(lines)

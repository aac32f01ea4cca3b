"""The plain-text table eval prints (one row per backend and TTA mode; several artifacts, each under its name)."""

from __future__ import annotations

from typing import Any


def _num(value: float | None, width: int, digits: int) -> str:
    """A right-aligned figure, or "-" where it was not measured (``--no-latency``), never "nan"."""
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table: accuracy with 95% interval, views, GFLOPs, batch-1 latency (mean, p50, p99 per image;
    ``!`` marks a row whose per-round medians spread too widely to trust), throughput, and for selective rows the
    fraction selected on the test images beside the one its threshold selects on its hold-out."""
    header = (
        f"{'backend':<16} {'prec':<5} {'tta':<25} {'acc %':>6} {'95% CI':>13} {'views':>5} {'GFLOP':>6} "
        f"{'mean ms':>8} {'p50 ms':>7} {'p99 ms':>7} {'img/s':>7} {'sel %':>6} {'hold-out':>8}"
    )
    lines = [header, "-" * len(header)]
    flagged = False
    several = len({r.get("artifact") for r in rows}) > 1
    for i, r in enumerate(rows):
        if several and (i == 0 or r.get("artifact") != rows[i - 1].get("artifact")):
            lines.append(f"{r.get('artifact')}:")  # several artifacts: each one's rows under its name
        lat = r.get("latency") or {}
        b1, bulk = lat.get("batch1") or {}, lat.get("throughput") or {}
        mark = "!" if b1.get("flagged") or bulk.get("flagged") else " "
        flagged |= mark == "!"
        backend = r["backend"] + ("/" + r["provider"].replace("ExecutionProvider", "") if r.get("provider") else "")
        sel = (r.get("selective") or {}).get("selected_fraction")
        held = (r.get("selective") or {}).get("holdout_fraction")
        lines.append(
            f"{backend:<16} {r['precision']:<5} {r['tta']:<25} {100 * r['accuracy']:>6.2f} "
            f"{100 * r['ci95'][0]:>6.2f}-{100 * r['ci95'][1]:<6.2f} {r['views_per_image']:>5.2f} "
            f"{r['gflops_per_image']:>6.3f} {_num(b1.get('mean_ms'), 7, 2)}{mark} {_num(b1.get('p50_ms'), 7, 2)} "
            f"{_num(b1.get('p99_ms'), 7, 2)} {_num(bulk.get('images_per_s'), 7, 1)} "
            f"{'' if sel is None else f'{100 * sel:.1f}':>6} {'' if held is None else f'{100 * held:.1f}':>8}"
        )
    if rows and (rows[0].get("latency") or {}).get("threads"):
        lat = rows[0]["latency"]
        lines.append(
            f"latency: batch 1, {lat['threads']} thread(s), {lat['protocol']['rounds']} interleaved rounds, "
            f"distinct images per call; throughput at batch {lat['throughput']['batch']}"
        )
    if any((r.get("selective") or {}).get("holdout_fraction") is not None for r in rows):
        lines.append("sel % = test images given extra views; hold-out = what the artifact's threshold selects on the "
                     "hold-out it was fitted on (its target)")  # fmt: skip
    if flagged:
        lines.append(
            "! = the row's per-round medians spread too widely to trust, even with each round's common drift divided "
            "out; rerun it on a quiet machine"
        )
    return "\n".join(lines)

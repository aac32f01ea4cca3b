"""report.md and report.csv: the decision table first, then the question a reader brings, then every point.

Rendering only: costs.report computes every number; this module lays them out.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from dawnpipe.costs.family import Run
from dawnpipe.costs.points import Point
from dawnpipe.costs.rules import Decision, Rule, verdict


def render_markdown(
    runs: list[Run],
    points: list[Point],
    rules: list[Rule],
    decisions: list[Decision],
    scaling: list[dict[str, Any]],
    fronts: dict[str, list[str]],
    reference: float,
    unknown: list[str],
    threshold_note: str | None = None,
    scaling_summary: dict[str, Any] | None = None,
) -> str:
    cfg = runs[0].config
    widths = sorted({r.width for r in runs})
    seeds = sorted({r.seed for r in runs})
    images = runs[0].rows[0]["images"]
    backends = sorted({f"{p.backend} {p.precision}" for p in points})
    lines = [
        "# TTA cost report",
        "",
        f"Family: widths {', '.join(f'{w:g}' for w in widths)} x seeds {', '.join(map(str, seeds))}; one recipe "
        f"({cfg.get('epochs')} epochs, batch {cfg.get('batch_size')}); data {cfg.get('data')}; {images} test images; "
        f"backends {', '.join(backends)}.",
        "",
        "## Decisions",
        "",
        "| rule | backend | ranks by | winner | runner-up | margin (95% CI) | does TTA earn its cost? |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_decision_row(d) for d in decisions]
    lines += [
        "",
        "Accuracy margins are paired on the same test images, seed k with seed k, and count each test image once: "
        "a side's correctness on an image is its mean over seeds, the margin is the mean over images of the "
        "difference, and its 95% interval comes from the images (Tango's score interval for paired proportions "
        "where every per-image difference is -1, 0 or 1, as with one seed; a t interval over the images "
        "otherwise). Seeds add spread, not sample size: an image interval speaks for these trained weights, so a "
        'verdict holds "for these runs" when it excludes zero and "across seeds" only when every seed\'s own '
        "margin has its sign too (report.json: `seed_spread`). Latency margins count each timing round once (a "
        "configuration's seeds averaged within each round first; paired over rounds timed together, else Welch over "
        "the two sides' rounds; no interval from fewer than 3 rounds), so drift between rounds widens them. `*` "
        "marks an interval that excludes zero; a margin without `*` is noise at this sample size. `[seed k]` marks "
        "a margin over only the seeds both sides have (a family not yet complete). Every point's per-image bits "
        "are in report.json: `dawnpipe recheck report.json` recomputes every margin, flag and winner from them.",
        "",
        "## Extra views or a bigger network, at equal cost?",
        "",
        "Each TTA configuration against the cheapest single-view network of the family that costs at least as "
        "many FLOPs per image (same backend; paired). Where no network of the family costs as much, the row pairs "
        "the most expensive one and says so; such rows are left out of the counts.",
        "",
        *_scaling_table(scaling, "GFLOP/img", "{:.3f}", "cheaper: no bigger network in the family", scaling_summary),
    ]
    lines += ["", "## Rules", ""]
    lines += [f"- **{r.name}**: {r.description}" for r in rules]
    if threshold_note and any(r.name == "dawnbench" for r in rules):
        lines.append(f"- Why the dawnbench bar is where it is: {threshold_note}")
    lines += [
        "",
        f"Reference: one ResNet-18 pass on a 32x32 image = {reference:.4f} GFLOP (conv + linear, computed from "
        "costs/reference.py).",
        "",
        "## Points",
        "",
        "Accuracy: mean over seeds; its 95% interval counts each test image once (the Wilson interval for one "
        "seed); the seed-to-seed std beside it. Latency: batch 1, one distinct image per call, rows interleaved in "
        "rounds; `!` = per-round medians spread too widely to trust even after each round's common drift is "
        "divided out. Selected: the fraction of test images a selective row gave extra views, and in brackets the "
        "fraction its threshold selects on the hold-out it was fitted on (`t` = a threshold from training, not "
        "fitted through this artifact). F/L: on the Pareto frontier of FLOPs / latency.",
        "",
    ]
    lines += _points_table(points, rules, fronts)
    flagged = [p.label for p in points if p.latency_flagged]
    lines += ["", *drift_lines(points)]
    lines += [
        "",
        "## Reading this report",
        "",
        "- FLOPs and latency can disagree: the same FLOPs run at different speeds on different backends and "
        "precisions, and a selective-TTA row's mean latency includes its extra views on the images that take them.",
        "- Latency rows flagged as spread: " + (", ".join(flagged) if flagged else "none") + ".",
        "- Ops the FLOP counter does not know: " + (", ".join(unknown) if unknown else "none (every op was counted)."),
        "",
        "Plots: accuracy_vs_gflops.png, accuracy_vs_latency.png (95% error bars).",
        "",
    ]
    return "\n".join(lines)


def _decision_row(d: Decision) -> str:
    stat = "batch-1 mean latency" if d.rule.ranks_by == "latency" else "accuracy (mean over seeds)"
    answer = f"{d.tta_answer} {d.lift}".strip()
    return (
        f"| {d.rule.name} | {d.backend} | {stat} | {_short(d.winner)} | {_short(d.runner_up)} | "
        f"{interval_text(d.margin)} | {answer} |"
    )


def _points_table(points: list[Point], rules: list[Rule], fronts: dict[str, list[str]]) -> list[str]:
    """Every configuration's accuracy, cost, latency, selection and rule verdicts, one row each."""
    lines = [
        "| configuration | seeds | acc % | 95% CI | seed std | views/img | GFLOP/img | mean ms | p50 ms | p99 ms | "
        "selected (hold-out) | F/L | " + " | ".join(r.name for r in rules) + " |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|:-:|" + "|".join(":-:" for _ in rules) + "|",
    ]
    for p in points:
        flag = "!" if p.latency_flagged else ""
        lat = (
            ("-", "-", "-")
            if p.latency_ms is None
            else (f"{p.latency_ms:.2f}{flag}", f"{p.latency_p50_ms:.2f}", f"{p.latency_p99_ms:.2f}")
        )
        pareto = ("F" if p.label in fronts["gflops"] else "-") + ("L" if p.label in fronts["latency"] else "-")
        cells = ["pass" if verdict(r, p).passed else "-" for r in rules]
        lines.append(
            f"| {p.label} | {len(p.seeds)} | {_pct(p.accuracy)} | {_pct(p.ci95[0])}-{_pct(p.ci95[1])} | "
            f"{100 * p.accuracy_std:.2f} | {p.views_per_image:.2f} | {p.gflops_per_image:.3f} | {lat[0]} | {lat[1]} | "
            f"{lat[2]} | {_selected(p)} | {pareto} | " + " | ".join(cells) + " |"
        )
    return lines


def _selected(p: Point) -> str:
    if p.selected_fraction is None:
        return "-"
    text = f"{100 * p.selected_fraction:.1f}%"
    if p.selected_fraction_holdout is not None:
        text += f" ({100 * p.selected_fraction_holdout:.1f}%)"
    if p.threshold_source and "from training" in p.threshold_source:
        text += " t"
    return text


def drift_lines(points: list[Point]) -> list[str]:
    """The round-to-round drift of the timing sessions behind each backend's rows, stated once per backend."""
    by_backend: dict[str, list[float]] = {}
    for p in points:
        if p.latency_drift is not None:
            by_backend.setdefault(f"{p.backend} {p.precision}", []).append(p.latency_drift)
    if not by_backend:
        return []
    parts = [f"{name} up to {100 * max(v):.0f}%" for name, v in sorted(by_backend.items())]
    return [
        "Round-to-round drift (the range of a timing session's per-round common factor: how much the whole machine "
        "sped up or slowed down between rounds; divided out before a row is judged spread, kept inside every "
        f"latency interval): {'; '.join(parts)}."
    ]


def pairing_counts(summary: dict[str, Any] | None) -> str:
    """One line over the distinct real pairings of a views-against-network table (costs.multiplicity): how many
    comparisons, the rows that repeat one bit for bit, and the significant counts raw and after Holm."""
    if not summary or not summary["distinct_comparisons"]:
        return "No TTA configuration has a network of the family that costs at least as much."
    s = summary
    repeats = len(s["repeated_rows"])
    counted = (
        f"{s['distinct_comparisons']} distinct comparisons ({s['real_rows']} rows; {repeats} repeat another "
        "backend's comparison bit for bit and count once)"
        if repeats
        else f"{s['distinct_comparisons']} distinct comparisons"
    )
    level = s["distinct_comparisons"] - s["ahead"] - s["behind"]
    fallbacks = s["cheaper_only_rows"]
    return (
        f"Over {counted} with a network that costs at least as much: the views are significantly ahead in "
        f"{s['ahead']}, significantly behind in {s['behind']}, level within noise in {level}; after Holm's adjustment "
        f"for {s['distinct_comparisons']} comparisons, ahead in {s['ahead_after_holm']} and behind in "
        f"{s['behind_after_holm']}"
        + (f" ({fallbacks} row(s) with only a cheaper network left out)." if fallbacks else ".")
    )


def latency_scaling_section(rows: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> str:
    if not rows:
        return ""
    lines = [
        "",
        "## Extra views or a bigger network, at equal measured latency?",
        "",
        "Each TTA configuration against the fastest single-view network of the family whose batch-1 mean latency is "
        "at least as high, on the same backend (paired on the same images). Latency depends on the machine: read "
        "it with the Machine section below.",
        "",
        *_scaling_table(rows, "ms/img", "{:.2f}", "faster: no slower network in the family", summary),
    ]
    return "\n".join(lines) + "\n"


def _scaling_table(
    rows: list[dict[str, Any]], unit: str, number: str, cheaper: str, summary: dict[str, Any] | None
) -> list[str]:
    """Extra views against the network that costs at least as much (FLOPs or latency), one row each."""
    lines = [
        f"| TTA configuration | {unit} | vs network | {unit} | TTA minus network (95% CI) |",
        "|---|---:|---|---:|---|",
    ]
    for r in rows:
        note = "" if r["network_costs_at_least_as_much"] else f" ({cheaper})"
        lines.append(
            f"| {r['tta']} | {number.format(r['tta_cost'])} | {r['network']}{note} | "
            f"{number.format(r['network_cost'])} | {interval_text(r['margin'])} |"
        )
    if not rows:
        lines.append("| (no TTA rows or no single-view rows to compare) | | | | |")
    return [*lines, "", pairing_counts(summary)]


def scaling_curve_section(points: list[Point]) -> str:
    """How a single-view network's accuracy, FLOPs and batch-1 latency grow with width, one table per backend: the
    curve every TTA configuration competes with."""
    plain = [p for p in points if p.tta == "none"]
    if len({p.width for p in plain}) < 2:
        return ""
    lines = [
        "",
        "## The scaling curve: one view, each width",
        "",
        "| backend | width | GFLOP/img | acc % (95% CI) | seeds | batch-1 mean ms | x the narrowest width's ms |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for backend in sorted({f"{p.backend} {p.precision}" for p in plain}):
        row = sorted((p for p in plain if f"{p.backend} {p.precision}" == backend), key=lambda p: p.width)
        base = row[0].latency_ms
        for p in row:
            ms = "-" if p.latency_ms is None else f"{p.latency_ms:.2f}{'!' if p.latency_flagged else ''}"
            ratio = "-" if p.latency_ms is None or not base else f"{p.latency_ms / base:.2f}"
            lines.append(
                f"| {backend} | {p.width:g} | {p.gflops_per_image:.3f} | {_pct(p.accuracy)} ({_pct(p.ci95[0])}-"
                f"{_pct(p.ci95[1])}) | {len(p.seeds)} | {ms} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def precision_section(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    lines = [
        "",
        "## Same FLOPs, another precision",
        "",
        "An int8 (or fp16/bf16) model runs exactly the convolutions of its fp32 twin, so a FLOP rule cannot tell "
        "them apart; their latency and accuracy differ. This is the clearest case of FLOPs and latency "
        "disagreeing: a rule that caps FLOPs treats them as one entry, a rule that caps latency does not.",
        "",
        "| configuration | vs | GFLOP/img (both) | accuracy minus fp32 (95% CI) | batch-1 mean ms | x fp32 latency |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        ms = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.2f} (fp32 {r['fp32_latency_ms']:.2f})"
        ratio = "-" if r["latency_ratio"] is None else f"{r['latency_ratio']:.2f}"
        lines.append(
            f"| {r['configuration']} | {r['fp32']} | {r['gflops']:.3f} | {interval_text(r['accuracy_margin'])} | "
            f"{ms} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def training_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One row per run: its training clock and wall time, precision, device and CPU (a time names its machine)."""
    lines = [
        "## Runs",
        "",
        "| run | width | seed | epochs | training s | wall s | precision | device | CPU |",
        "|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    resumed = False
    for r in rows:
        seconds = [f"{r[k]:.0f}" if isinstance(r[k], int | float) else "-" for k in ("train_seconds", "wall_seconds")]
        if r.get("processes") and r["processes"] > 1:
            seconds[1] += f" ({r['processes']} processes)"
            resumed = True
        elif r.get("processes", 1) is None and seconds[1] != "-":
            seconds[1] += " (last process only)"
        lines.append(
            f"| {r['run']} | {r['width']:g} | {r['seed']} | {r['epochs']} | {seconds[0]} | {seconds[1]} | "
            f"{r['precision'] or '-'} | {r['device'] or '-'} | {r['cpu']} |"
        )
    if resumed:
        lines += [
            "",
            "A resumed run's wall time adds each process's wall up to its interruption; work an interruption threw "
            "away is not counted. Its training clock is the sum of its epochs' clocks, an interrupted epoch's parts "
            "added. Runs trained before checkpoints carried a clock count each earlier process only up to its last "
            "finished epoch (a process stopped inside its first epoch is missing) and leave out the part of an "
            "epoch run before an interruption: their figures are lower bounds.",
        ]
    return lines + [""]


def machine_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Machine", ""]
    for m in rows:
        native = {True: "native instructions", False: "not native (emulated or widened in software)", None: "-"}
        lines.append(
            f"- {m['backend']} {m['precision']} on {m['device'] or '?'}: host CPU {m['cpu']}; "
            f"{m['precision']} arithmetic: {native.get(m['native_instructions'], '-')}"
        )
    return lines + [""]


def skipped_lines(entries: list[dict[str, str]]) -> list[str]:
    if not entries:
        return []
    return ["## Skipped backends", "", *(f"- {e['backend']}: skipped: {e['reason']}" for e in entries), ""]


def render_csv(points: list[Point], rules: list[Rule]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "label",
            "width",
            "tta",
            "backend",
            "precision",
            "seeds",
            "accuracy",
            "ci_low",
            "ci_high",
            "seed_std",
            "views_per_image",
            "gflops_per_image",
            "latency_mean_ms",
            "latency_p50_ms",
            "latency_p99_ms",
            "latency_flagged",
            *[f"rule:{r.name}" for r in rules],
        ]
    )
    for p in points:
        lat = [
            "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
            for v in (p.latency_ms, p.latency_p50_ms, p.latency_p99_ms)
        ]
        writer.writerow(
            [
                p.label,
                p.width,
                p.tta,
                p.backend,
                p.precision,
                len(p.seeds),
                f"{p.accuracy:.6f}",
                f"{p.ci95[0]:.6f}",
                f"{p.ci95[1]:.6f}",
                f"{p.accuracy_std:.6f}",
                f"{p.views_per_image:.4f}",
                f"{p.gflops_per_image:.6f}",
                *lat,
                p.latency_flagged,
                *[verdict(r, p).passed for r in rules],
            ]
        )
    return buffer.getvalue()


def _short(p: Point | None) -> str:
    """A point's label without its backend (the decision table has a backend column)."""
    return "-" if p is None else p.label.split(" @ ")[0]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def interval_text(m: dict[str, Any] | None) -> str:
    if not m or m.get("difference") is None:
        return "-"
    if m.get("low") is None:
        if m["statistic"].startswith("batch-1"):
            return f"{m['difference']:.3f} ms/img (no interval)"
        return f"{100 * m['difference']:+.2f} pts (unpaired)"
    if m["statistic"].startswith("batch-1"):
        star = " *" if m.get("significant") else ""
        return f"{m['difference']:.3f} ms/img ({m['low']:.3f} to {m['high']:.3f}){star}"
    star = " *" if m.get("significant") else ""
    text = f"{100 * m['difference']:+.2f} pts ({100 * m['low']:+.2f} to {100 * m['high']:+.2f}){star}"
    # a margin over fewer seeds than the points it compares (a family stopped part-way) names its seeds
    if m.get("partial_seeds"):
        text += f" [seed {', '.join(map(str, m['seeds']))}]"
    return text

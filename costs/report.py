"""The TTA-cost report of one run or a family: report.md, report.json, report.csv and two PNG plots.

report.md opens with the decision table (per rule: winner, runner-up, margin with its paired 95% interval, and
whether TTA earns its cost), then answers the question a reader brings, "at equal cost, do extra views beat a
bigger network?", by pairing every TTA configuration with the next-bigger single-view network of the family
(same test images, seeds matched), then lists every point with its interval, seed spread and latency flags.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import atomic_write_json, atomic_write_text, ensure_writable_dir, sha256_file
from dawnpipe.common.manifest import artifact_entry, update_manifest
from dawnpipe.costs.family import Run, load_family
from dawnpipe.costs.rules import (
    DEFAULT_RULES,
    Decision,
    Point,
    Rule,
    compare,
    decide,
    make_rules,
    pareto_front,
    verdict,
)


@dataclass(frozen=True)
class ReportConfig:
    """Which runs to judge, by which rules, and where the report goes."""

    runs: tuple[str, ...]  # run folders: one run, or a family (widths x seeds, one recipe)
    out: str | None = None  # report folder; None = the run folder for one run (required for several)
    rules: tuple[str, ...] = DEFAULT_RULES  # "latency" is added when budget_ms is set
    budget_gflops: float | None = None  # total-flops budget in GFLOPs/image; None = one ResNet-18 pass
    budget_ms: float | None = None  # latency budget, batch-1 mean ms/image
    accuracy_threshold: float = 94.0  # %, dawnbench's bar (DAWNBench used 94%; the JPEG copy tops out lower)
    plots: bool = True


def check_config(cfg: ReportConfig) -> list[Rule]:
    """Validate the options before any work; returns the rules."""
    from dawnpipe.costs.reference import resnet18_flops

    names = tuple(cfg.rules) + (("latency",) if cfg.budget_ms is not None and "latency" not in cfg.rules else ())
    return make_rules(
        names,
        budget_gflops=cfg.budget_gflops,
        budget_ms=cfg.budget_ms,
        reference_gflops=resnet18_flops() / 1e9,
        accuracy_threshold=cfg.accuracy_threshold,
    )


def build_report(cfg: ReportConfig) -> dict[str, Path]:
    """Write the report files; returns their paths by kind."""
    from dawnpipe.costs.reference import resnet18_flops

    rules = check_config(cfg)
    if len(cfg.runs) > 1 and not cfg.out:
        raise DawnpipeError("a report over several runs needs a folder of its own", "pass --out DIR")
    runs, points = load_family(list(cfg.runs))
    out_dir = ensure_writable_dir(Path(cfg.out) if cfg.out else runs[0].path)
    reference = resnet18_flops() / 1e9
    # a rule decides among models (width x TTA) run the same way: one decision per backend and precision
    backends = sorted({(p.backend, p.precision) for p in points})
    decisions = [decide(rule, [p for p in points if (p.backend, p.precision) == b]) for rule in rules for b in backends]
    scaling = views_vs_width(points)
    precisions = precision_vs_fp32(points)
    fronts = {cost: [p.label for p in pareto_front(points, cost)] for cost in ("gflops", "latency")}
    unknown = sorted({op for run in runs for row in run.rows for op in row.get("flops_unknown_ops", [])})
    data = {
        "format": "dawnpipe-report/2",
        "runs": [{"path": str(r.path), "width": r.width, "seed": r.seed} for r in runs],
        "recipe": {k: v for k, v in runs[0].config.items() if k not in ("seed", "name", "out", "resume")},
        "reference": {"resnet18_gflops_per_image": reference},
        "rules": [asdict(r) for r in rules],
        "decisions": [d.to_dict() for d in decisions],
        "views_vs_width": scaling,
        "precision_vs_fp32": precisions,
        "points": [_point_dict(p) for p in points],
        "verdicts": [asdict(verdict(r, p)) for p in points for r in rules],
        "pareto": fronts,
        "unknown_ops": unknown,
        "machines": machines(runs),
        "skipped": skipped_backends(runs),
    }
    out = {
        "json": atomic_write_json(out_dir / "report.json", data),
        "csv": atomic_write_text(out_dir / "report.csv", _csv(points, rules)),
        "md": atomic_write_text(
            out_dir / "report.md",
            _markdown(runs, points, rules, decisions, scaling, fronts, reference, unknown)
            + _precision_section(precisions)
            + "\n".join(["", *_machine_lines(data["machines"]), *_skipped_lines(data["skipped"])]),
        ),
    }
    if cfg.plots:
        from dawnpipe.costs.plots import plot_gflops, plot_latency

        out["plot_gflops"] = plot_gflops(out_dir / "accuracy_vs_gflops.png", points, rules, fronts["gflops"], reference)
        if any(p.latency_ms is not None for p in points):
            out["plot_latency"] = plot_latency(out_dir / "accuracy_vs_latency.png", points, rules)
    made_from = {str(r.path): sha256_file(r.path / "eval.json") for r in runs}
    update_manifest(
        out_dir,
        run=("costs", {"config": asdict(cfg), "rules": [asdict(r) for r in rules]}),
        artifacts={
            path.name: artifact_entry(out_dir, path, kind="report", made_from={"eval": made_from})
            for path in out.values()
        },
    )
    return out


def machines(runs: list[Run]) -> list[dict[str, Any]]:
    """Which CPU each backend and precision was measured on, and whether it ran on native instructions: a figure
    without its machine cannot be compared (rows written before dawnpipe recorded it say unknown)."""
    from dawnpipe.common.machine import cpu_summary
    from dawnpipe.costs.family import backend_label

    seen: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        for row in run.rows:
            cpu = row.get("cpu")
            summary = cpu_summary(cpu) if isinstance(cpu, dict) else "unknown (not recorded)"
            key = (backend_label(row), row["precision"], row.get("device"), summary)
            seen.setdefault(
                key,
                {
                    "backend": key[0],
                    "precision": key[1],
                    "device": key[2],
                    "cpu": summary,
                    "native_instructions": row.get("native_instructions"),
                },
            )
    return sorted(seen.values(), key=lambda m: (m["backend"], m["precision"], m["cpu"]))


def skipped_backends(runs: list[Run]) -> list[dict[str, str]]:
    """Backends the evaluations could not run (or were not asked to), each once with its reason."""
    seen: dict[str, dict[str, str]] = {}
    for run in runs:
        for entry in run.skipped:
            seen.setdefault(entry["backend"], dict(entry))
    return list(seen.values())


def _skipped_lines(entries: list[dict[str, str]]) -> list[str]:
    if not entries:
        return []
    return ["## Skipped backends", "", *(f"- {e['backend']}: skipped: {e['reason']}" for e in entries), ""]


def _machine_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Machine", ""]
    for m in rows:
        native = {True: "native instructions", False: "not native (emulated or widened in software)", None: "-"}
        lines.append(
            f"- {m['backend']} {m['precision']} on {m['device'] or '?'}: host CPU {m['cpu']}; "
            f"{m['precision']} arithmetic: {native.get(m['native_instructions'], '-')}"
        )
    return lines + [""]


def views_vs_width(points: list[Point]) -> list[dict[str, Any]]:
    """Each TTA point against the cheapest single-view network of the same backend that costs at least as much
    (or, if none does, the most expensive one), paired on the same images and seeds."""
    rows = []
    for p in points:
        if not p.uses_tta:
            continue
        plain = sorted(
            (q for q in points if not q.uses_tta and q.backend == p.backend and q.precision == p.precision),
            key=lambda q: q.gflops_per_image,
        )
        if not plain:
            continue
        bigger = [q for q in plain if q.gflops_per_image >= p.gflops_per_image * (1 - 1e-9)]
        rival = bigger[0] if bigger else plain[-1]
        m = compare(p, rival, "accuracy")
        rows.append(
            {
                "tta": p.label,
                "tta_gflops": p.gflops_per_image,
                "network": rival.label,
                "network_gflops": rival.gflops_per_image,
                "network_costs_at_least_as_much": bool(bigger),
                "margin": m,
            }
        )
    return rows


def precision_vs_fp32(points: list[Point]) -> list[dict[str, Any]]:
    """Each reduced-precision point (int8, fp16, bf16) against the fp32 point of the same width, TTA mode and
    backend: the same FLOPs, so any difference in accuracy or latency is the precision's alone."""
    rows = []
    for p in points:
        if p.precision == "fp32":
            continue
        base = next(
            (q for q in points if q.precision == "fp32" and (q.width, q.tta, q.backend) == (p.width, p.tta, p.backend)),
            None,
        )
        if base is None:
            continue
        ratio = p.latency_ms / base.latency_ms if p.latency_ms and base.latency_ms else None
        rows.append(
            {
                "configuration": p.label,
                "fp32": base.label,
                "gflops": p.gflops_per_image,
                "fp32_gflops": base.gflops_per_image,
                "accuracy_margin": compare(p, base, "accuracy"),
                "latency_ms": p.latency_ms,
                "fp32_latency_ms": base.latency_ms,
                "latency_ratio": ratio,
            }
        )
    return rows


def _precision_section(rows: list[dict[str, Any]]) -> str:
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
            f"| {r['configuration']} | {r['fp32']} | {r['gflops']:.3f} | {_interval(r['accuracy_margin'])} | {ms} | "
            f"{ratio} |"
        )
    return "\n".join(lines) + "\n"


def _point_dict(p: Point) -> dict[str, Any]:
    return {k: v for k, v in asdict(p).items() if k != "correct"}


def _short(p: Point | None) -> str:
    """A point's label without its backend (the decision table has a backend column)."""
    return "-" if p is None else p.label.split(" @ ")[0]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _interval(m: dict[str, Any] | None) -> str:
    if not m or m.get("difference") is None:
        return "-"
    if m.get("low") is None:
        return f"{100 * m['difference']:+.2f} pts (unpaired)"
    if m["statistic"].startswith("batch-1"):
        return f"{m['difference']:.3f} ms/img ({m['low']:.3f} to {m['high']:.3f})"
    star = " *" if m.get("significant") else ""
    return f"{100 * m['difference']:+.2f} pts ({100 * m['low']:+.2f} to {100 * m['high']:+.2f}){star}"


def _markdown(
    runs: list[Run],
    points: list[Point],
    rules: list[Rule],
    decisions: list[Decision],
    scaling: list[dict[str, Any]],
    fronts: dict[str, list[str]],
    reference: float,
    unknown: list[str],
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
    for d in decisions:
        stat = "batch-1 mean latency" if d.rule.ranks_by == "latency" else "accuracy (mean over seeds)"
        backend = d.backend
        lines.append(
            f"| {d.rule.name} | {backend} | {stat} | {_short(d.winner)} | {_short(d.runner_up)} | "
            f"{_interval(d.margin)} | {d.tta_answer} |"
        )
    lines += [
        "",
        "Margins are paired on the same test images with seeds matched (exact conditional interval from the "
        "discordant images; McNemar p-value in report.json); `*` marks an interval that excludes zero. A margin "
        "without `*` is noise at this sample size.",
        "",
        "## Extra views or a bigger network, at equal cost?",
        "",
        "Each TTA configuration against the cheapest single-view network of the family that costs at least as "
        "many FLOPs per image (same backend; paired):",
        "",
        "| TTA configuration | GFLOP/img | vs network | GFLOP/img | TTA minus network (95% CI) |",
        "|---|---:|---|---:|---|",
    ]
    for s in scaling:
        note = "" if s["network_costs_at_least_as_much"] else " (cheaper: no bigger network in the family)"
        lines.append(
            f"| {s['tta']} | {s['tta_gflops']:.3f} | {s['network']}{note} | {s['network_gflops']:.3f} | "
            f"{_interval(s['margin'])} |"
        )
    if not scaling:
        lines.append("| (no TTA rows or no single-view rows to compare) | | | | |")
    lines += ["", "## Rules", ""]
    lines += [f"- **{r.name}**: {r.description}" for r in rules]
    lines += [
        "",
        f"Reference: one ResNet-18 pass on a 32x32 image = {reference:.4f} GFLOP (conv + linear, computed from "
        "costs/reference.py).",
        "",
        "## Points",
        "",
        "Accuracy: mean over seeds, 95% Wilson interval of the pooled count, and the seed-to-seed std. Latency: "
        "batch 1, one distinct image per call, rows interleaved in rounds; `!` = per-round medians spread too "
        "widely to trust. F/L: on the Pareto frontier of FLOPs / latency.",
        "",
        "| configuration | seeds | acc % | 95% CI | seed std | views/img | GFLOP/img | mean ms | p50 ms | p99 ms | "
        "selected | F/L | " + " | ".join(r.name for r in rules) + " |",
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
        sel = "-" if p.selected_fraction is None else f"{100 * p.selected_fraction:.1f}%"
        cells = ["pass" if verdict(r, p).passed else "-" for r in rules]
        lines.append(
            f"| {p.label} | {len(p.seeds)} | {_pct(p.accuracy)} | {_pct(p.ci95[0])}-{_pct(p.ci95[1])} | "
            f"{100 * p.accuracy_std:.2f} | {p.views_per_image:.2f} | {p.gflops_per_image:.3f} | {lat[0]} | {lat[1]} | "
            f"{lat[2]} | {sel} | {pareto} | " + " | ".join(cells) + " |"
        )
    flagged = [p.label for p in points if p.latency_flagged]
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


def _csv(points: list[Point], rules: list[Rule]) -> str:
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

"""The TTA-cost report of a run folder: report.md, report.json, report.csv and two PNG plots.

Reads the rows ``cli.py eval`` wrote to eval.json (accuracy, views, FLOPs from the deployed graph, latency),
judges every row under every rule, marks the Pareto frontier, and draws accuracy against GFLOPs per image
and against batch-1 latency, with budget lines and the ResNet-18 reference.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import atomic_write, atomic_write_json, atomic_write_text
from dawnpipe.common.manifest import artifact_entry, update_manifest
from dawnpipe.costs.rules import Point, Rule, make_rules, pareto_front, verdict

DEFAULT_RULES = ("no-tta", "dawnbench", "total-flops")


def load_points(run_dir: Path) -> tuple[list[dict[str, Any]], list[Point]]:
    """Eval rows of a run and their points; a clear error if the run has none."""
    path = run_dir / "eval.json"
    if not path.exists():
        raise DawnpipeError(
            f"{run_dir} has no eval results (eval.json)",
            f"run `cli.py eval {run_dir}/<model>.onnx` (or `cli.py pipeline`) first",
        )
    try:
        rows = json.loads(path.read_text())["rows"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DawnpipeError(f"{path} is not a dawnpipe eval file", "rerun `cli.py eval`") from None
    points = [
        Point(
            label=_label(r),
            accuracy=r["accuracy"],
            gflops_per_image=r["gflops_per_image"],
            views_per_image=r["views_per_image"],
            latency_ms=r.get("latency", {}).get("batch1", {}).get("p50_ms"),
        )
        for r in rows
    ]
    return rows, points


def _label(row: dict[str, Any]) -> str:
    backend = row["backend"] + (f"/{row['provider'].replace('ExecutionProvider', '')}" if row.get("provider") else "")
    return f"{row['tta']} @ {backend} {row['precision']}"


def build_report(
    run_dir: str | Path,
    rule_names: tuple[str, ...] = DEFAULT_RULES,
    *,
    budget_gflops: float | None = None,
    budget_ms: float | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Write the report files into the run folder; returns their paths by kind."""
    from dawnpipe.costs.reference import resnet18_flops

    run_dir = Path(run_dir)
    names = tuple(rule_names) + (("latency",) if budget_ms is not None and "latency" not in rule_names else ())
    reference_gflops = resnet18_flops() / 1e9
    rules = make_rules(names, budget_gflops=budget_gflops, budget_ms=budget_ms, reference_gflops=reference_gflops)
    rows, points = load_points(run_dir)
    verdicts = [verdict(rule, p) for p in points for rule in rules]
    fronts = {cost: [p.label for p in pareto_front(points, cost)] for cost in ("gflops", "latency")}
    unknown = sorted({op for r in rows for op in r.get("flops_unknown_ops", [])})
    data = {
        "format": "dawnpipe-report/1",
        "reference": {"resnet18_gflops_per_image": reference_gflops},
        "rules": [asdict(r) for r in rules],
        "points": [asdict(p) for p in points],
        "verdicts": [asdict(v) for v in verdicts],
        "pareto": fronts,
        "unknown_ops": unknown,
    }
    out = {
        "json": atomic_write_json(run_dir / "report.json", data),
        "csv": atomic_write_text(run_dir / "report.csv", _csv(points, rules, verdicts, fronts)),
        "md": atomic_write_text(
            run_dir / "report.md", _markdown(points, rules, verdicts, fronts, reference_gflops, unknown)
        ),
    }
    if plots:
        out["plot_gflops"] = _plot(
            run_dir / "accuracy_vs_gflops.png", points, rules, fronts["gflops"], "gflops", reference_gflops
        )
        if any(p.latency_ms is not None for p in points):
            out["plot_latency"] = _plot(
                run_dir / "accuracy_vs_latency.png", points, rules, fronts["latency"], "latency", reference_gflops
            )
    if (run_dir / "manifest.json").exists():
        update_manifest(
            run_dir,
            run=("costs", {"rules": [asdict(r) for r in rules]}),
            artifacts={
                f"report.{kind}" if not kind.startswith("plot") else path.name: artifact_entry(
                    run_dir, path, kind="report", made_from={"eval": "eval.json"}
                )
                for kind, path in out.items()
            },
        )
    return out


def _verdict_cells(point: Point, rules: list[Rule], verdicts) -> list[str]:
    by_rule = {v.rule: v for v in verdicts if v.label == point.label}
    return [("pass" if by_rule[r.name].passed else "FAIL") for r in rules]


def _csv(points, rules, verdicts, fronts) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "label",
            "accuracy",
            "views_per_image",
            "gflops_per_image",
            "latency_p50_ms",
            "pareto_gflops",
            "pareto_latency",
            *[f"rule:{r.name}" for r in rules],
        ]
    )
    for p in points:
        writer.writerow(
            [
                p.label,
                f"{p.accuracy:.6f}",
                f"{p.views_per_image:.4f}",
                f"{p.gflops_per_image:.6f}",
                "" if p.latency_ms is None else f"{p.latency_ms:.4f}",
                p.label in fronts["gflops"],
                p.label in fronts["latency"],
                *_verdict_cells(p, rules, verdicts),
            ]
        )
    return buffer.getvalue()


def _markdown(points, rules, verdicts, fronts, reference_gflops, unknown) -> str:
    lines = [
        "# TTA cost report",
        "",
        f"Reference: one ResNet-18 pass on a 32x32 image = {reference_gflops:.4f} GFLOP (conv + linear, "
        "computed from the definition in costs/reference.py).",
        "",
        "## Rules",
        "",
    ]
    lines += [f"- **{r.name}**: {r.description}" for r in rules]
    lines += [
        "",
        "## Points",
        "",
        "| TTA, backend, precision | accuracy % | views/img | GFLOP/img | p50 ms/img | "
        "Pareto (FLOPs, latency) | " + " | ".join(r.name for r in rules) + " |",
        "|---|---:|---:|---:|---:|:-:|" + "|".join(":-:" for _ in rules) + "|",
    ]
    for p in points:
        latency = "-" if p.latency_ms is None else f"{p.latency_ms:.3f}"
        pareto = ("F" if p.label in fronts["gflops"] else "-") + ("L" if p.label in fronts["latency"] else "-")
        lines.append(
            f"| {p.label} | {100 * p.accuracy:.2f} | {p.views_per_image:.2f} | {p.gflops_per_image:.4f} | "
            f"{latency} | {pareto} | " + " | ".join(_verdict_cells(p, rules, verdicts)) + " |"
        )
    lines += ["", "## Verdicts", ""]
    lines += [f"- {v.rule} / {v.label}: {'pass' if v.passed else 'FAIL'}: {v.reason}" for v in verdicts]
    lines += [
        "",
        "## Ops the FLOP counter does not know",
        "",
        ", ".join(unknown) if unknown else "none (every op in the graphs was counted)",
        "",
        "Plots: accuracy_vs_gflops.png, accuracy_vs_latency.png.",
        "",
    ]
    return "\n".join(lines)


def _plot(
    path: Path, points: list[Point], rules: list[Rule], front: list[str], cost: str, reference_gflops: float
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_of = (lambda p: p.gflops_per_image) if cost == "gflops" else (lambda p: p.latency_ms)
    shown = [p for p in points if x_of(p) is not None]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    backends = sorted({p.label.split(" @ ")[1] for p in shown})
    colors = dict(zip(backends, plt.cm.tab10.colors, strict=False))  # more than 10 backends reuse none
    for p in shown:
        backend = p.label.split(" @ ")[1]
        ax.scatter(
            x_of(p),
            100 * p.accuracy,
            color=colors[backend],
            s=36,
            zorder=3,
            marker="o" if not p.label.startswith("selective") else "D",
        )
        ax.annotate(
            p.label.split(" @ ")[0], (x_of(p), 100 * p.accuracy), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    frontier = sorted((p for p in shown if p.label in front), key=x_of)
    if frontier:
        ax.step(
            [x_of(p) for p in frontier],
            [100 * p.accuracy for p in frontier],
            where="post",
            color="black",
            lw=1,
            ls="-",
            zorder=2,
            label="Pareto frontier",
        )
    for backend, color in colors.items():
        ax.scatter([], [], color=color, label=backend)
    for rule in rules:
        if cost == "gflops" and rule.limits == "gflops":
            ax.axvline(rule.budget, color="tab:red", ls="--", lw=1, label=f"{rule.name} budget {rule.budget:.3g} GFLOP")
        if cost == "latency" and rule.limits == "latency_ms":
            ax.axvline(rule.budget, color="tab:red", ls="--", lw=1, label=f"{rule.name} budget {rule.budget:g} ms")
    if cost == "gflops":
        ax.axvline(
            reference_gflops, color="tab:gray", ls=":", lw=1.5, label=f"ResNet-18 pass {reference_gflops:.3g} GFLOP"
        )
        ax.set_xlabel("total inference GFLOPs per image (model FLOPs x views)")
    else:
        ax.set_xlabel("batch-1 latency per image, p50 (ms)")
    ax.set_ylabel("top-1 test accuracy (%)")
    ax.set_title("Accuracy vs " + ("inference FLOPs" if cost == "gflops" else "latency") + " per TTA mode and backend")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()

    def save(tmp: Path) -> None:
        fig.savefig(tmp, format="png")

    atomic_write(path, save)
    plt.close(fig)
    return path

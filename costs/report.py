"""The TTA-cost report of one run or a family: report.md, report.json, report.csv and two PNG plots.

report.md opens with the decision table (per rule: winner, runner-up, margin with its paired 95% interval, and
whether TTA earns its cost), then answers the question a reader brings, "at equal cost, do extra views beat a
bigger network?", by pairing every TTA configuration with the next-bigger single-view network of the family
(same test images, seeds matched), then lists every point with its interval, seed spread and latency flags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import atomic_write_json, atomic_write_text, ensure_writable_dir, sha256_file
from dawnpipe.common.manifest import artifact_entry, update_manifest
from dawnpipe.costs.entrants import (
    Entrant,
    check_beside_family,
    entrant_margins,
    entrant_points,
    entrant_section,
    is_entrant,
    load_entrant,
)
from dawnpipe.costs.entry_rules import entry_decisions, entry_section
from dawnpipe.costs.family import Run, load_family
from dawnpipe.costs.multiplicity import pairing_summary
from dawnpipe.costs.points import Point, cheapest_at_least, compare, pareto_front
from dawnpipe.costs.report_markdown import (
    latency_scaling_section,
    machine_lines,
    precision_section,
    render_csv,
    render_markdown,
    scaling_curve_section,
    skipped_lines,
    training_lines,
)
from dawnpipe.costs.rules import DEFAULT_RULES, Rule, decide, make_rules, verdict

REPORT_FORMAT = "dawnpipe-report/3"


@dataclass(frozen=True)
class ReportConfig:
    """Which runs to judge, by which rules, and where the report goes."""

    runs: tuple[str, ...]  # run folders: one run, or a family (widths x seeds, one recipe)
    out: str | None = None  # report folder; None = the run folder for one run (required for several)
    rules: tuple[str, ...] = DEFAULT_RULES  # "latency" is added when budget_ms is set
    budget_gflops: float | None = None  # total-flops budget in GFLOPs/image; None = one ResNet-18 pass
    budget_ms: float | None = None  # latency budget, batch-1 mean ms/image
    accuracy_threshold: float = 94.0  # %, dawnbench's bar (DAWNBench used 94%; the JPEG copy tops out lower)
    threshold_note: str | None = None  # why this bar, written into the report (e.g. the bar on another data set)
    plots: bool = True


def report_config(runs: tuple = (), out: str | Path | None = None, rules: tuple[str, ...] = (), **options: Any):
    """ReportConfig from the command line: run folders and the report folder as strings, the rules named (none
    named: the defaults) and the rule options (budgets, accuracy bar, its note)."""
    return ReportConfig(
        runs=tuple(str(r) for r in runs),
        out=None if out is None else str(out),
        **({"rules": tuple(rules)} if rules else {}),
        **options,
    )


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
    # --out is checked before the runs are read; one run's own folder once it is known to be a run
    out_dir = ensure_writable_dir(cfg.out) if cfg.out else None
    family_dirs, entrants = _split_entrants(cfg.runs)
    runs, points = load_family(family_dirs)
    check_beside_family(entrants, runs[0].test_images, runs[0].classes, frozenset(p.model for p in points))
    contenders = entrant_points(entrants)
    contest = entrant_margins(contenders, points)
    every_entry, entry_notes = entry_decisions(rules, points, contenders)
    out_dir = out_dir or ensure_writable_dir(runs[0].path)
    reference = resnet18_flops() / 1e9
    # a rule decides among models (width x TTA) run the same way: one decision per backend and precision
    backends = sorted({(p.backend, p.precision) for p in points})
    decisions = [decide(rule, [p for p in points if (p.backend, p.precision) == b]) for rule in rules for b in backends]
    scaling = views_vs_width(points)
    scaling_latency = views_vs_width(points, "latency")
    precisions = precision_vs_fp32(points)
    fronts = {cost: [p.label for p in pareto_front(points, cost)] for cost in ("gflops", "latency")}
    unknown = sorted({op for run in runs for row in run.rows for op in row.get("flops_unknown_ops", [])})
    data = {
        "format": REPORT_FORMAT,
        "runs": [{"path": str(r.path), "width": r.width, "seed": r.seed} for r in runs],
        "test_images": test_images(runs),
        "recipe": {k: v for k, v in runs[0].config.items() if k not in ("seed", "name", "out", "resume")},
        "reference": {"resnet18_gflops_per_image": reference},
        "rules": [asdict(r) for r in rules],
        "decisions": [d.to_dict() for d in decisions],
        "views_vs_width": scaling,
        "views_vs_width_latency": scaling_latency,
        "views_vs_width_summary": pairing_summary(scaling, points),
        "views_vs_width_latency_summary": pairing_summary(scaling_latency, points),
        "threshold_note": cfg.threshold_note,
        "precision_vs_fp32": precisions,
        "points": [point_record(p) for p in points],
        "verdicts": [asdict(verdict(r, p)) for p in points for r in rules],
        "pareto": fronts,
        "unknown_ops": unknown,
        "machines": machines(runs),
        "trainings": trainings(runs),
        "skipped": skipped_backends(runs),
        "entrants": [{**e.record, "path": str(e.path), "entrant": e.name, "seed": e.seed} for e in entrants],
        "entrant_points": [point_record(p) for p in contenders],
        "entrant_margins": contest,
        "entry_decisions": [e.to_dict() for e in every_entry],
        "entry_notes": entry_notes,
    }
    out = {
        "json": atomic_write_json(out_dir / "report.json", data),
        "csv": atomic_write_text(out_dir / "report.csv", render_csv(points, rules)),
        "md": atomic_write_text(
            out_dir / "report.md",
            render_markdown(
                runs,
                points,
                rules,
                decisions,
                scaling,
                fronts,
                reference,
                unknown,
                cfg.threshold_note,
                data["views_vs_width_summary"],
            )  # fmt: skip
            + latency_scaling_section(scaling_latency, data["views_vs_width_latency_summary"])
            + scaling_curve_section(points)
            + precision_section(precisions)
            + entrant_section(contest, contenders)
            + entry_section(every_entry, entry_notes)
            + "\n".join(["", *training_lines(data["trainings"]), *machine_lines(data["machines"])])
            + "\n".join(["", *skipped_lines(data["skipped"])]),
        ),
    }
    if cfg.plots:
        from dawnpipe.costs.plots import plot_gflops, plot_latency

        out["plot_gflops"] = plot_gflops(
            out_dir / "accuracy_vs_gflops.png", points, rules, fronts["gflops"], reference, tuple(contenders)
        )
        if any(p.latency_ms is not None for p in points):
            out["plot_latency"] = plot_latency(out_dir / "accuracy_vs_latency.png", points, rules, tuple(contenders))
    made_from = {str(r.path): sha256_file(r.path / "eval.json") for r in [*runs, *entrants]}
    update_manifest(
        out_dir,
        run=("costs", {"config": asdict(cfg), "rules": [asdict(r) for r in rules]}),
        artifacts={
            path.name: artifact_entry(out_dir, path, kind="report", made_from={"eval": made_from})
            for path in out.values()
        },
    )
    return out


def _split_entrants(run_dirs: tuple) -> tuple[list[Path], list[Entrant]]:
    """The family's run folders, and the imported entrants among the folders given (costs.entrants)."""
    entrants = [load_entrant(d) for d in run_dirs if is_entrant(d)]
    family = [Path(d) for d in run_dirs if not is_entrant(d)]
    if entrants and not family:
        raise DawnpipeError(
            "only imported entrants were given; they are judged beside a family's networks",
            "pass the family's run folders too (e.g. docs/results/gpu-10-epoch/members/*)",
        )
    return family, entrants


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


def trainings(runs: list[Run]) -> list[dict[str, Any]]:
    """Each run's training clock, wall time, precision and CPU, as its manifest recorded them."""
    from dawnpipe.common.machine import cpu_summary

    out = []
    for run in runs:
        record = run.training or {}
        metrics, device = record.get("metrics", {}), record.get("device", {})
        cpu = device.get("cpu")
        out.append(
            {
                "run": run.path.name,
                "width": run.width,
                "seed": run.seed,
                "epochs": run.config.get("epochs"),
                "train_seconds": metrics.get("train_seconds"),
                **_wall(run.path, metrics),
                "precision": device.get("precision"),
                "device": device.get("gpu") or device.get("type"),
                "cpu": cpu_summary(cpu) if isinstance(cpu, dict) else str(cpu or "unknown (not recorded)"),
                "ema_test_acc": metrics.get("ema_test_acc"),
                "ema_test_acc_flip": metrics.get("ema_test_acc_flip"),
            }
        )
    return out


def _wall(run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """A run's wall time over all the processes it took. Runs trained before the trainer recorded it get it from
    their checkpoint's epoch history (each process restarts ``elapsed_s``; the last process's wall is the
    manifest's ``wall_seconds``); a run whose checkpoint cannot be read keeps its last process's wall, marked."""
    if "wall_seconds_all_processes" in metrics:
        return {"wall_seconds": metrics["wall_seconds_all_processes"], "processes": metrics.get("processes", 1)}
    last = metrics.get("wall_seconds")
    if not isinstance(last, int | float):
        return {"wall_seconds": None, "processes": None}
    from dawnpipe.train.checkpoint import load_checkpoint
    from dawnpipe.train.finish import process_starts, wall_over_processes

    try:
        history = load_checkpoint(run_dir / "checkpoint.pt")["metrics"]["epochs"]
    except (DawnpipeError, KeyError, TypeError):
        return {"wall_seconds": last, "processes": None}  # None: unknown, shown as "last process"
    starts = process_starts(history)  # the last process's epochs begin at the last start
    walls = wall_over_processes(history[: starts[-1]] if starts else [], last)
    return {"wall_seconds": walls["wall_seconds_all_processes"], "processes": walls["processes"]}


def skipped_backends(runs: list[Run]) -> list[dict[str, str]]:
    """Backends the evaluations could not run (or were not asked to), each once with its reason."""
    seen: dict[str, dict[str, str]] = {}
    for run in runs:
        for entry in run.skipped:
            seen.setdefault(entry["backend"], dict(entry))
    return list(seen.values())


def views_vs_width(points: list[Point], cost: str = "gflops") -> list[dict[str, Any]]:
    """Each TTA point against the cheapest single-view network of the same backend that costs at least as much
    (``cost``: FLOPs per image, or measured batch-1 mean latency), or, if none does, the most expensive one;
    paired on the same images and seeds."""
    price = (lambda q: q.gflops_per_image) if cost == "gflops" else (lambda q: q.latency_ms)  # noqa: E731
    rows = []
    for p in points:
        if not p.uses_tta or price(p) is None:
            continue
        plain = [
            q for q in points
            if not q.uses_tta and (q.backend, q.precision) == (p.backend, p.precision) and price(q) is not None
        ]  # fmt: skip
        rival, costs_more = cheapest_at_least(price(p), plain, price)
        if rival is None:
            continue
        rows.append(
            {
                "cost": "GFLOP/img" if cost == "gflops" else "batch-1 mean ms/img",
                "tta": p.label,
                "tta_gflops": p.gflops_per_image,
                "tta_cost": price(p),
                "network": rival.label,
                "network_gflops": rival.gflops_per_image,
                "network_cost": price(rival),
                "network_costs_at_least_as_much": costs_more,
                "margin": compare(p, rival, "accuracy"),
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


def point_record(p: Point) -> dict[str, Any]:
    """A point as report.json holds it: its figures, and per seed its per-image correctness (packed bits, base64,
    in the order of ``test_images``) and its timing rounds, so every margin can be recomputed from the file."""
    from dawnpipe.infer.scoring import pack_bits

    record = {k: v for k, v in asdict(p).items() if k not in ("correct", "latency_rounds_ms", "latency_sessions")}
    record["correct_by_seed"] = [int(c.sum()) for c in p.correct]
    record["correct_bits_by_seed"] = [pack_bits(c) for c in p.correct]
    record["latency_rounds_ms"] = [list(r) for r in p.latency_rounds_ms]
    record["latency_sessions"] = list(p.latency_sessions)
    return record


def test_images(runs: list[Run]) -> dict[str, Any]:
    """Which test images every point's bits refer to, and in which order."""
    row = runs[0].rows[0]
    data = row.get("data") or {}
    return {
        "count": row["images"],
        "sha256": row.get("test_images_sha256"),
        "data_sha256": data.get("sha256") or runs[0].data_sha256,
        "source": data.get("source"),
        "order": "bit i is test image i in the order dawnpipe loads the test split (an image folder or archive: "
        "by member path, so class by class in sorted class order and by file name within a class; CIFAR pickle "
        "batches: the test batch's own order; --test-limit: train.data.balanced_subset of that); sha256 is "
        "infer.scoring.test_images_digest of those pixels and labels in that order",
    }

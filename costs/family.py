"""A family of runs (widths x seeds, one recipe) read back from their run folders, checked, and pooled.

Each run folder must hold a manifest (written by training) and an eval.json whose sha256 the manifest
recorded, and every eval row must name an artifact that manifest lists: an eval.json copied in from another
run is refused. All runs must share the data (sha256), the classes, the test images and the recipe (every
training option except width and seed), so differences between points are differences of width, TTA mode
and backend alone. Rows of the same width, mode, backend and precision are pooled over seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import sha256_file
from dawnpipe.common.manifest import MANIFEST_NAME, read_manifest
from dawnpipe.costs.points import Point
from dawnpipe.costs.stats import accuracy_interval

_PER_RUN = ("seed", "name", "out", "resume", "model")  # config fields allowed to differ between runs of a family


@dataclass(frozen=True)
class Run:
    """One trained run with its eval rows."""

    path: Path
    seed: int
    width: float
    config: dict[str, Any]
    data_sha256: str
    classes: tuple[str, ...]
    rows: list[dict[str, Any]]
    skipped: tuple[dict[str, str], ...] = ()  # backends its evaluation could not run, with the reason
    training: dict[str, Any] | None = None  # the manifest's training record: metrics (clocks) and device (CPU)
    holdout: dict[str, Any] | None = None  # the calibration hold-out the run kept out of training (its indices' hash)

    @property
    def test_images(self) -> set[str]:
        """The sha256 of the test images (in order) each of its rows was scored on; empty for rows written before
        dawnpipe recorded it."""
        return {row["test_images_sha256"] for row in self.rows if row.get("test_images_sha256")}


def load_run(run_dir: str | Path) -> Run:
    """Read and check one run folder's manifest and eval.json."""
    from dawnpipe.infer.eval_file import EVAL_NAME, read_eval

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise DawnpipeError(f"run folder {run_dir} does not exist", "pass folders made by `dawnpipe train`")
    if not run_dir.is_dir():
        raise DawnpipeError(f"{run_dir} is a file, not a run folder", "pass the folder that holds manifest.json")
    if not (run_dir / MANIFEST_NAME).is_file():
        raise DawnpipeError(
            f"{run_dir} is not a run folder (no {MANIFEST_NAME})", "pass folders made by `dawnpipe train`"
        )
    manifest = read_manifest(run_dir)
    train = manifest.get("runs", {}).get("train")
    if not isinstance(train, dict) or not isinstance(train.get("config"), dict):
        raise DawnpipeError(
            f"{run_dir}/{MANIFEST_NAME} records no training run", "pass folders made by `dawnpipe train`"
        )
    path = run_dir / EVAL_NAME
    if not path.is_file():
        raise DawnpipeError(
            f"{run_dir} has no eval results ({EVAL_NAME})",
            f"run `dawnpipe eval {run_dir}/<model>.onnx` and `dawnpipe eval {run_dir}` (or `dawnpipe pipeline`) first",
        )
    recorded = manifest.get("artifacts", {}).get(EVAL_NAME, {}).get("sha256")
    if recorded != sha256_file(path):
        raise DawnpipeError(
            f"{path} is not the eval.json that {run_dir}/{MANIFEST_NAME} recorded (sha256 differs or is missing)",
            "rerun `dawnpipe eval` in this run folder instead of copying results in",
        )
    known = {e.get("sha256") for e in manifest.get("artifacts", {}).values()}
    evaluation = read_eval(path)
    rows = evaluation["rows"]
    run_id = train.get("run_id")
    for row in rows:
        if run_id and row.get("run_id") and row["run_id"] != run_id:
            raise DawnpipeError(
                f"{path}: a row describes {row.get('artifact')} of run {row['run_id']}, but {run_dir} is run {run_id}",
                "evaluate the artifacts of this run, in this run folder",
            )
        if row.get("artifact_sha256") not in known:
            raise DawnpipeError(
                f"{path}: a row describes {row.get('artifact')} (sha256 {str(row.get('artifact_sha256'))[:12]}...), "
                f"which {run_dir}/{MANIFEST_NAME} does not list",
                "evaluate the artifacts of this run, in this run folder",
            )
    config = train["config"]
    data = train.get("data", {})
    return Run(
        run_dir,
        int(config.get("seed", 0)),
        float(config.get("model", {}).get("width", 1.0)),
        config,
        str(data.get("sha256")),
        tuple(data.get("classes", [])),
        rows,
        tuple(evaluation.get("skipped", [])),
        {"metrics": train.get("metrics", {}), "device": train.get("device", {})},
        train.get("holdout") if isinstance(train.get("holdout"), dict) else None,
    )


def load_family(run_dirs: list[str | Path]) -> tuple[list[Run], list[Point]]:
    """Load every run, check they form one family, and pool rows into points."""
    if not run_dirs:
        raise DawnpipeError("no run folders given", "pass one or more run folders")
    runs = [load_run(d) for d in run_dirs]
    first = runs[0]
    for run in runs[1:]:
        if run.data_sha256 != first.data_sha256 or run.classes != first.classes:
            raise DawnpipeError(
                f"{run.path} was trained on other data or classes than {first.path} "
                f"(sha256 {run.data_sha256[:12]} vs {first.data_sha256[:12]})",
                "give one report runs of one data set",
            )
        differs = sorted(
            k
            for k in set(run.config) | set(first.config)
            if k not in _PER_RUN and run.config.get(k) != first.config.get(k)
        )
        model_differs = {
            k
            for k in set(run.config.get("model", {})) | set(first.config.get("model", {}))
            if k != "width" and run.config.get("model", {}).get(k) != first.config.get("model", {}).get(k)
        }
        if differs or model_differs:
            raise DawnpipeError(
                f"{run.path} and {first.path} were trained with different recipes "
                f"({sorted(differs) + sorted(model_differs)})",
                "a family differs only in width and seed; report other runs separately",
            )
    _check_same_images(runs)
    refuse_repeats(
        runs,
        lambda run: (run.width, run.seed),
        lambda run: f"the same configuration (width {run.width}, seed {run.seed})",
        "pass each run once",
    )
    return runs, _points(runs)


def refuse_repeats(items: list[Any], key: Callable[[Any], Any], what: Callable[[Any], str], fix: str) -> None:
    """One line naming the first two of ``items`` (each with a ``path``) that share ``key``: the same run passed
    twice to one report, where it would count its test images twice. ``what`` describes the shared key."""
    seen: dict[Any, Path] = {}
    for item in items:
        if key(item) in seen:
            raise DawnpipeError(f"{seen[key(item)]} and {item.path} are {what(item)}", fix)
        seen[key(item)] = item.path


def _check_same_images(runs: list[Run]) -> None:
    """Every run scored on the same test images in the same order, and calibrated on the same hold-out: a margin
    pairs images by position, and a selective threshold means what its hold-out made it mean."""
    for run in runs:
        if len(run.test_images) > 1:
            raise DawnpipeError(
                f"{run.path}'s eval rows were scored on {len(run.test_images)} different test sets",
                "re-evaluate its artifacts on one test set (same --data and --test-limit)",
            )
    scored = [run for run in runs if run.test_images]
    for run in scored[1:]:
        if run.test_images != scored[0].test_images:
            raise DawnpipeError(
                f"{run.path} and {scored[0].path} were scored on different test images (sha256 "
                f"{next(iter(run.test_images))[:12]} vs {next(iter(scored[0].test_images))[:12]})",
                "evaluate every run on the same data and --test-limit, or report them separately",
            )
    held = [run for run in runs if (run.holdout or {}).get("indices_sha256")]
    for run in held[1:]:
        if run.holdout["indices_sha256"] != held[0].holdout["indices_sha256"]:
            raise DawnpipeError(
                f"{run.path} and {held[0].path} calibrated selective TTA on different hold-outs "
                f"({run.holdout.get('images')} vs {held[0].holdout.get('images')} images, index sha256 "
                f"{run.holdout['indices_sha256'][:12]} vs {held[0].holdout['indices_sha256'][:12]})",
                "train the family with one --holdout and --batch-size, or report the runs separately",
            )


def backend_label(row: dict[str, Any]) -> str:
    """``onnxruntime/CPU``, ``torch``, ``tensorrt``: backend and (for onnxruntime) provider."""
    provider = row.get("provider")
    return row["backend"] + (f"/{provider.replace('ExecutionProvider', '')}" if provider else "")


def _points(runs: list[Run]) -> list[Point]:
    groups: dict[tuple, list[tuple[int, dict[str, Any]]]] = {}
    images = {row["images"] for run in runs for row in run.rows}
    if len(images) != 1:
        raise DawnpipeError(
            f"the runs were evaluated on different numbers of test images {sorted(images)}",
            "evaluate every run on the same test set (same --test-limit)",
        )
    for run in runs:
        for row in run.rows:
            key = (run.width, backend_label(row), row["precision"], row["tta"])
            groups.setdefault(key, []).append((run.seed, row))
    points = []
    for (width, backend, precision, tta), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1:])):
        members.sort(key=lambda m: m[0])
        points.append(pool_point(width, backend, precision, tta, members))
    return points


def pool_point(
    width: float, backend: str, precision: str, tta: str, members: list[tuple[int, dict[str, Any]]]
) -> Point:
    """One configuration over its seeds: accuracy and its interval with each test image counted once, latency
    averaged over seeds with every seed's rounds kept (the unit of a latency margin)."""
    from dawnpipe.infer.scoring import unpack_bits

    accs = np.array([row["accuracy"] for _, row in members])
    bits = tuple(unpack_bits(row["correct_bits"], row["images"]) for _, row in members)
    for (_, row), flags in zip(members, bits, strict=True):
        if int(flags.sum()) != row["correct"]:
            raise DawnpipeError(
                f"an eval row of w{width:g} {tta} on {backend} says {row['correct']} correct images but its "
                f"per-image bits hold {int(flags.sum())}",
                "rerun `dawnpipe eval` for that run",
            )
    _, low, high = accuracy_interval(bits)
    latencies = [(row.get("latency") or {}).get("batch1") for _, row in members]
    measured = [lat for lat in latencies if lat]
    selective = [row.get("selective") or {} for _, row in members]
    selected = [s["selected_fraction"] for s in selective if s.get("selected_fraction") is not None]
    holdout = [s["holdout_fraction"] for s in selective if s.get("holdout_fraction") is not None]
    sources = sorted({s["threshold_source"] for s in selective if s.get("threshold_source")})

    def mean_of(key: str) -> float | None:
        return float(np.mean([lat[key] for lat in measured])) if measured else None

    return Point(
        label=f"w{width:g} {tta} @ {backend} {precision}",
        width=width,
        tta=tta,
        backend=backend,
        precision=precision,
        seeds=tuple(seed for seed, _ in members),
        accuracy=float(accs.mean()),
        accuracy_std=float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
        ci95=(low, high),
        views_per_image=float(np.mean([row["views_per_image"] for _, row in members])),
        gflops_per_image=float(np.mean([row["gflops_per_image"] for _, row in members])),
        latency_ms=mean_of("mean_ms"),
        latency_p50_ms=mean_of("p50_ms"),
        latency_p99_ms=mean_of("p99_ms"),
        latency_std_ms=float(np.sqrt(np.mean([lat["std_ms"] ** 2 for lat in measured]))) if measured else None,
        latency_calls=int(sum(lat["calls"] for lat in measured)),
        latency_flagged=any(lat.get("flagged") for lat in measured),
        selected_fraction=float(np.mean(selected)) if selected else None,
        selected_fraction_holdout=float(np.mean(holdout)) if holdout else None,
        threshold_source="; ".join(sources) or None,
        correct=bits,
        latency_rounds_ms=tuple(
            tuple((lat or {}).get("round_mean_ms") or (lat or {}).get("round_p50_ms") or ()) for lat in latencies
        ),
        latency_sessions=tuple(str((lat or {}).get("session") or "") for lat in latencies),
        latency_drift=max((float(lat.get("drift") or 0.0) for lat in measured), default=None),
    )

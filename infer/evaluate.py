"""evaluate(): accuracy, its 95% interval, per-class accuracy, views, FLOPs and latency per TTA mode.

Rows go to ``eval.json`` in the run folder (merged with rows other backends wrote there before) and to the
run's manifest; the costs stage reads them from there.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import atomic_write_json, sha256_file
from dawnpipe.common.manifest import artifact_entry, read_manifest, update_manifest
from dawnpipe.common.tta import DEFAULT_SHIFT, TTA_MODES, apply_view, backend_logits, check_mode, views
from dawnpipe.infer.backends import Backend, load
from dawnpipe.infer.latency import measure
from dawnpipe.infer.selective import combine_selective, selective_logits

EVAL_NAME = "eval.json"


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate, on what, and how much to measure."""

    artifact: str  # run folder, checkpoint, .onnx or .engine
    data: str | None = None  # CIFAR-10 source; None = the one the run was trained on (from the manifest)
    tta: tuple[str, ...] = ("none", "flip")  # modes; ("all",) = every mode
    backend: str = "auto"
    provider: str = "auto"  # onnxruntime execution provider: auto | cpu | cuda | tensorrt
    device: str = "auto"  # torch backend device
    batch_size: int = 500  # images per call for accuracy passes
    test_limit: int | None = None  # class-balanced subset of the test set
    shift: int = DEFAULT_SHIFT  # pixels, translate views
    selective_fraction: float | None = 0.2  # least-confident fraction that gets extra views; None = no selective rows
    selective_threshold: float | None = None  # alternatively: extra views below this top-1 probability
    latency_iters: int = 50  # timed batch-1 calls per mode (after 5 warm-up calls)
    throughput_batch: int = 256  # images per call for the throughput figure
    throughput_iters: int = 3  # timed calls at throughput_batch
    out: str | None = None  # folder for eval.json; None = the artifact's run folder


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sane at 0% and 100%, unlike the normal one)."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # the bounds are exactly 0 and 1 at the extremes
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


def evaluate(cfg: EvalConfig, progress=None) -> tuple[list[dict[str, Any]], Path]:
    """Evaluate every requested mode; returns the rows and the eval.json path."""
    modes = _modes(cfg.tta)
    artifact = Path(cfg.artifact).expanduser()
    with load(artifact, cfg.backend, provider=cfg.provider, device=cfg.device) as backend:
        run_dir = backend.path.parent
        images, labels = _test_data(cfg, backend, run_dir)
        if backend.graph_tta != "none":
            modes = [backend.graph_tta]  # TTA is inside the graph: that is the only mode this artifact has
        from dawnpipe.export.flops import artifact_flops

        flops = artifact_flops(backend.path)
        base_flops = flops.model_flops / max(backend.graph_views, 1)
        say = progress or (lambda _message: None)
        say(f"{backend.name}: accuracy of {', '.join(modes)} on {len(labels)} images")
        selective = backend.graph_tta == "none" and (
            cfg.selective_fraction is not None or cfg.selective_threshold is not None
        )
        # every mode holds the identity view, so the plain logits selective TTA starts from come free from the cache
        wanted = list(dict.fromkeys(["none", *modes])) if selective else modes
        mode_logits = _all_mode_logits(backend, images, wanted, cfg)
        rows = []
        for mode in modes:
            n_views = backend.graph_views if backend.graph_tta != "none" else len(views(mode, cfg.shift))
            row = _row(backend, mode, mode_logits[mode], labels, n_views, base_flops)
            say(f"{backend.name}: latency of {mode}")
            row["latency"] = _latency(
                backend, images, cfg, lambda x, m=mode: backend_logits(backend, x, m, shift=cfg.shift)
            )
            row["flops_unknown_ops"] = flops.unknown_ops
            rows.append(row)
            if mode != "none" and selective:
                sel = combine_selective(
                    mode_logits["none"],
                    mode_logits[mode],
                    n_views,
                    fraction=cfg.selective_fraction,
                    threshold=cfg.selective_threshold,
                )
                srow = _row(backend, f"selective-{mode}", sel.logits, labels, sel.views_per_image, base_flops)
                srow["selective"] = {
                    "fraction": cfg.selective_fraction,
                    "threshold": cfg.selective_threshold,
                    "selected": float(sel.selected.mean()),
                }
                srow["latency"] = _latency(
                    backend,
                    images,
                    cfg,
                    lambda x, m=mode: (
                        selective_logits(
                            backend,
                            x,
                            m,
                            fraction=cfg.selective_fraction,
                            threshold=cfg.selective_threshold,
                            shift=cfg.shift,
                        ).logits
                    ),
                    per_image_sequence=True,
                )
                srow["flops_unknown_ops"] = flops.unknown_ops
                rows.append(srow)
        path = _write(rows, backend, cfg, run_dir)
    return rows, path


def _all_mode_logits(backend: Backend, images: np.ndarray, modes: list[str], cfg: EvalConfig) -> dict[str, np.ndarray]:
    """Logits of every mode, running each distinct view once and combining by each mode's weights."""
    if backend.graph_tta != "none":
        return {modes[0]: backend_logits(backend, images, modes[0], batch=cfg.batch_size)}
    per_view: dict[tuple, np.ndarray] = {}
    for mode in modes:
        for view in views(mode, cfg.shift):
            key = (view.flip, view.dy, view.dx)
            if key not in per_view:
                per_view[key] = np.concatenate(
                    [
                        backend.infer(apply_view(images[i : i + cfg.batch_size], view))
                        for i in range(0, len(images), cfg.batch_size)
                    ]
                )
    return {mode: sum(v.weight * per_view[(v.flip, v.dy, v.dx)] for v in views(mode, cfg.shift)) for mode in modes}


def _modes(requested: tuple[str, ...]) -> list[str]:
    if "all" in requested:
        return list(TTA_MODES)
    return [check_mode(m) for m in requested]


def _test_data(cfg: EvalConfig, backend: Backend, run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from dawnpipe.train.data import load_cifar

    source = cfg.data or read_manifest(run_dir).get("runs", {}).get("train", {}).get("data", {}).get("source")
    if not source:
        raise DawnpipeError(
            "no --data given and the run's manifest names no training data", "pass --data PATH to the CIFAR-10 test set"
        )
    data = load_cifar(source, test_limit=cfg.test_limit)
    if list(data.classes) != backend.classes:
        raise DawnpipeError(
            f"the data's classes {list(data.classes)} differ from the model's {backend.classes}",
            "evaluate on the data set the model was trained for",
        )
    return data.test_x, data.test_y


def _row(
    backend: Backend, mode: str, logits: np.ndarray, labels: np.ndarray, views_per_image: float, base_flops: float
) -> dict[str, Any]:
    predicted = logits.argmax(1)
    correct = int((predicted == labels).sum())
    low, high = wilson_interval(correct, len(labels))
    per_class = {
        name: float((predicted[labels == i] == i).mean()) if (labels == i).any() else None
        for i, name in enumerate(backend.classes)
    }
    return {
        **backend.describe(),
        "tta": mode,
        "views_per_image": float(views_per_image),
        "accuracy": correct / max(len(labels), 1),
        "ci95": [low, high],
        "correct": correct,
        "images": len(labels),
        "per_class": per_class,
        "model_flops_per_image": base_flops * views_per_image,
        "gflops_per_image": base_flops * views_per_image / 1e9,
    }


def _latency(backend: Backend, images: np.ndarray, cfg: EvalConfig, run, per_image_sequence: bool = False) -> dict:
    """Batch-1 latency percentiles and large-batch throughput; selective TTA is timed over distinct images
    (its cost depends on each image's confidence)."""
    if cfg.latency_iters <= 0:
        return {}
    if per_image_sequence:
        times = []
        sample = images[: max(cfg.latency_iters, 1)]
        for i in range(min(5, len(sample))):
            run(sample[i : i + 1])
        for i in range(len(sample)):
            t0 = time.perf_counter()
            run(sample[i : i + 1])
            backend.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
        p50, p90, p99 = np.percentile(times, [50, 90, 99])
        single = {
            "batch": 1,
            "calls": len(times),
            "p50_ms": float(p50),
            "p90_ms": float(p90),
            "p99_ms": float(p99),
            "images_per_s": float(len(times) / (sum(times) / 1000)),
        }
    else:
        single = measure(
            run, images[:1], batch=1, warmup=5, iters=cfg.latency_iters, sync=backend.synchronize
        ).to_dict()
    bulk = measure(
        run, images, batch=cfg.throughput_batch, warmup=1, iters=cfg.throughput_iters, sync=backend.synchronize
    ).to_dict()
    return {"batch1": single, "throughput": bulk}


def _write(rows: list[dict[str, Any]], backend: Backend, cfg: EvalConfig, run_dir: Path) -> Path:
    out_dir = Path(cfg.out) if cfg.out else run_dir
    path = out_dir / EVAL_NAME
    existing: list[dict[str, Any]] = []
    if path.exists():
        try:
            existing = json.loads(path.read_text()).get("rows", [])
        except (json.JSONDecodeError, AttributeError):
            existing = []
    key = lambda r: (r.get("artifact"), r.get("backend"), r.get("provider"), r.get("tta"))  # noqa: E731
    fresh = {key(r) for r in rows}
    merged = [r for r in existing if key(r) not in fresh] + rows
    atomic_write_json(path, {"format": "dawnpipe-eval/1", "rows": merged})
    if (run_dir / "manifest.json").exists():
        update_manifest(
            run_dir,
            run=("eval", {"config": asdict(cfg)}),
            artifacts={
                EVAL_NAME: artifact_entry(
                    run_dir,
                    path,
                    kind="eval",
                    made_from={"artifact": backend.path.name, "sha256": sha256_file(backend.path)},
                    metrics={f"{r['backend']}:{r['tta']}": r["accuracy"] for r in merged},
                )
            },
        )
    return path

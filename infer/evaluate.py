"""evaluate(): accuracy, its 95% interval, per-class accuracy, views, FLOPs and latency per TTA mode.

Accuracy: every distinct view is run once over the test set and each mode is combined from those logits
(``--tta all`` costs 6 passes, not 16.6); selective modes are combined from the same cache with the artifact's
per-image threshold, which is exactly the decision ``run_mode`` makes one image at a time. Each row keeps its
per-image correctness (a bitmap) so the costs stage can pair rows on the same images.

Latency: every row through ``run_mode`` under the interleaved protocol of ``infer.latency``. Several artifacts
(``evaluate_together``, ``dawnpipe eval A B ...``) are timed in one session, so rows of different widths or
precisions pair by round in the costs stage.

Rows go to ``eval.json`` beside each artifact (or ``--out``), merged with rows other backends wrote there
(``infer.eval_file``), and to that folder's manifest when it has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import ensure_writable_dir
from dawnpipe.common.precision import check_precision
from dawnpipe.common.tta import ALL_MODES, DEFAULT_SHIFT, combine, parse_mode, view_logits, views
from dawnpipe.common.tta import selective_from_views as _selective_from_views
from dawnpipe.infer.backends import Backend, artifact_kind, load
from dawnpipe.infer.eval_file import EVAL_NAME, check_mergeable, read_eval, write_rows
from dawnpipe.infer.latency import MIN_ROUNDS, Protocol, measure_rows
from dawnpipe.infer.modes import resolve_threshold, run_mode, views_per_image
from dawnpipe.infer.scoring import pack_bits, test_images_digest, wilson_interval

__all__ = ["EVAL_NAME", "EvalConfig", "eval_config", "eval_configs", "evaluate", "evaluate_together", "read_eval"]


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate, on what, and how much to measure."""

    artifact: str  # run folder, checkpoint, .onnx or .engine
    data: str | None = None  # CIFAR-10 source; None = the data the artifact says it was trained on
    tta: tuple[str, ...] = ("none", "flip", "selective-flip")  # modes; ("all",) = every mode the artifact can run
    backend: str = "auto"
    provider: str = "auto"  # onnxruntime execution provider: auto | cpu | cuda | tensorrt
    threads: int = 0  # CPU threads of the backend; 0 = every core this process may use (recorded)
    batch_size: int = 500  # images per call for accuracy passes
    test_limit: int | None = None  # class-balanced subset of the test set
    shift: int = DEFAULT_SHIFT  # pixels, translate views
    selective_threshold: float | None = None  # override the artifact's calibrated per-image threshold
    latency: bool = True  # measure batch-1 latency and throughput
    latency_only: bool = False  # time the rows eval.json already holds (checked), without scoring accuracy again
    protocol: Protocol = field(default_factory=Protocol)
    latency_images: int = 200  # distinct test images cycled through at batch 1
    throughput_batch: int = 256  # images per call for the throughput figure
    throughput_calls: int = 1  # calls per round at throughput_batch
    out: str | None = None  # folder for eval.json; None = the artifact's folder
    allow_foreign: bool = False  # evaluate an artifact its folder's manifest does not list (rows marked)
    allow_incomplete: bool = False  # evaluate a model from an interrupted training run (rows marked)
    graphs: bool = False  # torch: graph-captured (the torch-graphs backend)
    precision: str = "auto"  # torch backends: auto | fp32 | bf16 | fp16 (common.device); an ONNX file's is its own
    skipped: tuple[tuple[str, str], ...] = ()  # (backend, reason) pairs not run, written into eval.json beside the rows


def eval_config(
    *,
    no_latency: bool = False,
    latency_rounds: int = Protocol.rounds,
    latency_calls: int = Protocol.calls,
    **options: Any,
) -> EvalConfig:
    """EvalConfig from the command line's flat options (``--no-latency``, ``--latency-rounds``, ``--latency-calls``
    make the timing protocol); paths are kept as strings (JSON)."""
    fields = {key: str(value) if isinstance(value, Path) else value for key, value in options.items()}
    return EvalConfig(latency=not no_latency, protocol=Protocol(rounds=latency_rounds, calls=latency_calls), **fields)


def eval_configs(artifacts: Sequence[str | Path], **options: Any) -> list[EvalConfig]:
    """One EvalConfig per artifact named on the command line (eval ARTIFACT...), the other options shared."""
    return [eval_config(artifact=artifact, **options) for artifact in artifacts]


def evaluate(cfg: EvalConfig, progress=None) -> tuple[list[dict[str, Any]], Path]:
    """Evaluate every requested mode of one artifact; returns the rows and the eval.json path."""
    ((rows, path),) = evaluate_together((cfg,), progress)
    return rows, path


def evaluate_together(cfgs: Sequence[EvalConfig], progress=None) -> list[tuple[list[dict[str, Any]], Path]]:
    """Several artifacts, each scored as evaluate() scores one, with the latency of all their rows timed in one
    session (interleaved rounds over every artifact's rows). Rows of one session pair by round in the costs stage,
    so a width-1 flip row and a width-1.25 plain row are compared round by round with the machine's drift inside
    the interval, not as two samples taken at different times. The configs differ only in their artifact, and all
    are scored on the same test images. Returns (rows, eval.json path) per artifact, in order."""
    say = progress or (lambda _message: None)
    _check_together(cfgs)
    for cfg in cfgs:
        _check_options(cfg)
    with ExitStack() as stack:
        loaded = []
        for cfg in cfgs:
            backend = stack.enter_context(
                load(
                    Path(cfg.artifact).expanduser(),
                    cfg.backend,
                    provider=cfg.provider,
                    threads=cfg.threads,
                    allow_foreign=cfg.allow_foreign,
                    allow_incomplete=cfg.allow_incomplete,
                    graphs=cfg.graphs,
                    precision=cfg.precision,
                )
            )
            modes = _runnable_modes(backend, _modes(cfg.tta), cfg)
            loaded.append((cfg, backend, modes, *_test_data(cfg, backend)))
        if len({data["test_images_sha256"] for *_, data in loaded}) > 1:
            raise DawnpipeError(
                "the artifacts are scored on different test images, so their rows cannot be timed and paired together",
                "evaluate them one at a time",
            )
        scored = [(cfg, backend, _reused(cfg, backend, modes, data, say) if cfg.latency_only
                   else _score(cfg, backend, modes, images, labels, data, say))
                  for cfg, backend, modes, images, labels, data in loaded]  # fmt: skip
        if cfgs[0].latency:
            from dawnpipe.train.data import interleaved_order

            cfg, _, _, images, labels, _ = loaded[0]
            count = sum(len(rows) for *_, rows in scored)
            say(f"latency of {count} rows of {len(scored)} artifact(s), interleaved in {cfg.protocol.rounds} rounds")
            if cfg.protocol.rounds < MIN_ROUNDS:
                say(f"notice: {cfg.protocol.rounds} timing round(s) give no latency interval (at least {MIN_ROUNDS} "
                    "do); the rows are timed and say so")  # fmt: skip
            _attach_latency([(backend, rows) for _, backend, rows in scored], images[interleaved_order(labels)], cfg)
        return [(rows, _write(rows, backend, cfg)) for cfg, backend, rows in scored]


def _write(rows: list[dict[str, Any]], backend: Backend, cfg: EvalConfig) -> Path:
    return write_rows(rows, _out_dir(cfg), backend.path, asdict(cfg), cfg.skipped)


def _out_dir(cfg: EvalConfig) -> Path:
    """eval.json's folder: --out, else the artifact's own (a run folder, or the folder holding the file)."""
    artifact = Path(cfg.artifact).expanduser()
    return Path(cfg.out) if cfg.out else (artifact if artifact.is_dir() else artifact.parent)


def _check_together(cfgs: Sequence[EvalConfig]) -> None:
    """Artifacts timed together share every option but the artifact, and none is named twice."""
    if not cfgs:
        raise DawnpipeError("no artifact to evaluate", "name a run folder, checkpoint, .onnx or .engine")
    if any(replace(cfg, artifact="") != replace(cfgs[0], artifact="") for cfg in cfgs):
        raise DawnpipeError("artifacts evaluated together take one set of options", "evaluate them one at a time")
    seen: dict[Path, str] = {}
    for cfg in cfgs:
        key = Path(cfg.artifact).expanduser().resolve()
        if key in seen:
            raise DawnpipeError(f"{cfg.artifact} is named twice (as {seen[key]})", "name each artifact once")
        seen[key] = cfg.artifact


def _check_options(cfg: EvalConfig) -> None:
    """Before any artifact is loaded: the modes, the threshold override, and eval.json's folder (writable, and any
    eval.json in it readable, so its rows are merged rather than lost)."""
    _modes(cfg.tta)
    if check_precision(cfg.precision) != "auto":
        artifact = Path(cfg.artifact).expanduser()
        kind = artifact_kind(artifact) if artifact.exists() else None
        if kind not in (None, "checkpoint") and not (kind == "onnx" and cfg.backend == "openvino"):
            raise DawnpipeError(
                f"--precision {cfg.precision} chooses the compute precision of the torch backends and OpenVINO, and "
                f"{artifact.name} is an {kind} file whose precision is its own on {cfg.backend}",
                "drop --precision, export that precision (dawnpipe export --precision ...), or pass --backend openvino",
            )
    if cfg.latency_only and not cfg.latency:
        raise DawnpipeError("--latency-only times rows and --no-latency skips timing", "pass one of them")
    if cfg.selective_threshold is not None and not 0.0 <= cfg.selective_threshold <= 1.0:
        raise DawnpipeError(f"--selective-threshold {cfg.selective_threshold} is outside [0, 1]", "use a probability")
    if cfg.out or Path(cfg.artifact).expanduser().exists():
        ensure_writable_dir(_out_dir(cfg), "--out" if cfg.out else "--out (beside the artifact)")
        check_mergeable(_out_dir(cfg))


def _score(
    cfg: EvalConfig,
    backend: Backend,
    modes: list[str],
    images: np.ndarray,
    labels: np.ndarray,
    data: dict[str, Any],
    say,
) -> list[dict[str, Any]]:
    """One artifact's accuracy rows: every distinct view run once, each mode combined from those logits."""
    from dawnpipe.export.flops import artifact_flops

    flops = artifact_flops(backend.path)
    base_flops = flops.model_flops / max(backend.graph_views, 1)
    say(f"{backend.name}: accuracy of {', '.join(modes)} on {len(labels)} images")
    logits, selected = _mode_logits(backend, images, modes, cfg)
    agreement = _agreement(backend, images, logits, cfg)
    rows = []
    for mode in modes:
        n_views = views_per_image(backend, mode, selected.get(mode), cfg.shift)
        row = _row(backend, mode, logits[mode], labels, n_views, base_flops)
        row["data"] = data
        row["test_images_sha256"] = data["test_images_sha256"]
        row["shift"] = cfg.shift
        row["flops_unknown_ops"] = sorted(set(flops.unknown_ops))
        if agreement is not None:
            row["agreement_with_onnxruntime_fp32"] = agreement
        if mode in selected:
            row["selective"] = _selective_record(backend, mode, selected[mode], cfg.selective_threshold)
        rows.append(row)
    return rows


def _reused(cfg: EvalConfig, backend: Backend, modes: list[str], data: dict[str, Any], say) -> list[dict[str, Any]]:
    """--latency-only: the artifact's rows as its eval.json holds them (checked to match this session), marked."""
    from dawnpipe.infer.scored_rows import scored_rows

    rows = scored_rows(_out_dir(cfg), backend, modes, data["test_images_sha256"], cfg.selective_threshold, cfg.shift)
    say(f"{backend.name}: accuracy of {', '.join(modes)} as eval.json holds it (--latency-only)")
    for row in rows:
        row.update(backend.describe())  # the settings the row is now timed with
        row["accuracy_scored"] = "by an earlier evaluation (this one timed the row with --latency-only)"
    return rows


def _selective_record(backend: Backend, mode: str, chosen: np.ndarray, override: float | None) -> dict[str, Any]:
    """What a selective row says about its threshold: the value, where it came from, the fraction it selected on
    the test images, and (a fitted threshold) the target and the fraction it selects on the hold-out it was fitted
    on, so the two can be read side by side."""
    threshold, origin = resolve_threshold(backend, override, mode)
    selective = backend.selective or {}
    fitted = (selective.get("modes") or {}).get(mode) or (selective if "modes" not in selective else {})
    own = override is None
    return {
        "threshold": threshold,
        "threshold_source": origin,
        "target_fraction": fitted.get("target_fraction") if own else None,
        "holdout_fraction": fitted.get("selected_fraction_holdout") if own else None,
        "selected_fraction": float(chosen.mean()),
        "decision": "per image: extra views when the plain view's top-1 probability < threshold",
    }


def _agreement(backend: Backend, images: np.ndarray, logits: dict, cfg: EvalConfig) -> dict[str, Any] | None:
    """OpenVINO rows carry their top-1 agreement with onnxruntime fp32 on the same test images."""
    if backend.name != "openvino":
        return None
    from dawnpipe.infer.openvino_backend import agreement_with_onnxruntime

    plain = logits.get("none", logits.get(backend.graph_tta))
    if plain is None:
        plain = backend.infer(images)
    return agreement_with_onnxruntime(backend, images, plain)


def _modes(requested: tuple[str, ...]) -> list[str]:
    if not requested:
        raise DawnpipeError("no TTA mode given", f"pass --tta with one or more of {', '.join(ALL_MODES)}, or all")
    if "all" in requested:
        return list(ALL_MODES)
    for mode in requested:
        parse_mode(mode)
    return list(dict.fromkeys(requested))


def _runnable_modes(backend: Backend, modes: list[str], cfg: EvalConfig) -> list[str]:
    """The graph's own mode for a TTA graph; selective modes only with a threshold (else refused or dropped)."""
    if backend.graph_tta != "none":
        return [backend.graph_tta]
    from dawnpipe.train.calibration import mode_threshold

    if cfg.selective_threshold is not None or mode_threshold(backend.selective, "selective-flip") is not None:
        return modes
    explicit = [m for m in modes if parse_mode(m)[1]]
    if explicit and "all" not in cfg.tta:
        resolve_threshold(backend, None, explicit[0])  # raises the one-line "no calibrated threshold" error
    return [m for m in modes if not parse_mode(m)[1]]


def _mode_logits(
    backend: Backend, images: np.ndarray, modes: list[str], cfg: EvalConfig
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Logits per mode from one pass per distinct view; selective modes' per-image selections."""
    if backend.graph_tta != "none":
        return {modes[0]: run_mode(backend, images, modes[0], batch=cfg.batch_size).logits}, {}
    cache: dict[tuple, np.ndarray] = {}

    def per_view(base: str) -> list[np.ndarray]:
        out = []
        for view in views(base, cfg.shift):
            key = (view.flip, view.dy, view.dx)
            if key not in cache:
                (cache[key],) = view_logits(backend.infer, images, (view,), cfg.batch_size)
            out.append(cache[key])
        return out

    logits, selected = {}, {}
    for mode in modes:
        base, selective = parse_mode(mode)
        tta_views = views(base, cfg.shift)
        if selective:
            threshold, _ = resolve_threshold(backend, cfg.selective_threshold, mode)
            logits[mode], selected[mode] = _selective_from_views(per_view(base), tta_views, threshold)
        else:
            logits[mode] = combine(per_view(base), tta_views)
    return logits, selected


def _test_data(cfg: EvalConfig, backend: Backend) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from dawnpipe.train.data import load_cifar

    own = backend.meta.get("data") or {}
    source = cfg.data or own.get("source")
    if not source:
        raise DawnpipeError(
            f"no --data given and {backend.path.name} names no data it was trained on",
            "pass --data PATH to the CIFAR-10 test set",
        )
    data = load_cifar(source, test_limit=cfg.test_limit, trusted_sha256=own.get("sha256"))
    if list(data.classes) != backend.classes:
        raise DawnpipeError(
            f"the data's classes {list(data.classes)} differ from the model's {backend.classes}",
            "evaluate on the data set the model was trained for",
        )
    described = {
        "source": str(source),
        "sha256": data.source_sha256,
        "test_images": int(len(data.test_y)),
        "test_images_sha256": test_images_digest(data.test_x, data.test_y),
    }
    if own.get("sha256") and own["sha256"] != data.source_sha256:
        described["note"] = f"not the data the model was trained on (sha256 {own['sha256'][:12]}...)"
    return data.test_x, data.test_y, described


def _row(
    backend: Backend, mode: str, logits: np.ndarray, labels: np.ndarray, views_per_image: float, base_flops: float
) -> dict[str, Any]:
    predicted = logits.argmax(1)
    hits = predicted == labels
    correct = int(hits.sum())
    low, high = wilson_interval(correct, len(labels))
    per_class = {
        name: float(hits[labels == i].mean()) if (labels == i).any() else None for i, name in enumerate(backend.classes)
    }
    return {
        **backend.describe(),
        "artifact_sha256": backend.sha256,
        "model_config": backend.meta.get("model_config"),
        "tta": mode,
        "views_per_image": float(views_per_image),
        "accuracy": correct / max(len(labels), 1),
        "ci95": [low, high],
        "correct": correct,
        "images": int(len(labels)),
        "correct_bits": pack_bits(hits),
        "per_class": per_class,
        "model_flops_per_image": base_flops * views_per_image,
        "gflops_per_image": base_flops * views_per_image / 1e9,
    }


def _attach_latency(scored: list[tuple[Backend, list[dict[str, Any]]]], images: np.ndarray, cfg: EvalConfig) -> None:
    """Batch-1 latency (distinct images, interleaved rounds) and throughput at throughput_batch, every row of every
    artifact in one session. ``images`` come with the classes interleaved, so the first ``latency_images`` are a
    class-balanced sample."""

    def runner(backend: Backend, mode: str):
        return lambda x: run_mode(backend, x, mode, threshold=cfg.selective_threshold, shift=cfg.shift)

    runs = {
        f"{i}:{row['tta']}": runner(backend, row["tta"]) for i, (backend, rows) in enumerate(scored) for row in rows
    }

    def sync() -> None:
        for backend, _ in scored:
            backend.synchronize()

    single = measure_rows(runs, images[: cfg.latency_images], batch=1, protocol=cfg.protocol, sync=sync)
    bulk_protocol = Protocol(
        rounds=cfg.protocol.rounds,
        calls=cfg.throughput_calls,
        min_seconds=0.0,
        warmup=1,
        max_spread=cfg.protocol.max_spread,
    )
    bulk = measure_rows(runs, images, batch=cfg.throughput_batch, protocol=bulk_protocol, sync=sync)
    for i, (backend, rows) in enumerate(scored):
        for row in rows:
            row["latency"] = {
                "batch1": single[f"{i}:{row['tta']}"].to_dict(),
                "throughput": bulk[f"{i}:{row['tta']}"].to_dict(),
                "threads": backend.threads,
                "protocol": asdict(cfg.protocol),
            }

"""pipeline(): train a family (widths x seeds, one recipe), export, evaluate every TTA mode on every available
backend, and write one cost report over the family.

Every option is validated before training starts. Each run is exported once per artifact: the fp32 and int8
ONNX everywhere; on a GPU also the fp16 ONNX and, where TensorRT is installed, an engine built from that fp16
ONNX. Backends: PyTorch (the checkpoint) and onnxruntime (fp32 and int8 ONNX, CPU) everywhere; onnxruntime CUDA
(fp16 ONNX) and TensorRT on a GPU. What is skipped is said, with why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.costs.report import ReportConfig
from dawnpipe.train.config import TrainConfig


@dataclass(frozen=True)
class PipelineConfig:
    """The training recipe, the family to train with it, and what to evaluate and judge."""

    train: TrainConfig = field(default_factory=TrainConfig)
    widths: tuple[float, ...] = (1.0,)  # channel multipliers trained with the one recipe
    seeds: tuple[int, ...] = (0,)  # seeds per width
    tta: tuple[str, ...] = ("all",)  # modes evaluated on every backend
    latency_rounds: int = 5  # interleaved timing rounds per backend
    report: ReportConfig = field(default_factory=lambda: ReportConfig(runs=()))


@dataclass
class PipelineResult:
    """Where everything went."""

    report_dir: Path
    runs: list[Path]
    artifacts: dict[str, Path]
    skipped: list[str]
    seconds: float


def check_pipeline(cfg: PipelineConfig) -> None:
    """Every option checked before any work starts (a bad one costs a second, not a training run)."""
    from dawnpipe.common.tta import ALL_MODES
    from dawnpipe.costs.report import check_config

    check_config(cfg.report)
    unknown = [m for m in cfg.tta if m not in (*ALL_MODES, "all")]
    if unknown or not cfg.tta:
        raise DawnpipeError(f"unknown TTA mode(s) {unknown or '(none given)'}", f"use {', '.join(ALL_MODES)} or all")
    if not cfg.widths or any(not (0 < w <= 16) for w in cfg.widths):
        raise DawnpipeError(f"widths {list(cfg.widths)} must each lie in (0, 16]", "pass e.g. --widths 0.5,0.75,1.0")
    if not cfg.seeds or any(s < 0 for s in cfg.seeds):
        raise DawnpipeError(f"seeds {list(cfg.seeds)} must be non-negative", "pass e.g. --seeds 0,1")


def run_pipeline(cfg: PipelineConfig, say: Callable[[str], None] = print) -> PipelineResult:
    """Run all stages for every (width, seed); optional parts (fp16, TensorRT, GPU providers) are reported."""
    import torch

    from dawnpipe.costs.report import build_report
    from dawnpipe.export.api import build_engine_artifact, export_onnx_model, load_source, record
    from dawnpipe.export.config import Int8Spec
    from dawnpipe.export.onnx_export import onnxruntime_module
    from dawnpipe.export.tensorrt_build import tensorrt_status
    from dawnpipe.infer.evaluate import EvalConfig, evaluate
    from dawnpipe.infer.latency import Protocol
    from dawnpipe.train.trainer import train

    check_pipeline(cfg)
    ort = onnxruntime_module()
    started = time.perf_counter()
    stage = _Stages(say, started)
    base = cfg.train.name or time.strftime("%Y%m%d-%H%M%S")
    family = len(cfg.widths) * len(cfg.seeds) > 1
    _check_run_folders(cfg, base, family)
    on_gpu = torch.cuda.is_available()
    skipped: list[str] = []
    artifacts: dict[str, Path] = {}
    trt_reason = None
    try:
        tensorrt_status()
    except DawnpipeError as err:
        trt_reason = str(err)
    runs: list[Path] = []
    for width in cfg.widths:
        for seed in cfg.seeds:
            name = _run_name(base, width, seed, family)
            tag = f"{name}: " if family else ""
            run_cfg = replace(
                cfg.train,
                model=replace(cfg.train.model, width=width),
                seed=seed,
                name=name,
                eval_every=cfg.train.epochs,
            )
            stage("train", f"{tag}width {width:g}, seed {seed}, {run_cfg.epochs} epochs")
            trained = train(run_cfg, progress=True)
            m = trained.metrics
            stage(
                "train",
                f"{tag}EMA test accuracy {m['ema_test_acc']:.4f} (flip {m['ema_test_acc_flip']:.4f}), "
                f"{m['train_seconds']:.0f} s",
            )
            run = trained.run_dir
            runs.append(run)
            source = load_source(run)
            stage("export", f"{tag}fp32 and int8 ONNX" + (" and fp16 ONNX" if on_gpu else ""))
            written = [export_onnx_model(source, run, precision="fp32")]
            calibration = min(Int8Spec().calibration_images, int(source.payload["data"]["train_images"]))
            int8 = export_onnx_model(source, run, precision="int8", int8=Int8Spec(calibration_images=calibration))
            written.append(int8)
            if on_gpu:
                written.append(export_onnx_model(source, run, precision="fp16"))
            if on_gpu and trt_reason is None:
                written.append(build_engine_artifact(written[-1], run))
            record(
                run, source, written, {"precisions": [a.entry["precision"] for a in written if "precision" in a.entry]}
            )
            evals: list[tuple[str, Path, str]] = [
                ("torch", run, "auto"),
                ("onnxruntime", written[0].path, "cpu"),
                ("onnxruntime", int8.path, "cpu"),
            ]
            if on_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
                evals.append(("onnxruntime", written[2].path, "cuda"))
            if written[-1].entry.get("kind") == "tensorrt-engine":
                evals.append(("tensorrt", written[-1].path, "auto"))
            for backend, artifact, provider in evals:
                stage("eval", f"{tag}{backend} ({artifact.name}, provider {provider})")
                evaluate(
                    EvalConfig(
                        artifact=str(artifact),
                        data=cfg.train.data,
                        tta=cfg.tta,
                        backend=backend,
                        provider=provider,
                        test_limit=cfg.train.test_limit,
                        protocol=Protocol(rounds=cfg.latency_rounds),
                    ),
                    progress=lambda message, tag=tag: stage("eval", tag + message),
                )
    if not on_gpu:
        skipped.append("fp16 ONNX and onnxruntime CUDA: no GPU (CPU fp16 kernels are emulated, so they would mislead)")
    if trt_reason is not None:
        skipped.append(f"TensorRT engine: {trt_reason}")
    report_dir = runs[0] if not family else Path(cfg.train.out) / f"{base}-report"
    stage("costs", f"FLOPs, rule decisions, report and plots over {len(runs)} run(s)")
    report = replace(cfg.report, runs=tuple(str(r) for r in runs), out=str(report_dir))
    artifacts.update(build_report(report))
    for note in skipped:
        say(f"note: skipped {note}")
    return PipelineResult(report_dir, runs, artifacts, skipped, time.perf_counter() - started)


def _run_name(base: str, width: float, seed: int, family: bool) -> str:
    return f"{base}-w{width:g}-s{seed}" if family else base


def _check_run_folders(cfg: PipelineConfig, base: str, family: bool) -> None:
    """Every run folder the family will write is checked before the first training starts: a clash found at
    run 5 would otherwise cost four trainings."""
    from dawnpipe.common.run_folder import RunFolder, check_run_name

    check_run_name(base)
    for width in cfg.widths:
        for seed in cfg.seeds:
            folder = RunFolder(Path(cfg.train.out) / _run_name(base, width, seed, family))
            state = folder.state() if folder.path.is_dir() else "empty"
            if state != "empty" and not cfg.train.overwrite:
                raise DawnpipeError(
                    f"{folder.path} already holds a {state} run; nothing was trained",
                    "pick another --name, or pass --overwrite to replace it",
                )


class _Stages:
    """Numbered stage lines with elapsed time: the pipeline's progress display between the training bars."""

    order = ("train", "export", "eval", "costs")

    def __init__(self, say: Callable[[str], None], started: float) -> None:
        self.say, self.started = say, started

    def __call__(self, name: str, message: str) -> None:
        index = self.order.index(name) + 1
        self.say(f"[{index}/{len(self.order)} {name} {time.perf_counter() - self.started:6.0f}s] {message}")


__all__ = ["PipelineConfig", "PipelineResult", "run_pipeline", "check_pipeline"]

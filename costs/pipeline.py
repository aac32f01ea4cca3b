"""pipeline(): train, export, evaluate every TTA mode on every available backend, and write the cost report.

One command, one progress display: the trainer's bar, then a line per stage. Backends: PyTorch (the
checkpoint) and onnxruntime (fp32 ONNX) everywhere; on a GPU also onnxruntime's CUDA provider with the fp16
ONNX and, where TensorRT is installed, the native TensorRT engine. What is skipped is said, with why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.train.config import TrainConfig


@dataclass(frozen=True)
class PipelineConfig:
    """The training recipe plus what to evaluate and judge."""

    train: TrainConfig = field(default_factory=TrainConfig)
    tta: tuple[str, ...] = ("all",)  # modes evaluated on every backend
    latency_iters: int = 30  # timed batch-1 calls per mode and backend
    rules: tuple[str, ...] = ("no-tta", "dawnbench", "total-flops")
    budget_gflops: float | None = None  # total-flops budget; None = one ResNet-18 pass
    budget_ms: float | None = None  # adds the latency rule when set


@dataclass
class PipelineResult:
    """Where everything went."""

    run_dir: Path
    artifacts: dict[str, Path]
    skipped: list[str]
    seconds: float


def run_pipeline(cfg: PipelineConfig, say: Callable[[str], None] = print) -> PipelineResult:
    """Run all stages; a skipped optional part (TensorRT, GPU providers) is reported, not fatal."""
    import onnxruntime as ort
    import torch

    from dawnpipe.costs.report import build_report
    from dawnpipe.costs.rules import make_rules
    from dawnpipe.export.api import ExportConfig, export
    from dawnpipe.export.tensorrt_build import tensorrt_status
    from dawnpipe.infer.evaluate import EvalConfig, evaluate
    from dawnpipe.train.trainer import train

    make_rules(cfg.rules, budget_gflops=cfg.budget_gflops, budget_ms=cfg.budget_ms, reference_gflops=1.0)  # validate
    started = time.perf_counter()
    stage = _Stages(say, started)
    stage("train", "Myrtle ResNet-9 recipe")
    trained = train(replace(cfg.train, eval_every=cfg.train.epochs), progress=True)
    run = trained.run_dir
    artifacts: dict[str, Path] = {"checkpoint": trained.checkpoint}
    skipped: list[str] = []
    m = trained.metrics
    stage(
        "train",
        f"EMA test accuracy {m['ema_test_acc']:.4f} (flip TTA {m['ema_test_acc_flip']:.4f}), "
        f"{m['train_seconds']:.0f} s",
    )

    on_gpu = torch.cuda.is_available()
    stage("export", "fp32 ONNX" + (" and fp16 ONNX" if on_gpu else ""))
    artifacts["onnx_fp32"] = export(ExportConfig(source=str(run))).onnx
    if on_gpu:
        artifacts["onnx_fp16"] = export(ExportConfig(source=str(run), precision="fp16")).onnx
    else:
        skipped.append("fp16 ONNX: no GPU (onnxruntime's CPU fp16 kernels are emulated, so it would only mislead)")
    try:
        tensorrt_status()
        result = export(ExportConfig(source=str(run), precision="fp16", trt=True))
        artifacts["engine"] = result.engine  # type: ignore[assignment]
    except DawnpipeError as err:
        skipped.append(f"TensorRT engine: {err}")
        stage("export", f"skipped TensorRT: {err}")

    providers = ort.get_available_providers()
    runs: list[tuple[str, Path, str]] = [("torch", run, "auto"), ("onnxruntime", artifacts["onnx_fp32"], "cpu")]
    if "CUDAExecutionProvider" in providers and "onnx_fp16" in artifacts:
        runs.append(("onnxruntime", artifacts["onnx_fp16"], "cuda"))
    else:
        skipped.append(f"onnxruntime CUDA provider: not installed (available: {', '.join(providers)})")
    if "engine" in artifacts:
        runs.append(("tensorrt", artifacts["engine"], "auto"))
    for backend, artifact, provider in runs:
        stage("eval", f"{backend} ({artifact.name}, provider {provider})")
        evaluate(
            EvalConfig(
                artifact=str(artifact),
                data=cfg.train.data,
                tta=cfg.tta,
                backend=backend,
                provider=provider,
                test_limit=cfg.train.test_limit,
                latency_iters=cfg.latency_iters,
            ),
            progress=lambda message: stage("eval", message),
        )
    artifacts["eval"] = run / "eval.json"
    stage("costs", "FLOPs, rule verdicts, report and plots")
    artifacts.update(build_report(run, cfg.rules, budget_gflops=cfg.budget_gflops, budget_ms=cfg.budget_ms))
    for note in skipped:
        say(f"note: skipped {note}")
    return PipelineResult(run, artifacts, skipped, time.perf_counter() - started)


class _Stages:
    """Numbered stage lines with elapsed time: the pipeline's progress display after the training bar."""

    order = ("train", "export", "eval", "costs")

    def __init__(self, say: Callable[[str], None], started: float) -> None:
        self.say, self.started = say, started

    def __call__(self, name: str, message: str) -> None:
        index = self.order.index(name) + 1
        self.say(f"[{index}/{len(self.order)} {name} {time.perf_counter() - self.started:6.0f}s] {message}")

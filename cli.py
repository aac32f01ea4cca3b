"""dawnpipe command line: thin click commands over the importable API.

Each command parses options, builds a config, calls one API function and prints where the result went.
Expected failures arrive as DawnpipeError and are printed as one line (exit 1), never as a traceback.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import click

from dawnpipe.common.errors import DawnpipeError


class _Group(click.Group):
    """A click group that turns DawnpipeError into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DawnpipeError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="dawnpipe", prog_name="dawnpipe")
def main() -> None:
    """dawnpipe: train a fast CIFAR-10 ResNet-9, export it, evaluate it with and without TTA, count its cost."""


class _Finite(click.FloatRange):
    """A float range that also refuses nan and inf (click's FloatRange lets nan through every comparison)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _default(name: str, config=None):
    """The dataclass default of a field: every default lives in its config dataclass, shown here by --help."""
    from dawnpipe.train.config import TrainConfig

    return (config or TrainConfig).__dataclass_fields__[name].default


def _train_options(command):
    """The training options, shared by `train` and `pipeline`; defaults come from TrainConfig/ModelConfig."""
    from dawnpipe.train.config import ModelConfig

    options = [
        click.option(
            "--data",
            type=click.Path(path_type=Path),
            default=None,
            help="CIFAR-10: cifar-10-python.tar.gz, cifar-10-batches-py/, or an image folder "
            "(train/<class>/*, test/<class>/*) or its .tar/.tar.gz. Default: the official archive, "
            "downloaded to the cache folder ($DAWNPIPE_CACHE or ~/.cache/dawnpipe).",
        ),
        click.option(
            "--epochs",
            type=click.IntRange(1, 10_000),
            default=_default("epochs"),
            show_default=True,
            help="Passes over the training set.",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(1, 1 << 20),
            default=_default("batch_size"),
            show_default=True,
            help="Images per step (global).",
        ),
        click.option(
            "--lr",
            type=_Finite(min=0, min_open=True, max=1e6),
            default=_default("lr_peak"),
            show_default=True,
            help="Peak learning rate of the one-cycle schedule (mean-loss units; Myrtle's value).",
        ),
        click.option(
            "--width",
            type=_Finite(min=0, min_open=True, max=16),
            default=_default("width", ModelConfig),
            show_default=True,
            help="Channel multiplier on 64/128/256/512 (0.125 trains a tiny model fast).",
        ),
        click.option(
            "--cutout",
            type=click.IntRange(min=0, max=32),
            default=_default("cutout"),
            show_default=True,
            help="Side in pixels of a random zeroed square per training image; 0 turns cutout off.",
        ),
        click.option(
            "--train-limit",
            type=click.IntRange(min=1),
            default=None,
            help="Use only N training images (class-balanced).",
        ),
        click.option(
            "--test-limit",
            type=click.IntRange(min=1),
            default=None,
            help="Evaluate on only N test images (class-balanced).",
        ),
        click.option(
            "--holdout",
            type=click.IntRange(min=0),
            default=None,
            help="Training images held out (class-balanced) to calibrate selective TTA's confidence threshold; "
            "default 1000, or a tenth of a smaller training set; 0 = none.",
        ),
        click.option(
            "--selective-target",
            type=_Finite(0, 1),
            default=_default("selective_target"),
            show_default=True,
            help="Fraction of the hold-out whose plain-view confidence falls below the calibrated threshold.",
        ),
        click.option(
            "--seed",
            type=click.IntRange(0, 2**31 - 1),
            default=_default("seed"),
            show_default=True,
            help="Seed for init, order and augmentation; repeats a run.",
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default=_default("device"),
            show_default=True,
            help="auto: CUDA if present (fp16), else CPU (bf16 where the CPU has it, else fp32).",
        ),
        click.option(
            "--out",
            type=click.Path(path_type=Path),
            default=Path(_default("out")),
            show_default=True,
            help="Parent folder of run folders.",
        ),
        click.option("--name", default=None, help="Run folder name (default: time and seed)."),
        click.option(
            "--eval-every",
            type=click.IntRange(min=1),
            default=_default("eval_every"),
            show_default=True,
            help="Epochs between EMA test evaluations shown in the progress bar.",
        ),
        click.option(
            "--resume",
            type=click.Path(path_type=Path),
            default=None,
            help="Continue an interrupted run folder from its checkpoint (other options come from the checkpoint).",
        ),
        click.option("--sync-bn", is_flag=True, help="Under torchrun: synchronise BatchNorm statistics across ranks."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@_train_options
def train(**opts) -> None:
    """Train ResNet-9 with Myrtle.ai's 10-epoch recipe and write runs/<name>/checkpoint.pt + manifest.json."""
    from dawnpipe.train.api import train_command

    result = train_command(**opts)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 speaks
    click.echo(f"checkpoint: {result.checkpoint}")
    click.echo(f"manifest:   {result.run_dir / 'manifest.json'}")
    if "ema_test_acc" in result.metrics:
        m = result.metrics
        click.echo(
            f"EMA test accuracy {m['ema_test_acc']:.4f} (flip TTA {m['ema_test_acc_flip']:.4f}) on "
            f"{m['test_images']} images; {m['train_seconds']:.1f} s training, "
            f"{m['train_images_per_s']:.0f} images/s"
        )


_TTA_CHOICES = ["none", "flip", "translate", "flip-translate"]


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--tta",
    default="none",
    show_default=True,
    help="TTA views baked into the graph: none, flip, translate or flip-translate.",
)
@click.option("--shift", type=click.IntRange(1, 8), default=1, show_default=True, help="Pixels of the translate views.")
@click.option("--precision", default="fp32", show_default=True, help="fp32, or fp16 (weights and compute).")
@click.option(
    "--weights",
    type=click.Choice(["ema", "raw"]),
    default="ema",
    show_default=True,
    help="Which weights of the checkpoint to export.",
)
@click.option("--trt", is_flag=True, help="Also build a TensorRT engine (needs TensorRT and an NVIDIA GPU).")
@click.option(
    "--trt-opt-batch",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Batch size the engine is tuned for.",
)
@click.option(
    "--trt-max-batch",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Largest batch the engine accepts (smallest is 1).",
)
@click.option("--triton", type=click.Path(path_type=Path), default=None, help="Write a Triton model repository here.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset to write.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default: the run folder).")
def export(
    source: Path,
    tta: str,
    shift: int,
    precision: str,
    weights: str,
    trt: bool,
    trt_opt_batch: int,
    trt_max_batch: int,
    triton: Path | None,
    opset: int,
    out: Path | None,
) -> None:
    """Export SOURCE (a run folder or checkpoint.pt) to a checked ONNX model, optionally a TensorRT engine."""
    from dawnpipe.export.api import ExportConfig
    from dawnpipe.export.api import export as run_export
    from dawnpipe.export.tensorrt_build import EngineSpec

    cfg = ExportConfig(
        source=str(source),
        tta=tta,
        shift=shift,
        precision=precision,
        weights=weights,
        trt=trt,
        engine=EngineSpec(opt_batch=min(trt_opt_batch, trt_max_batch), max_batch=trt_max_batch),
        triton=str(triton) if triton else None,
        opset=opset,
        out=str(out) if out else None,
    )
    result = run_export(cfg)
    for precision_name, check in result.checks.items():
        click.echo(
            f"{precision_name} check vs PyTorch: max |logit diff| {check['max_abs_diff']:.2e}, top-1 "
            f"agreement {check['top1_agreement']:.2%} on {check['images']} images"
        )
    click.echo(f"onnx:     {result.onnx}")
    if result.engine:
        click.echo(f"engine:   {result.engine}")
    for config in result.triton:
        click.echo(f"triton:   {config}")
    click.echo(f"manifest: {result.run_dir / 'manifest.json'} ({result.seconds:.1f} s)")


@main.command(name="eval")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="CIFAR-10 source (default: the data the run was trained on, from its manifest).",
)
@click.option(
    "--tta",
    default="none,flip",
    show_default=True,
    help="Comma-separated modes: none, flip, translate, flip-translate, or all.",
)
@click.option("--backend", default="auto", show_default=True, help="auto, torch, onnxruntime or tensorrt.")
@click.option("--provider", default="auto", show_default=True, help="onnxruntime provider: auto, cpu, cuda, tensorrt.")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True, help="Images per call.")
@click.option(
    "--test-limit", type=click.IntRange(min=1), default=None, help="Evaluate on N test images (class-balanced)."
)
@click.option(
    "--selective-fraction",
    type=float,
    default=0.2,
    show_default=True,
    help="Selective TTA: extra views for this least-confident fraction (rows named selective-MODE).",
)
@click.option(
    "--selective-threshold",
    type=float,
    default=None,
    help="Selective TTA by confidence instead: extra views below this top-1 probability.",
)
@click.option("--no-selective", is_flag=True, help="Skip the selective TTA rows.")
@click.option(
    "--latency-iters",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Timed batch-1 calls per mode (0 skips latency and throughput).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Folder for eval.json (default: run folder)."
)
def eval_command(
    artifact: Path,
    data: Path | None,
    tta: str,
    backend: str,
    provider: str,
    batch_size: int,
    test_limit: int | None,
    selective_fraction: float,
    selective_threshold: float | None,
    no_selective: bool,
    latency_iters: int,
    out: Path | None,
) -> None:
    """Evaluate ARTIFACT (run folder, checkpoint, .onnx or .engine) with and without TTA."""
    from dawnpipe.infer.evaluate import EvalConfig, evaluate
    from dawnpipe.infer.report_table import format_rows

    fraction = None if (no_selective or selective_threshold is not None) else selective_fraction
    threshold = None if no_selective else selective_threshold
    cfg = EvalConfig(
        artifact=str(artifact),
        data=str(data) if data else None,
        tta=tuple(m.strip() for m in tta.split(",") if m.strip()),
        backend=backend,
        provider=provider,
        batch_size=batch_size,
        test_limit=test_limit,
        selective_fraction=fraction,
        selective_threshold=threshold,
        latency_iters=latency_iters,
        out=str(out) if out else None,
    )
    rows, path = evaluate(cfg)
    click.echo(format_rows(rows))
    click.echo(f"results: {path}")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--tta", default="none", show_default=True, help="none, flip, translate or flip-translate.")
@click.option("--backend", default="auto", show_default=True, help="auto, torch, onnxruntime or tensorrt.")
@click.option("--top-k", type=int, default=1, show_default=True, help="Classes to print per image.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of lines.")
def predict(artifact: Path, images: tuple[Path, ...], tta: str, backend: str, top_k: int, as_json: bool) -> None:
    """Classify IMAGES (files or folders; any size or mode, converted to 32x32 RGB) with ARTIFACT."""
    import json
    import warnings

    from dawnpipe.infer.predict import CONVERSION, Predictor

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: click.echo(f"warning: {message}", err=True)
        with Predictor(artifact, tta=tta, backend=backend, top_k=top_k) as predictor:
            results = predictor.predict_files(list(images))
    if as_json:
        click.echo(json.dumps({"conversion": CONVERSION, "results": [r.to_dict() for r in results]}, indent=2))
        return
    for result in results:
        top = ", ".join(f"{name} {prob:.3f}" for name, prob in result.top)
        click.echo(f"{result.source}: {top}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--rule",
    "rules",
    multiple=True,
    help="Rule to judge by (repeatable): no-tta, dawnbench, total-flops, "
    "latency. Default: no-tta, dawnbench, total-flops (+ latency when --budget-ms is given).",
)
@click.option(
    "--budget-gflops",
    type=float,
    default=None,
    help="total-flops budget in GFLOPs per image (default: one ResNet-18 pass on 32x32, computed).",
)
@click.option("--budget-ms", type=float, default=None, help="latency budget: batch-1 p50 ms per image.")
def costs(run_dir: Path, rules: tuple[str, ...], budget_gflops: float | None, budget_ms: float | None) -> None:
    """Judge RUN_DIR's eval results under TTA rules; write report.md/.json/.csv and plots there."""
    from dawnpipe.costs.report import DEFAULT_RULES, build_report

    written = build_report(run_dir, rules or DEFAULT_RULES, budget_gflops=budget_gflops, budget_ms=budget_ms)
    for kind, path in written.items():
        click.echo(f"{kind + ':':<14}{path}")


@main.command()
@_train_options
@click.option(
    "--tta", "tta_modes", default="all", show_default=True, help="Comma-separated TTA modes to evaluate, or all."
)
@click.option(
    "--latency-iters",
    type=click.IntRange(min=0),
    default=30,
    show_default=True,
    help="Timed batch-1 calls per mode and backend.",
)
@click.option("--budget-gflops", type=float, default=None, help="total-flops budget (default: one ResNet-18 pass).")
@click.option("--budget-ms", type=float, default=None, help="Latency budget in ms per image (adds the latency rule).")
def pipeline(tta_modes: str, latency_iters: int, budget_gflops: float | None, budget_ms: float | None, **opts) -> None:
    """Train, export, evaluate every TTA mode on every available backend, and write the cost report."""
    from dawnpipe.costs.pipeline import PipelineConfig, run_pipeline
    from dawnpipe.train.api import config_from_options

    cfg = PipelineConfig(
        train=config_from_options(**opts),
        tta=tuple(m.strip() for m in tta_modes.split(",")),
        latency_iters=latency_iters,
        budget_gflops=budget_gflops,
        budget_ms=budget_ms,
    )
    result = run_pipeline(cfg, say=lambda line: click.echo(line, err=True))
    for kind, path in result.artifacts.items():
        click.echo(f"{kind + ':':<14}{path}")
    click.echo(f"pipeline finished in {result.seconds:.0f} s; report: {result.run_dir / 'report.md'}")


if __name__ == "__main__":
    sys.exit(main())

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
        except click.UsageError as err:  # bad option values: one line too (click's default prints three)
            where = err.ctx.command_path if err.ctx else "dawnpipe"
            message = " ".join(err.format_message().split())
            click.echo(f"error: {message}; see `{where} --help`", err=True)
            ctx.exit(2)


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


class _SelectiveTarget(click.ParamType):
    """``auto`` or a fraction strictly inside (0, 1) (train.calibration.check_selective_target decides)."""

    name = "auto|fraction"

    def convert(self, value, param, ctx):
        from dawnpipe.train.calibration import check_selective_target

        if not isinstance(value, str) or value.strip().lower() == "auto":
            candidate = "auto" if isinstance(value, str) else value
        else:
            try:
                candidate = float(value)
            except ValueError:
                candidate = value
        try:
            return check_selective_target(candidate)
        except DawnpipeError as err:
            self.fail(str(err), param, ctx)


def _default(name: str, config=None):
    """The dataclass default of a field: every default lives in its config dataclass, shown here by --help."""
    from dawnpipe.train.config import TrainConfig

    return (config or TrainConfig).__dataclass_fields__[name].default


def _configs():
    """The torch-free config dataclasses whose defaults the commands below show (export, engine, eval, report)."""
    from dawnpipe.costs.report import ReportConfig
    from dawnpipe.export.config import ExportConfig, Int8Spec
    from dawnpipe.export.tensorrt_build import EngineSpec
    from dawnpipe.infer.evaluate import EvalConfig
    from dawnpipe.infer.latency import Protocol

    return ExportConfig, EngineSpec, Int8Spec, EvalConfig, Protocol, ReportConfig


_EXPORT, _ENGINE, _INT8, _EVAL, _PROTOCOL, _REPORT = _configs()


def _runtimes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Backend and onnxruntime provider names, from infer.backends (torch-free at import)."""
    from dawnpipe.infer.backends import BACKENDS, PROVIDERS

    return BACKENDS, tuple(PROVIDERS)


_BACKENDS, _PROVIDERS = _runtimes()


def _pipeline_train_options(command):
    """`pipeline`'s training options: `train`'s, with --resume continuing a whole family instead of one run."""
    return _train_options(command, pipeline=True)


def _train_options(command, pipeline: bool = False):
    """The training options, shared by `train` and `pipeline`; defaults come from TrainConfig/ModelConfig."""
    from dawnpipe.train.config import ModelConfig
    from dawnpipe.train.presets import PRESETS

    options = [
        click.option(
            "--preset",
            type=click.Choice(tuple(PRESETS)),
            default=None,
            help="Named recipe: page (post 8 exactly; the default), quick (width 0.5, 3 epochs: a first look) or "
            "page-bn (page with BN momentum 0.4). "
            "Options given explicitly win over the preset's values.",
        ),
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
            type=_SelectiveTarget(),
            default=_default("selective_target"),
            show_default=True,
            help="Fraction of the hold-out, strictly between 0 and 1, whose plain-view confidence falls below the "
            "calibrated threshold; auto: per run, the smallest fraction that keeps 90% of full flip's hold-out gain "
            "(at most 0.5; the default fraction when that gain is under 10 images).",
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
            is_flag=True,
            help="Continue the family of this --name with the same options: finished trainings, exports and "
            "evaluations are reused after their sha256 and lineage are checked, an interrupted training resumes.",
        )
        if pipeline
        else click.option(
            "--resume",
            type=click.Path(path_type=Path),
            default=None,
            help="Continue an interrupted run folder from its checkpoint; options that would change training must "
            "match it (the selective target and --eval-every may change).",
        ),
        click.option(
            "--overwrite",
            is_flag=True,
            help="Replace a finished or interrupted run of the same --name: its folder's files are deleted first.",
        ),
        click.option(
            "--unofficial-batches",
            is_flag=True,
            help="Accept CIFAR pickle batches whose md5 is not the published one (a batch set you made); they are "
            "still decoded without running any code from the file.",
        ),
        click.option("--sync-bn", is_flag=True, help="Under torchrun: synchronise BatchNorm statistics across ranks."),
        click.option(
            "--compile", is_flag=True, help="torch.compile the training step (falls back to eager with a notice)."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@_train_options
def train(**opts) -> None:
    """Train ResNet-9 with Myrtle.ai's 10-epoch recipe and write runs/<name>/checkpoint.pt + manifest.json."""
    from dawnpipe.train.api import train_command

    result = train_command(explicit=_explicit(opts), **opts)
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


def _explicit(opts: dict) -> set[str]:
    """The options the user typed (not defaults): these win over a preset's values."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {name for name in opts if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}


class _ModeList(click.ParamType):
    """Comma-separated TTA modes (or ``all``), each checked, with the choices listed for --help and completion."""

    name = "modes"

    def __init__(self, choices: tuple[str, ...]) -> None:
        self.choices = choices

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        modes = tuple(m.strip() for m in str(value).split(",") if m.strip())
        if not modes:
            self.fail("no mode given", param, ctx)
        unknown = [m for m in modes if m not in (*self.choices, "all")]
        if unknown:
            self.fail(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(self.choices)} or all", param, ctx)
        return modes

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(c) for c in (*self.choices, "all") if c.startswith(incomplete)]


class _NumberList(click.ParamType):
    """Comma-separated numbers (widths, seeds), each checked against a range."""

    name = "list"

    def __init__(self, kind: type, low: float, high: float) -> None:
        self.kind, self.low, self.high = kind, low, high

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            items = tuple(self.kind(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.kind.__name__}s", param, ctx)
        bad = (
            [v for v in items if not (math.isfinite(v) and self.low < v <= self.high)]
            if self.kind is float
            else [v for v in items if not self.low <= v <= self.high]
        )
        if not items or bad:
            self.fail(f"{value!r}: each value must lie in ({self.low}, {self.high}]", param, ctx)
        if len(set(items)) != len(items):
            self.fail(f"{value!r} repeats a value", param, ctx)
        return items


class _NameList(click.ParamType):
    """Comma-separated names (checked by the API, which knows what is available on this machine)."""

    name = "names"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        names = tuple(n.strip() for n in str(value).split(",") if n.strip())
        if not names:
            self.fail("no name given", param, ctx)
        return names


def _trust_options(command):
    """The two explicit overrides of the artifact checks, shared by export, eval and predict."""
    options = [
        click.option(
            "--allow-foreign",
            is_flag=True,
            help="Use an artifact its folder's manifest does not list or recorded differently (marked unchecked).",
        ),
        click.option(
            "--allow-incomplete",
            is_flag=True,
            help="Use a model from a training run that was interrupted before its last epoch (marked as such).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _export_precisions() -> tuple[str, ...]:
    from dawnpipe.export.config import EXPORT_PRECISIONS

    return EXPORT_PRECISIONS


def _modes():
    from dawnpipe.common.tta import ALL_MODES, TTA_MODES

    return TTA_MODES, ALL_MODES


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--tta",
    type=click.Choice(_modes()[0]),
    default=_default("tta", _EXPORT),
    show_default=True,
    help="TTA views baked into the graph (selective TTA is applied at run time instead).",
)
@click.option(
    "--shift", type=click.IntRange(1, 8), default=_default("shift", _EXPORT), show_default=True, help="Translate px."
)
@click.option(
    "--precision",
    type=click.Choice(_export_precisions()),
    default=_default("precision", _EXPORT),
    show_default=True,
    help="fp32; fp16 weights and compute (for GPUs); int8 (static QDQ calibrated on training images, signed int8 "
    "with zero points 0: what TensorRT builds INT8 engines from); or int8-asym (uint8 activations, for onnxruntime "
    "on CPUs only). Input uint8, output float32.",
)
@click.option(
    "--no-fold-bn",
    "fold_bn",
    flag_value=False,
    default=True,
    help="Keep every BatchNorm as trained (default: folded into the convolution before it where exact).",
)
@click.option(
    "--calibration-images",
    type=click.IntRange(min=1),
    default=_default("calibration_images", _INT8),
    show_default=True,
    help="int8: class-balanced training images the activation ranges are set on (never test images).",
)
@click.option(
    "--calibration-method",
    type=click.Choice(["minmax", "percentile", "entropy"]),
    default=_default("calibration_method", _INT8),
    show_default=True,
    help="int8: how ranges are set from the calibration activations.",
)
@click.option(
    "--calibration-data",
    type=click.Path(path_type=Path),
    default=None,
    help="int8: CIFAR-10 copy to calibrate on (default: the data the checkpoint was trained on).",
)
@click.option("--force", is_flag=True, help="Replace a different model of the same name in the --triton repository.")
@click.option(
    "--weights",
    type=click.Choice(["ema", "raw"]),
    default=_default("weights", _EXPORT),
    show_default=True,
    help="Which weights of the checkpoint to export.",
)
@click.option("--trt", is_flag=True, help="Also build a TensorRT engine (needs TensorRT and an NVIDIA GPU).")
@click.option(
    "--trt-opt-batch",
    type=click.IntRange(min=1),
    default=_default("opt_batch", _ENGINE),
    show_default=True,
    help="Batch the engine is tuned for.",
)
@click.option(
    "--trt-max-batch",
    type=click.IntRange(min=1),
    default=_default("max_batch", _ENGINE),
    show_default=True,
    help="Largest batch the engine takes.",
)
@click.option("--triton", type=click.Path(path_type=Path), default=None, help="Write a Triton model repository here.")
@click.option("--opset", type=int, default=_default("opset", _EXPORT), show_default=True, help="ONNX opset to write.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for the artifacts and the manifest that lists them (default: the run folder).",
)
@_trust_options
def export(
    source: Path,
    trt_opt_batch: int,
    trt_max_batch: int,
    triton: Path | None,
    out: Path | None,
    calibration_images: int,
    calibration_method: str,
    calibration_data: Path | None,
    **opts,
) -> None:
    """Export SOURCE (a run folder or checkpoint.pt) to a checked ONNX model, optionally a TensorRT engine."""
    from dawnpipe.export.api import ExportConfig
    from dawnpipe.export.api import export as run_export
    from dawnpipe.export.config import Int8Spec
    from dawnpipe.export.tensorrt_build import EngineSpec

    cfg = ExportConfig(
        source=str(source),
        engine=EngineSpec(opt_batch=min(trt_opt_batch, trt_max_batch), max_batch=trt_max_batch),
        int8=Int8Spec(
            calibration_images=calibration_images,
            calibration_method=calibration_method,
            calibration_data=str(calibration_data) if calibration_data else None,
        ),
        triton=str(triton) if triton else None,
        out=str(out) if out else None,
        **opts,
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
    for note in result.notes:
        click.echo(f"notice: {note}", err=True)
    click.echo(f"manifest: {result.out_dir / 'manifest.json'} ({result.seconds:.1f} s)")


@main.command(name="check-trt")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
def check_trt(models: tuple[Path, ...]) -> None:
    """Hold ONNX files to TensorRT 10's ONNX rules (operators, opset, Q/DQ, uint8), statically, no GPU needed."""
    from dawnpipe.export.trt_rules import require_tensorrt

    failed = []
    for model in models:
        try:
            result = require_tensorrt(model)
        except DawnpipeError as err:
            if len(models) == 1:
                raise
            failed.append(model)
            click.echo(f"error: {err}", err=True)
            continue
        click.echo(
            f"{model}: passes TensorRT 10's ONNX rules ({result['nodes']} nodes; TensorRT parser: {result['parser']})"
        )
    if failed:
        raise DawnpipeError(f"{len(failed)} of {len(models)} file(s) break TensorRT's rules", "see the lines above")


@main.command(name="eval")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="CIFAR-10 source (default: the data the artifact says it was trained on).",
)
@click.option(
    "--tta",
    type=_ModeList(_modes()[1]),
    default=",".join(_default("tta", _EVAL)),
    show_default=True,
    help=f"Comma-separated modes from {', '.join(_modes()[1])}, or all. selective-MODE: extra views only for "
    "images whose plain-view confidence is below the artifact's calibrated threshold.",
)
@click.option(
    "--backend",
    type=click.Choice(_BACKENDS),
    default="auto",
    show_default=True,
    help="Runtime (auto: from the artifact's kind).",
)
@click.option(
    "--provider",
    type=click.Choice(["auto", *_PROVIDERS]),
    default="auto",
    show_default=True,
    help="onnxruntime execution provider.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=_default("threads", _EVAL),
    show_default=True,
    help="CPU threads (0 = all cores).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=_default("batch_size", _EVAL),
    show_default=True,
    help="Images per call.",
)
@click.option("--test-limit", type=click.IntRange(min=1), default=None, help="Evaluate on N test images (balanced).")
@click.option(
    "--selective-threshold",
    type=_Finite(0, 1),
    default=None,
    help="Override the artifact's calibrated per-image confidence threshold for the selective modes.",
)
@click.option("--no-latency", is_flag=True, help="Skip latency and throughput.")
@click.option(
    "--latency-rounds",
    type=click.IntRange(1, 100),
    default=_default("rounds", _PROTOCOL),
    show_default=True,
    help="Interleaved timing rounds.",
)
@click.option(
    "--latency-calls",
    type=click.IntRange(1, 10_000),
    default=_default("calls", _PROTOCOL),
    show_default=True,
    help="Calls per row per round.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Folder for eval.json (default: the artifact's)."
)
@_trust_options
def eval_command(
    artifact: Path,
    data: Path | None,
    tta: tuple[str, ...],
    no_latency: bool,
    latency_rounds: int,
    latency_calls: int,
    out: Path | None,
    **opts,
) -> None:
    """Evaluate ARTIFACT (run folder, checkpoint, .onnx or .engine) with and without TTA."""
    from dawnpipe.infer.evaluate import EvalConfig, evaluate
    from dawnpipe.infer.latency import Protocol
    from dawnpipe.infer.report_table import format_rows

    cfg = EvalConfig(
        artifact=str(artifact),
        data=str(data) if data else None,
        tta=tta,
        latency=not no_latency,
        protocol=Protocol(rounds=latency_rounds, calls=latency_calls),
        out=str(out) if out else None,
        **opts,
    )
    rows, path = evaluate(cfg, progress=lambda message: click.echo(message, err=True))
    click.echo(format_rows(rows))
    click.echo(f"results: {path}")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--tta", type=click.Choice(_modes()[1]), default="none", show_default=True, help="TTA mode.")
@click.option(
    "--backend",
    type=click.Choice(_BACKENDS),
    default="auto",
    show_default=True,
    help="Runtime (auto: from the artifact's kind).",
)
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True, help="Classes to print per image.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of lines.")
@_trust_options
def predict(
    artifact: Path, images: tuple[Path, ...], tta: str, backend: str, top_k: int, as_json: bool, **trust
) -> None:
    """Classify IMAGES (files or folders; any size or mode, converted to 32x32 RGB) with ARTIFACT."""
    import json
    import warnings

    from dawnpipe.infer.predict import CONVERSION, Predictor

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: click.echo(f"warning: {message}", err=True)
        with Predictor(artifact, tta=tta, backend=backend, top_k=top_k, **trust) as predictor:
            results = predictor.predict_files(list(images))
    if as_json:
        click.echo(json.dumps({"conversion": CONVERSION, "results": [r.to_dict() for r in results]}, indent=2))
        return
    for result in results:
        top = ", ".join(f"{name} {prob:.3f}" for name, prob in result.top)
        click.echo(f"{result.source}: {top}")


def _serve_config():
    from dawnpipe.infer.server import ServeConfig

    return ServeConfig


_SERVE = _serve_config()


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--host", default=_default("host", _SERVE), show_default=True, help="Interface to listen on.")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=_default("port", _SERVE), show_default=True, help="TCP port."
)
@click.option(
    "--tta",
    type=click.Choice(_modes()[1]),
    default=_default("tta", _SERVE),
    show_default=True,
    help="TTA mode per image (selective modes use the artifact's calibrated threshold).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 4096),
    default=_default("max_batch", _SERVE),
    show_default=True,
    help="Images per model call (dynamic batching across concurrent requests).",
)
@click.option(
    "--max-wait-ms",
    type=_Finite(0, 1000),
    default=_default("max_wait_ms", _SERVE),
    show_default=True,
    help="How long a batch's first request waits for others, ms.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=_default("threads", _SERVE),
    show_default=True,
    help="Backend CPU threads (0 = all cores).",
)
def serve(artifact: Path, **opts) -> None:
    """Serve ARTIFACT over HTTP: POST /v1/predict (image bytes or multipart), GET /healthz, GET /metrics."""
    from dawnpipe.infer.server import ServeConfig
    from dawnpipe.infer.server import serve as run_server

    cfg = ServeConfig(artifact=str(artifact), **opts)
    run_server(cfg, say=lambda line: click.echo(line, err=True))
    click.echo("server stopped; every in-flight request was answered", err=True)


def _rule_options(command):
    """Options that set the rules, shared by `costs` and `pipeline`; defaults come from ReportConfig."""
    from dawnpipe.costs.rules import RULE_NAMES

    options = [
        click.option(
            "--rule",
            "rules",
            type=click.Choice(RULE_NAMES),
            multiple=True,
            help="Rule to judge by (repeatable). Default: no-tta, dawnbench, total-flops (+ latency with --budget-ms).",
        ),
        click.option(
            "--budget-gflops",
            type=_Finite(min=0, min_open=True, max=1e6),
            default=None,
            help="total-flops budget, GFLOPs per image (default: one ResNet-18 pass on 32x32, computed).",
        ),
        click.option(
            "--budget-ms",
            type=_Finite(min=0, min_open=True, max=1e6),
            default=None,
            help="latency rule budget: batch-1 mean ms per image.",
        ),
        click.option(
            "--accuracy-threshold",
            type=_Finite(0, 100),
            default=_default("accuracy_threshold", _REPORT),
            show_default=True,
            help="dawnbench rule: accuracy (%) a configuration must reach before its latency counts.",
        ),
        click.option(
            "--threshold-note",
            default=None,
            help="Why the dawnbench bar is where it is, written into the report (e.g. the published 94% recipe's "
            "accuracy on this copy of the data).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@_rule_options
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Report folder (default: the run folder for one run; required for several).",
)
def costs(run_dirs: tuple[Path, ...], out: Path | None, **opts) -> None:
    """Judge the eval results of RUN_DIRS (one run, or a family: widths x seeds) under TTA rules.

    Writes report.md (opening with the verdict table), report.json, report.csv and plots.
    """
    from dawnpipe.costs.report import ReportConfig, build_report

    cfg = ReportConfig(runs=tuple(str(r) for r in run_dirs), out=str(out) if out else None, **_rule_config(opts))
    written = build_report(cfg)
    for kind, path in written.items():
        click.echo(f"{kind + ':':<14}{path}")


def _rule_config(opts: dict) -> dict:
    rules = opts.pop("rules") or ()
    return {"rules": tuple(rules), **opts} if rules else opts


@main.command()
@_pipeline_train_options
@click.option(
    "--backends",
    type=_NameList(),
    default="auto",
    show_default=True,
    help="Comma-separated backends to evaluate: torch, torch-graphs, onnxruntime, onnxruntime-int8, "
    "onnxruntime-int8-asym, onnxruntime-cuda, tensorrt, or auto (the machine's default set; the others are "
    "recorded as skipped with the reason).",
)
@click.option(
    "--widths",
    type=_NumberList(float, 0.0, 16.0),
    default=None,
    help="Train a width family with one recipe, e.g. 0.5,0.75,1.0 (default: --width alone).",
)
@click.option(
    "--seeds",
    type=_NumberList(int, 0, 2**31 - 1),
    default=None,
    help="Seeds per width, e.g. 0,1 (default: --seed alone).",
)
@click.option(
    "--tta",
    "tta_modes",
    type=_ModeList(_modes()[1]),
    default="all",
    show_default=True,
    help=f"Comma-separated modes to evaluate, from {', '.join(_modes()[1])}, or all.",
)
@click.option(
    "--latency-rounds",
    type=click.IntRange(1, 100),
    default=_default("rounds", _PROTOCOL),
    show_default=True,
    help="Interleaved timing rounds.",
)
@_rule_options
def pipeline(
    widths,
    seeds,
    tta_modes,
    latency_rounds,
    backends,
    resume,
    rules,
    budget_gflops,
    budget_ms,
    accuracy_threshold,
    threshold_note,
    **opts,
):
    """Train (a family), export, evaluate every TTA mode on the chosen backends, and write the cost report."""
    from dawnpipe.costs.pipeline import PipelineConfig, run_pipeline
    from dawnpipe.costs.report import ReportConfig
    from dawnpipe.train.api import config_from_options

    train_cfg = config_from_options(explicit=_explicit(opts), **opts)
    cfg = PipelineConfig(
        train=train_cfg,
        widths=widths or (train_cfg.model.width,),
        seeds=seeds or (train_cfg.seed,),
        tta=tta_modes,
        latency_rounds=latency_rounds,
        backends=backends,
        resume=resume,
        report=ReportConfig(
            runs=(),
            **_rule_config(
                {
                    "rules": rules,
                    "budget_gflops": budget_gflops,
                    "budget_ms": budget_ms,
                    "accuracy_threshold": accuracy_threshold,
                    "threshold_note": threshold_note,
                }
            ),
        ),
    )
    result = run_pipeline(cfg, say=lambda line: click.echo(line, err=True))
    if result.reused:
        click.echo(f"reused (checked): {len(result.reused)} piece(s): {', '.join(result.reused)}", err=True)
    for kind, path in result.artifacts.items():
        click.echo(f"{kind + ':':<14}{path}")
    click.echo(f"pipeline finished in {result.seconds:.0f} s; report: {result.report_dir / 'report.md'}")


if __name__ == "__main__":
    sys.exit(main())

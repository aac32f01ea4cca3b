"""dawnpipe command line: thin click commands over the importable API.

Each command parses its options, builds a config, calls one API function and prints where the result went. Every
option is declared once (the shared groups below are applied by decorator) and takes its default from the config
dataclass that holds it, so a default lives in one place. Expected failures arrive as DawnpipeError and are
printed as one line (exit 1), never as a traceback. Nothing here imports torch: ``--help`` stays instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from dawnpipe.common.cli_types import (
    CommaList,
    Finite,
    OneLineErrors,
    default,
    explicit_options,
    options,
    typed_command,
)
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.precision import PRECISIONS
from dawnpipe.common.tta import ALL_MODES, TTA_MODES
from dawnpipe.costs.pipeline import MAX_WIDTH, PipelineConfig
from dawnpipe.costs.report import ReportConfig
from dawnpipe.costs.rules import RULE_NAMES
from dawnpipe.costs.targets import TARGETS
from dawnpipe.export.adapter import INPUT_RANGES, LAYOUTS, ForeignContract
from dawnpipe.export.config import EXPORT_PRECISIONS, ExportConfig, Int8Spec
from dawnpipe.export.entrant import ImportConfig
from dawnpipe.export.tensorrt_build import EngineSpec
from dawnpipe.infer.backends import BACKENDS, PROVIDERS
from dawnpipe.infer.evaluate import EvalConfig
from dawnpipe.infer.latency import Protocol
from dawnpipe.infer.server import ServeConfig
from dawnpipe.train.config import ModelConfig, TrainConfig
from dawnpipe.train.presets import PRESETS

_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110, "show_default": True}


@click.group(cls=OneLineErrors, context_settings=_SETTINGS)
@click.version_option(package_name="dawnpipe", prog_name="dawnpipe")
def main() -> None:
    """dawnpipe: train a fast CIFAR-10 ResNet-9, export it, evaluate it with and without TTA, count its cost."""


# ---------------------------------------------------------------------------------------------- parameter types


class _SelectiveTarget(click.ParamType):
    """``auto`` or a fraction strictly inside (0, 1) (train.calibration.check_selective_target decides)."""

    name = "auto|fraction"

    def convert(self, value, param, ctx):
        from dawnpipe.train.calibration import check_selective_target

        candidate = value
        if isinstance(value, str):
            try:
                candidate = "auto" if value.strip().lower() == "auto" else float(value)
            except ValueError:
                candidate = value
        try:
            return check_selective_target(candidate)
        except DawnpipeError as err:
            self.fail(str(err), param, ctx)


_PATH = click.Path(path_type=Path)
_MODES = CommaList("modes", ALL_MODES, allow_all=True)
_BACKEND_NAMES = ", ".join(TARGETS)

# ---------------------------------------------------------------------------------------------- options, each once
# fmt: off
_TRAINING = (
    click.option("--preset", type=click.Choice(tuple(PRESETS)), default=None,
                 help="Named recipe: page (post 8 exactly; the default), quick (width 0.5, 3 epochs: a first look) or "
                 "page-bn (page with BN momentum 0.4). Options given explicitly win over the preset's values."),
    click.option("--data", type=_PATH, default=None,
                 help="CIFAR-10: cifar-10-python.tar.gz, cifar-10-batches-py/, or an image folder (train/<class>/*, "
                 "test/<class>/*) or its .tar/.tar.gz. Default: the official archive, downloaded to the cache folder "
                 "($DAWNPIPE_CACHE or ~/.cache/dawnpipe)."),
    click.option("--epochs", type=click.IntRange(1, 10_000), default=default(TrainConfig, "epochs"),
                 help="Passes over the training set."),
    click.option("--batch-size", type=click.IntRange(1, 1 << 20), default=default(TrainConfig, "batch_size"),
                 help="Images per step (global)."),
    click.option("--lr", type=Finite(min=0, min_open=True, max=1e6), default=default(TrainConfig, "lr_peak"),
                 help="Peak learning rate of the one-cycle schedule (mean-loss units; Myrtle's value)."),
    click.option("--width", type=Finite(min=0, min_open=True, max=16), default=default(ModelConfig, "width"),
                 help="Channel multiplier on 64/128/256/512 (0.125 trains a tiny model fast)."),
    click.option("--cutout", type=click.IntRange(0, 32), default=default(TrainConfig, "cutout"),
                 help="Side in pixels of a random zeroed square per training image; 0 turns cutout off."),
    click.option("--train-limit", type=click.IntRange(min=1), default=None,
                 help="Use only N training images (class-balanced)."),
    click.option("--test-limit", type=click.IntRange(min=1), default=None,
                 help="Evaluate on only N test images (class-balanced)."),
    click.option("--holdout", type=click.IntRange(min=0), default=None,
                 help="Training images held out (class-balanced) to calibrate selective TTA's confidence threshold; "
                 "default 1000, or a tenth of a smaller training set; 0 = none."),
    click.option("--selective-target", type=_SelectiveTarget(), default=default(TrainConfig, "selective_target"),
                 help="Fraction of the hold-out, strictly between 0 and 1, whose plain-view confidence falls below the "
                 "calibrated threshold; auto: per run, the smallest fraction that keeps 90% of full flip's hold-out "
                 "gain (at most 0.5; the default fraction when that gain is under 10 images)."),
    click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=default(TrainConfig, "seed"),
                 help="Seed for init, order and augmentation; repeats a run."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=default(TrainConfig, "device"),
                 help="auto: CUDA if present, else CPU."),
    click.option("--precision", type=click.Choice(PRECISIONS), default=default(TrainConfig, "precision"),
                 help="Compute precision of the training step (autocast; weights and optimizer stay fp32). auto: fp16 "
                 "on CUDA; on a CPU bf16 where it is native (AVX-512 BF16 or AMX), else fp32. fp16 is refused on a "
                 "CPU; bf16 on a CPU without it is emulated (slow)."),
    click.option("--out", type=_PATH, default=Path(default(TrainConfig, "out")), help="Parent folder of run folders."),
    click.option("--name", default=None, help="Run folder name (default: time and seed)."),
    click.option("--eval-every", type=click.IntRange(min=1), default=default(TrainConfig, "eval_every"),
                 help="Epochs between EMA test evaluations shown in the progress bar."),
)
_RUN_SWITCHES = (
    click.option("--overwrite", is_flag=True,
                 help="Replace a finished or interrupted run of the same --name: its folder's files are deleted "
                 "first."),
    click.option("--unofficial-batches", is_flag=True,
                 help="Accept CIFAR pickle batches whose md5 is not the published one (a batch set you made); they "
                 "are still decoded without running any code from the file."),
    click.option("--sync-bn", is_flag=True, help="Under torchrun: synchronise BatchNorm statistics across ranks."),
    click.option("--compile", is_flag=True,
                 help="torch.compile the training step (falls back to eager with a notice)."),
    click.option("--cuda-graph/--no-cuda-graph", default=default(TrainConfig, "cuda_graph"),
                 help="On CUDA (eager, one process): capture the whole training step as a CUDA graph and replay it "
                 "(falls back to eager with a notice). Ignored on a CPU."),
)
_TRUST = (
    click.option("--allow-foreign", is_flag=True,
                 help="Use an artifact its folder's manifest does not list or recorded differently (marked "
                 "unchecked)."),
    click.option("--allow-incomplete", is_flag=True,
                 help="Use a model from a training run that was interrupted before its last epoch (marked as such)."),
)
_RULES = (
    click.option("--rule", "rules", type=click.Choice(RULE_NAMES), multiple=True, show_default=False,
                 help="Rule to judge by (repeatable). Default: no-tta, dawnbench, total-flops (+ latency with "
                 "--budget-ms)."),
    click.option("--budget-gflops", type=Finite(min=0, min_open=True, max=1e6), default=None,
                 help="total-flops budget, GFLOPs per image (default: one ResNet-18 pass on 32x32, computed)."),
    click.option("--budget-ms", type=Finite(min=0, min_open=True, max=1e6), default=None,
                 help="latency rule budget: batch-1 mean ms per image."),
    click.option("--accuracy-threshold", type=Finite(0, 100), default=default(ReportConfig, "accuracy_threshold"),
                 help="dawnbench rule: accuracy (%) a configuration must reach before its latency counts."),
    click.option("--threshold-note", default=None,
                 help="Why the dawnbench bar is where it is, written into the report (e.g. the published 94% recipe's "
                 "accuracy on this copy of the data)."),
)
_ROUNDS = click.option("--latency-rounds", type=click.IntRange(1, 100), default=default(Protocol, "rounds"),
                       help="Interleaved timing rounds (the unit of every latency interval; fewer than 3 are measured "
                       "but give no interval, and each row says so).")
_CALLS = click.option("--latency-calls", type=click.IntRange(1, 10_000), default=default(Protocol, "calls"),
                      help="Calls per row per round.")
_THROUGHPUT = click.option("--throughput-batch", type=click.IntRange(1, 65_536),
                           default=default(EvalConfig, "throughput_batch"),
                           help="Images per call for the throughput figure (test images cycled to fill it).")
_BACKEND = click.option("--backend", type=click.Choice(BACKENDS), default="auto",
                        help="Runtime (auto: from the artifact's kind).")
_CALIBRATION_METHOD = click.option(
    "--calibration-method", type=click.Choice(["minmax", "percentile", "entropy"]),
    default=default(Int8Spec, "calibration_method"),
    help="int8: how ranges are set from the calibration activations (percentile clips the rare outliers minmax "
    "stretches to).")
_EXPORT = (
    click.option("--tta", type=click.Choice(TTA_MODES), default=default(ExportConfig, "tta"),
                 help="TTA views baked into the graph (selective TTA is applied at run time instead)."),
    click.option("--shift", type=click.IntRange(1, 8), default=default(ExportConfig, "shift"), help="Translate px."),
    click.option("--precision", type=click.Choice(EXPORT_PRECISIONS), default=default(ExportConfig, "precision"),
                 help="fp32; fp16 weights and compute (for GPUs); int8 (static QDQ calibrated on training images, "
                 "signed int8 with zero points 0: what TensorRT builds INT8 engines from); or int8-asym (uint8 "
                 "activations, for onnxruntime on CPUs only). Input uint8, output float32."),
    click.option("--no-fold-bn", "fold_bn", flag_value=False, default=True, show_default=False,
                 help="Keep every BatchNorm as trained (default: folded into the convolution before it where exact)."),
    click.option("--calibration-images", type=click.IntRange(min=1), default=default(Int8Spec, "calibration_images"),
                 help="int8: class-balanced training images the activation ranges are set on (never test images)."),
    _CALIBRATION_METHOD,
    click.option("--calibration-data", type=_PATH, default=None,
                 help="int8: CIFAR-10 copy to calibrate on (default: the data the checkpoint was trained on)."),
    click.option("--force", is_flag=True,
                 help="Replace a different model of the same name in the --triton repository."),
    click.option("--weights", type=click.Choice(["ema", "raw"]), default=default(ExportConfig, "weights"),
                 help="Which weights of the checkpoint to export."),
    click.option("--trt", is_flag=True, help="Also build a TensorRT engine (needs TensorRT and an NVIDIA GPU)."),
    click.option("--trt-opt-batch", type=click.IntRange(min=1), default=default(EngineSpec, "opt_batch"),
                 help="Batch the engine is tuned for."),
    click.option("--trt-max-batch", type=click.IntRange(min=1), default=default(EngineSpec, "max_batch"),
                 help="Largest batch the engine takes."),
    click.option("--triton", type=_PATH, default=None, help="Write a Triton model repository here."),
    click.option("--opset", type=int, default=default(ExportConfig, "opset"), help="ONNX opset to write."),
    click.option("--out", type=_PATH, default=None,
                 help="Folder for the artifacts and the manifest that lists them (default: the run folder)."),
)
_IMPORT = (
    click.option("--data", type=_PATH, required=True,
                 help="CIFAR-10 copy the model is judged on (its classes, check images and selective hold-out)."),
    click.option("--name", default=None, help="Run folder name (default: the file's stem)."),
    click.option("--entrant", default=None,
                 help="The entrant's name in reports, shared by its seeds (default: --name)."),
    click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=default(ImportConfig, "seed"),
                 help="The seed the model was trained with (an entrant's seeds pool like a family's)."),
    click.option("--out", type=_PATH, default=default(ImportConfig, "out"), help="Parent folder of run folders."),
    click.option("--layout", type=click.Choice(LAYOUTS), default=default(ForeignContract, "layout"),
                 help="The model's input layout."),
    click.option("--input-range", type=click.Choice(INPUT_RANGES), default=default(ForeignContract, "input_range"),
                 help="The pixel range the model takes before its mean and std (0-1: pixels / 255)."),
    click.option("--mean", type=CommaList("list", kind=float), default=",".join(map(str, ForeignContract.mean)),
                 help="Per-channel mean R,G,B the model subtracts, in --input-range units."),
    click.option("--std", type=CommaList("list", kind=float), default=",".join(map(str, ForeignContract.std)),
                 help="Per-channel std R,G,B the model divides by, in --input-range units."),
    click.option("--classes", default=None,
                 help="The model's class names in logit order (comma-separated, or a file of one per line); "
                 "default: the data's order."),
    click.option("--holdout", type=click.IntRange(min=0), default=default(ImportConfig, "holdout"),
                 help="Class-balanced training images selective thresholds are fitted on (0: no selective modes)."),
    click.option("--check-images", type=click.IntRange(1, 10_000), default=default(ImportConfig, "check_images"),
                 help="Random images, and as many class-balanced training images, the adapted file's logits are "
                 "checked on against the foreign file's."),
    click.option("--tolerance", type=Finite(min=0, max=1, min_open=True, max_open=True),
                 default=default(ImportConfig, "tolerance"),
                 help="Largest |logit difference| accepted between the adapted and the foreign file (a float16 model: "
                 "at least 8 fp16 units in the last place of its largest logit)."),
    click.option("--overwrite", is_flag=True, help="Replace a finished run folder of the same name."),
)
_EVAL = (
    click.option("--data", type=_PATH, default=None,
                 help="CIFAR-10 source (default: the data the artifact says it was trained on)."),
    click.option("--tta", type=_MODES, default=",".join(default(EvalConfig, "tta")),
                 help=f"Comma-separated modes from {', '.join(ALL_MODES)}, or all. selective-MODE: extra views only "
                 "for images whose plain-view confidence is below the artifact's calibrated threshold."),
    _BACKEND,
    click.option("--precision", type=click.Choice(PRECISIONS), default=default(EvalConfig, "precision"),
                 help="torch and torch-graphs: compute precision (auto: fp16 on CUDA; on a CPU bf16 where native, else "
                 "fp32). An ONNX file or engine runs the precision it was exported in."),
    click.option("--provider", type=click.Choice(["auto", *PROVIDERS]), default=default(EvalConfig, "provider"),
                 help="onnxruntime execution provider."),
    click.option("--threads", type=click.IntRange(min=0), default=default(EvalConfig, "threads"),
                 help="CPU threads (0 = all cores)."),
    click.option("--batch-size", type=click.IntRange(min=1), default=default(EvalConfig, "batch_size"),
                 help="Images per call."),
    click.option("--test-limit", type=click.IntRange(min=1), default=None,
                 help="Evaluate on N test images (balanced)."),
    click.option("--selective-threshold", type=Finite(0, 1), default=None,
                 help="Override the artifact's calibrated per-image confidence threshold for the selective modes."),
    click.option("--no-latency", is_flag=True, help="Skip latency and throughput."),
    click.option("--latency-only", is_flag=True,
                 help="Time the rows each artifact's eval.json already holds, without scoring accuracy again (checked: "
                 "same artifact, backend, test images, threshold and CPU); e.g. a family scored with --no-latency, "
                 "then timed in one session."),
    _ROUNDS,
    _CALLS,
    _THROUGHPUT,
    click.option("--out", type=_PATH, default=None, help="Folder for eval.json (default: the artifact's)."),
)
_PREDICT = (
    click.option("--tta", type=click.Choice(ALL_MODES), default="none", help="TTA mode."),
    _BACKEND,
    click.option("--top-k", type=click.IntRange(min=1), default=1, help="Classes to print per image."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of lines."),
)
_SERVE = (
    click.option("--host", default=default(ServeConfig, "host"), help="Interface to listen on."),
    click.option("--port", type=click.IntRange(1, 65535), default=default(ServeConfig, "port"), help="TCP port."),
    click.option("--tta", type=click.Choice(ALL_MODES), default=default(ServeConfig, "tta"),
                 help="TTA mode per image (selective modes use the artifact's calibrated threshold)."),
    click.option("--max-batch", type=click.IntRange(1, 4096), default=default(ServeConfig, "max_batch"),
                 help="Images per model call (dynamic batching across concurrent requests)."),
    click.option("--max-wait-ms", type=Finite(0, 1000), default=default(ServeConfig, "max_wait_ms"),
                 help="How long a batch's first request waits for others, ms."),
    click.option("--threads", type=click.IntRange(min=0), default=default(ServeConfig, "threads"),
                 help="Backend CPU threads (0 = all cores)."),
    _BACKEND,
)
_FAMILY = (
    click.option("--backends", type=CommaList("names"), default=",".join(default(PipelineConfig, "backends")),
                 help=f"Comma-separated backends to evaluate: {_BACKEND_NAMES}, or auto (the machine's default set; "
                 "the others are recorded as skipped with the reason)."),
    click.option("--widths", type=CommaList("list", kind=float, low=0.0, high=MAX_WIDTH, repeats=False), default=None,
                 help=f"Train a width family with one recipe, e.g. 0.5,0.75,1.0, each in (0, {MAX_WIDTH:g}] "
                 "(default: --width alone)."),
    click.option("--seeds", type=CommaList("list", kind=int, low=0, high=2**31 - 1, repeats=False), default=None,
                 help="Seeds per width, e.g. 0,1 (default: --seed alone)."),
    click.option("--tta", "tta_modes", type=_MODES, default=",".join(default(PipelineConfig, "tta")),
                 help=f"Comma-separated modes to evaluate, from {', '.join(ALL_MODES)}, or all."),
    _ROUNDS,
    _CALLS,
    _THROUGHPUT,
    _CALIBRATION_METHOD,
)
_TRAIN_RESUME = click.option(
    "--resume", type=_PATH, default=None, help="Continue an interrupted run folder from its checkpoint; options that "
    "would change training must match it (the selective target and --eval-every may change).")
_FAMILY_RESUME = click.option(
    "--resume", is_flag=True, help="Continue the family of this --name with the same options: finished trainings, "
    "exports and evaluations are reused after their sha256 and lineage are checked, an interrupted training resumes.")
# fmt: on


# ---------------------------------------------------------------------------------------------- commands


@main.command()
@options(*_TRAINING, _TRAIN_RESUME, *_RUN_SWITCHES)
def train(**opts) -> None:
    """Train ResNet-9 with Myrtle.ai's 10-epoch recipe and write runs/<name>/checkpoint.pt + manifest.json."""
    from dawnpipe.train.api import train_command

    result = train_command(explicit=explicit_options(opts), **opts)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 speaks
    click.echo(f"checkpoint: {result.checkpoint}")
    click.echo(f"manifest:   {result.run_dir / 'manifest.json'}")
    if "ema_test_acc" in result.metrics:
        m = result.metrics
        click.echo(
            f"EMA test accuracy {m['ema_test_acc']:.4f} (flip TTA {m['ema_test_acc_flip']:.4f}) on "
            f"{m['test_images']} images; {m['train_seconds']:.1f} s training, {m['train_images_per_s']:.0f} images/s"
        )


@main.command()
@click.argument("source", type=_PATH)
@options(*_EXPORT, *_TRUST)
def export(**opts) -> None:
    """Export SOURCE (a run folder or checkpoint.pt) to a checked ONNX model, optionally a TensorRT engine; an
    imported model's run folder to int8."""
    from dawnpipe.export.config import export_config
    from dawnpipe.export.entrant_export import export_source

    result = export_source(export_config(**opts))
    click.echo("\n".join(result.lines()))
    for note in result.notes:
        click.echo(f"notice: {note}", err=True)
    click.echo(f"manifest: {result.out_dir / 'manifest.json'} ({result.seconds:.1f} s)")


@main.command(name="import")
@click.argument("model", type=_PATH)
@options(*_IMPORT)
def import_command(**opts) -> None:
    """Import MODEL, an ONNX image classifier dawnpipe did not train, as a run folder eval, export, costs, predict
    and serve take: an adapter gives it dawnpipe's contract (uint8 NHWC in, logits out), checked against it."""
    from dawnpipe.export.entrant import import_config, import_model

    result = import_model(import_config(**opts))
    click.echo("\n".join(result.lines()))
    click.echo(f"evaluate it: dawnpipe eval {result.onnx} --data {opts['data']} --tta all ({result.seconds:.1f} s)")


@main.command(name="check-trt")
@click.argument("models", nargs=-1, required=True, type=_PATH)
def check_trt(models: tuple[Path, ...]) -> None:
    """Hold ONNX files to TensorRT 10's ONNX rules (operators, opset, Q/DQ, uint8), statically, no GPU needed."""
    from dawnpipe.export.trt_rules import check_files

    for model, result in check_files(models, say=lambda line: click.echo(line, err=True)):
        nodes, parser = result["nodes"], result["parser"]
        click.echo(f"{model}: passes TensorRT 10's ONNX rules ({nodes} nodes; TensorRT parser: {parser})")


@main.command(name="eval")
@click.argument("artifacts", nargs=-1, required=True, type=_PATH)
@options(*_EVAL, *_TRUST)
def eval_command(artifacts: tuple[Path, ...], **opts) -> None:
    """Evaluate ARTIFACTS (run folders, checkpoints, .onnx or .engine files) with and without TTA. Several are
    timed in one session, so their rows pair by round in `dawnpipe costs`."""
    from dawnpipe.infer.evaluate import eval_configs, evaluate_together
    from dawnpipe.infer.report_table import format_rows

    results = evaluate_together(eval_configs(artifacts, **opts), progress=lambda line: click.echo(line, err=True))
    click.echo(format_rows([row for rows, _ in results for row in rows]))
    for path in dict.fromkeys(path for _, path in results):
        click.echo(f"results: {path}")


@main.command()
@click.argument("artifact", type=_PATH)
@click.argument("images", nargs=-1, required=True, type=_PATH)
@options(*_PREDICT, *_TRUST)
def predict(artifact: Path, images: tuple[Path, ...], as_json: bool, **opts) -> None:
    """Classify IMAGES (files or folders; any size or mode, converted to 32x32 RGB) with ARTIFACT."""
    import json

    from dawnpipe.infer.predict import CONVERSION, predict_files

    results = predict_files(artifact, list(images), warn=lambda m: click.echo(f"warning: {m}", err=True), **opts)
    if as_json:
        click.echo(json.dumps({"conversion": CONVERSION, "results": [r.to_dict() for r in results]}, indent=2))
        return
    for result in results:
        click.echo(f"{result.source}: {', '.join(f'{name} {prob:.3f}' for name, prob in result.top)}")


@main.command()
@click.argument("artifact", type=_PATH)
@options(*_SERVE)
def serve(artifact: Path, **opts) -> None:
    """Serve ARTIFACT over HTTP: POST /v1/predict (image bytes or multipart), GET /healthz, GET /metrics."""
    from dawnpipe.infer.server import serve as run_server

    run_server(ServeConfig(artifact=str(artifact), **opts), say=lambda line: click.echo(line, err=True))
    click.echo("server stopped; every in-flight request was answered", err=True)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=_PATH)
@options(*_RULES)
@click.option("--out", type=_PATH, default=None,
              help="Report folder (default: the run folder for one run; required for several).")  # fmt: skip
def costs(run_dirs: tuple[Path, ...], **opts) -> None:
    """Judge the eval results of RUN_DIRS (one run, or a family: widths x seeds) under TTA rules.

    Writes report.md (opening with the verdict table), report.json, report.csv and plots.
    """
    from dawnpipe.costs.report import build_report, report_config

    for kind, path in build_report(report_config(runs=run_dirs, **opts)).items():
        click.echo(f"{kind + ':':<14}{path}")


@main.command()
@click.argument("report", type=_PATH)
def recheck(report: Path) -> None:
    """Recompute every margin of REPORT (a report.json) from the per-image bits and timing rounds it carries."""
    from dawnpipe.costs.recheck import recheck_command

    click.echo(recheck_command(report, say=lambda line: click.echo(line, err=True)))


@main.command()
@options(*_TRAINING, _FAMILY_RESUME, *_RUN_SWITCHES, *_FAMILY, *_RULES)
def pipeline(**opts) -> None:
    """Train (a family), export, evaluate every TTA mode on the chosen backends, and write the cost report."""
    from dawnpipe.costs.pipeline import pipeline_config, run_pipeline

    explicit = explicit_options(opts)
    cfg = pipeline_config(explicit=explicit, command=typed_command(opts, explicit), **opts)
    result = run_pipeline(cfg, say=lambda m: click.echo(m, err=True))
    if result.reused:
        click.echo(f"reused (checked): {len(result.reused)} piece(s): {', '.join(result.reused)}", err=True)
    for kind, path in result.artifacts.items():
        click.echo(f"{kind + ':':<14}{path}")
    click.echo(f"pipeline finished in {result.seconds:.0f} s; report: {result.report_dir / 'report.md'}")


if __name__ == "__main__":
    sys.exit(main())

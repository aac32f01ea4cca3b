"""pipeline(): train a family (widths x seeds, one recipe), export, evaluate every TTA mode on the chosen backends,
and write one cost report over the family; stop it anywhere and continue it with ``resume``.

Every option is validated before training starts. Each run is exported once per artifact its backends need (the
fp32 and int8 ONNX on a CPU; the fp16 ONNX and a TensorRT engine on a GPU that has them). Backends come from
``costs.targets`` (``--backends``); those that cannot run here are recorded as skipped with the reason. Each
member's accuracy is scored as it finishes; once all have, each backend's rows of the whole family are timed in one
latency session (``costs.family_eval``), so the costs stage pairs rows of different widths round by round.

Interruptions: Ctrl-C or SIGTERM during training stops at a step boundary with a checkpoint; during an export or
an evaluation the stage is abandoned (its files are written under temporary names, so nothing half-written is
kept). ``resume=True`` with the same options reuses every finished training, export and evaluation after
checking its sha256 and lineage (``costs.resume``), resumes an interrupted training from its checkpoint, and
redoes only what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError, Interrupted
from dawnpipe.costs.report import ReportConfig
from dawnpipe.export.config import Int8Spec
from dawnpipe.infer.evaluate import EvalConfig
from dawnpipe.infer.latency import Protocol
from dawnpipe.train.config import TrainConfig
from dawnpipe.train.run_control import abandon_on_sigterm


@dataclass(frozen=True)
class PipelineConfig:
    """The training recipe, the family to train with it, what to evaluate it on, and how to judge it."""

    train: TrainConfig = field(default_factory=TrainConfig)
    widths: tuple[float, ...] = (1.0,)  # channel multipliers trained with the one recipe
    seeds: tuple[int, ...] = (0,)  # seeds per width
    tta: tuple[str, ...] = ("all",)  # modes evaluated on every backend
    latency_rounds: int = Protocol.rounds  # interleaved timing rounds per backend
    latency_calls: int = Protocol.calls  # timed calls per row per round, at least (as eval's --latency-calls)
    throughput_batch: int = EvalConfig.throughput_batch  # images per call for the throughput figure
    backends: tuple[str, ...] = ("auto",)  # costs.targets names; auto = the machine's default set
    calibration_method: str = Int8Spec.calibration_method  # int8 exports' activation ranges (export's option)
    resume: bool = False  # continue the family of this --name, reusing every finished piece
    report: ReportConfig = field(default_factory=lambda: ReportConfig(runs=()))
    command: str = ""  # the command line as typed (for the "continue with ..." line only; not part of the family)


@dataclass
class PipelineResult:
    """Where everything went, and what was reused rather than redone."""

    report_dir: Path
    runs: list[Path]
    artifacts: dict[str, Path]
    skipped: list[str]
    seconds: float
    reused: list[str] = field(default_factory=list)


def pipeline_config(
    *,
    explicit: set[str] | None = None,
    widths: tuple[float, ...] | None = None,
    seeds: tuple[int, ...] | None = None,
    tta_modes: tuple[str, ...] = PipelineConfig.tta,
    latency_rounds: int = PipelineConfig.latency_rounds,
    latency_calls: int = PipelineConfig.latency_calls,
    throughput_batch: int = PipelineConfig.throughput_batch,
    backends: tuple[str, ...] = PipelineConfig.backends,
    calibration_method: str = PipelineConfig.calibration_method,
    resume: bool = False,
    rules: tuple[str, ...] = (),
    budget_gflops: float | None = None,
    budget_ms: float | None = None,
    accuracy_threshold: float = ReportConfig.accuracy_threshold,
    threshold_note: str | None = None,
    command: str = "",
    **train_options: Any,
) -> PipelineConfig:
    """PipelineConfig from the command line's flat options: the training options make the recipe (over its preset;
    ``explicit`` names the ones typed), ``--widths``/``--seeds`` default to ``--width``/``--seed``, and the rule
    options make the report's rules."""
    from dawnpipe.costs.report import report_config
    from dawnpipe.train.api import config_from_options

    train = config_from_options(explicit=explicit, **train_options)
    return PipelineConfig(
        train=train,
        widths=widths or (train.model.width,),
        seeds=seeds or (train.seed,),
        tta=tta_modes,
        latency_rounds=latency_rounds,
        latency_calls=latency_calls,
        throughput_batch=throughput_batch,
        backends=backends,
        calibration_method=calibration_method,
        resume=resume,
        command=command,
        report=report_config(
            rules=rules,
            budget_gflops=budget_gflops,
            budget_ms=budget_ms,
            accuracy_threshold=accuracy_threshold,
            threshold_note=threshold_note,
        ),
    )


def check_pipeline(cfg: PipelineConfig) -> None:
    """Every option checked before any work starts (a bad one costs a second, not a training run)."""
    from dawnpipe.common.device import choose_device
    from dawnpipe.common.tta import ALL_MODES
    from dawnpipe.costs.report import check_config
    from dawnpipe.export.quantize import CALIBRATION_METHODS
    from dawnpipe.train.calibration import check_selective_target

    check_config(cfg.report)
    if cfg.calibration_method not in CALIBRATION_METHODS:
        raise DawnpipeError(
            f"unknown calibration method {cfg.calibration_method!r}", f"use one of {', '.join(CALIBRATION_METHODS)}"
        )
    check_selective_target(cfg.train.selective_target)
    choose_device(cfg.train.device, cfg.train.precision)  # fp16 on a CPU, bf16 on a GPU without it: refused now
    unknown = [m for m in cfg.tta if m not in (*ALL_MODES, "all")]
    if unknown or not cfg.tta:
        raise DawnpipeError(f"unknown TTA mode(s) {unknown or '(none given)'}", f"use {', '.join(ALL_MODES)} or all")
    if not cfg.widths or any(not (0 < w <= MAX_WIDTH) for w in cfg.widths):
        raise DawnpipeError(
            f"widths {list(cfg.widths)} must each lie in (0, {MAX_WIDTH:g}] (width 4 is 16x the FLOPs of width 1)",
            "pass e.g. --widths 0.5,0.75,1.0",
        )
    _check_distinct_channels(cfg)
    if not cfg.seeds or any(s < 0 for s in cfg.seeds):
        raise DawnpipeError(f"seeds {list(cfg.seeds)} must be non-negative", "pass e.g. --seeds 0,1")
    if cfg.resume and cfg.train.overwrite:
        raise DawnpipeError("--resume keeps finished work and --overwrite replaces it", "pass one of them")


MAX_WIDTH = 4.0  # channel multiplier: a family's widths lie in (0, MAX_WIDTH]


def _check_distinct_channels(cfg: PipelineConfig) -> None:
    """Two widths that round to the same channel counts would train the same network twice under two names."""
    seen: dict[tuple[int, ...], float] = {}
    for width in cfg.widths:
        channels = replace(cfg.train.model, width=width).channels()
        if channels in seen:
            raise DawnpipeError(
                f"widths {seen[channels]:g} and {width:g} both give channels {list(channels)}: the same network",
                "drop one of them from --widths",
            )
        seen[channels] = width


def resolve_name(cfg: PipelineConfig, say: Callable[[str], None] = print) -> PipelineConfig:
    """``--resume`` without ``--name``: the one unfinished family in ``--out`` (said in one line), or a one-line
    refusal naming the families there. A new pipeline without a name gets a time stamp."""
    if cfg.train.name:
        return cfg
    if not cfg.resume:
        return replace(cfg, train=replace(cfg.train, name=time.strftime("%Y%m%d-%H%M%S")))
    from dawnpipe.costs.resume import unfinished_families

    out = Path(cfg.train.out)
    found = unfinished_families(out)
    if len(found) != 1:
        listed = f" ({', '.join(found)})" if found else ""
        raise DawnpipeError(
            f"--resume without --name needs exactly one unfinished family in {out}; found {len(found)}{listed}",
            "pass --name NAME --resume",
        )
    say(f"continuing family {found[0]}, the one unfinished family in {out}")
    return replace(cfg, train=replace(cfg.train, name=found[0]))


def run_pipeline(cfg: PipelineConfig, say: Callable[[str], None] = print) -> PipelineResult:
    """Run (or continue) every stage for every (width, seed), then the report over the family."""
    from dawnpipe.common.run_folder import RunFolder, check_run_name
    from dawnpipe.costs.family_eval import export_and_score, time_family
    from dawnpipe.costs.report import build_report
    from dawnpipe.costs.resume import RECORD_KEY, check_family, check_strays, family_record
    from dawnpipe.costs.targets import choose_targets

    check_pipeline(cfg)
    cfg = resolve_name(cfg, say)
    targets, skipped = choose_targets(cfg.backends)
    started = time.perf_counter()
    stage = _Stages(say, started)
    base = check_run_name(cfg.train.name)
    family = len(cfg.widths) * len(cfg.seeds) > 1
    out = Path(cfg.train.out)
    # seed-major: every width of the first seed before any second seed, so a family stopped early is still a
    # whole family of one seed (widths in the order given)
    names = {(w, s): _run_name(base, w, s, family) for s in cfg.seeds for w in cfg.widths}
    family_dir = out / f"{base}-report" if family else out / base
    record = family_record(cfg, [t.name for t in targets])
    with RunFolder(family_dir):
        other = out / base if family else out / f"{base}-report"  # the other layout, for a resume that changed it
        if (other / "manifest.json").is_file():
            check_family(other, record, cfg.resume)
        members = check_family(family_dir, record, cfg.resume)
        if family:
            check_strays(out, base, set(names.values()))
        expected = {key: _run_config(cfg, name, *key) for key, name in names.items()}
        for key, name in names.items():
            _check_member(out / name, expected[key], members.get(name), cfg)
        if family:  # a single run's record goes into its own folder once it has trained (a record alone there
            _record(family_dir, RECORD_KEY, record, members)  # would read as a finished run)
        result = PipelineResult(family_dir, [], {}, [f"{s['backend']}: {s['reason']}" for s in skipped], 0.0)
        how = _continue(cfg)
        scored: dict[str, list] = {}  # target name -> each member's scored artifact, timed together at the end
        with abandon_on_sigterm("the pipeline was interrupted during an export or evaluation", how):
            for key, name in names.items():
                tag = f"{name}: " if family else ""
                run = _train_member(expected[key], out / name, members.get(name), stage, tag, result, how)
                members[name] = _member(run)
                _record(family_dir, RECORD_KEY, record, members)
                result.runs.append(run)
                for target, done in export_and_score(cfg, run, targets, skipped, stage, tag, result).items():
                    scored.setdefault(target, []).append(done)
            time_family(cfg, targets, scored, stage, result)
        stage("costs", f"FLOPs, rule decisions, report and plots over {len(result.runs)} run(s)")
        report = replace(cfg.report, runs=tuple(str(r) for r in result.runs), out=str(family_dir))
        result.artifacts.update(build_report(report))
    for note in result.skipped:
        say(f"note: skipped {note}")
    result.seconds = time.perf_counter() - started
    return result


def _run_config(cfg: PipelineConfig, name: str, width: float, seed: int) -> TrainConfig:
    return replace(
        cfg.train, model=replace(cfg.train.model, width=width), seed=seed, name=name, eval_every=cfg.train.epochs
    )


def _check_member(run_dir: Path, expected: TrainConfig, member: dict[str, Any] | None, cfg: PipelineConfig) -> None:
    """Before any work: a folder of this family that holds something is continued only with --resume (and then
    only if it holds this family's run), or replaced with --overwrite."""
    from dawnpipe.costs.resume import training_state

    if not run_dir.is_dir() or cfg.train.overwrite:
        return
    if not cfg.resume:
        from dawnpipe.common.run_folder import RunFolder

        state = RunFolder(run_dir).state()
        if state != "empty":
            raise DawnpipeError(
                f"{run_dir} already holds a {state} run; nothing was trained",
                "continue the family with the same options and --resume, pick another --name, or pass --overwrite",
            )
        return
    training_state(run_dir, expected.to_dict(), member)


def _train_member(
    run_cfg: TrainConfig, run_dir: Path, member: dict | None, stage, tag: str, result: PipelineResult, how: str
) -> Path:
    from dawnpipe.costs.resume import training_state
    from dawnpipe.train.trainer import train

    state = "new" if run_cfg.overwrite else training_state(run_dir, run_cfg.to_dict(), member)
    if state == "finished":
        stage("train", f"{tag}finished earlier; reused after its config and checkpoint sha256 were checked")
        result.reused.append(f"{run_dir.name}: training")
        return run_dir
    what = "continues from its checkpoint" if state == "interrupted" else "starts"
    stage("train", f"{tag}width {run_cfg.model.width:g}, seed {run_cfg.seed}, {run_cfg.epochs} epochs; {what}")
    resume_cfg = replace(run_cfg, resume=str(run_dir)) if state == "interrupted" else run_cfg
    try:
        trained = train(resume_cfg, progress=True)
    except Interrupted as err:
        raise Interrupted(f"{err.problem}; the family's finished work is kept", how) from None
    m = trained.metrics
    stage(
        "train",
        f"{tag}EMA test accuracy {m['ema_test_acc']:.4f} (flip {m['ema_test_acc_flip']:.4f}), "
        f"{m['train_seconds']:.0f} s",
    )
    return trained.run_dir


def _continue(cfg: PipelineConfig) -> str:
    """The exact command that continues this family: the one typed, with its --name and --resume."""
    import shlex

    words = shlex.split(cfg.command) if cfg.command else ["dawnpipe", "pipeline"]
    if "--name" not in words and not any(w.startswith("--name=") for w in words):
        words += ["--name", cfg.train.name or ""]
    if "--resume" not in words:
        words.append("--resume")
    return f"continue with `{shlex.join(words)}`"


def _member(run_dir: Path) -> dict[str, Any]:
    from dawnpipe.common.files import sha256_file
    from dawnpipe.common.manifest import read_manifest

    train = read_manifest(run_dir)["runs"]["train"]
    return {"run_id": train.get("run_id"), "checkpoint_sha256": sha256_file(run_dir / "checkpoint.pt")}


def _record(family_dir: Path, key: str, record: dict[str, Any], members: dict[str, Any]) -> None:
    from dawnpipe.common.manifest import update_manifest

    update_manifest(family_dir, run=(key, {"config": record, "members": members}))


def _run_name(base: str, width: float, seed: int, family: bool) -> str:
    return f"{base}-w{width:g}-s{seed}" if family else base


class _Stages:
    """Numbered stage lines with elapsed time: the pipeline's progress display between the training bars."""

    order = ("train", "export", "eval", "costs")

    def __init__(self, say: Callable[[str], None], started: float) -> None:
        self.say, self.started = say, started

    def __call__(self, name: str, message: str) -> None:
        index = self.order.index(name) + 1
        self.say(f"[{index}/{len(self.order)} {name} {time.perf_counter() - self.started:6.0f}s] {message}")


__all__ = ["PipelineConfig", "PipelineResult", "check_pipeline", "pipeline_config", "run_pipeline"]

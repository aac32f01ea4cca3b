"""The trainer: Myrtle's ResNet-9 recipe from data to a run folder, top to bottom.

    cfg = TrainConfig(epochs=10)            # defaults are the post-8 record recipe
    result = train(cfg)                     # -> runs/<name>/checkpoint.pt + manifest.json

``_train`` reads as the recipe does: the data on the device, the model and its optimizer, a resumed run's state,
one epoch after another, then the final evaluation, the selective-TTA calibration and the manifest. Data lives on
the device as uint8 NHWC; each epoch is augmented in one batched gather from a generator seeded by (seed, epoch),
so runs repeat exactly and a resumed run replays the interrupted epoch's batches. The step never waits for the
host: loss and accuracy accumulate on the device and are read once at each epoch's end, where a non-finite loss
stops the run (tests/train/test_step_ops.py holds every epoch to zero host syncs between its first and last step).
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dawnpipe.common.device import DeviceChoice, choose_device
from dawnpipe.common.errors import DawnpipeError, DiskFull, Interrupted
from dawnpipe.common.files import ensure_room
from dawnpipe.common.manifest import source_commit
from dawnpipe.common.run_folder import RunFolder, check_run_name
from dawnpipe.train.calibration import check_selective_target
from dawnpipe.train.checkpoint import (
    CHECKPOINT_NAME,
    checkpoint_bytes,
    input_contract,
    load_checkpoint,
    restore_rng,
    resumed_precision,
    rng_state,
    save_checkpoint,
)
from dawnpipe.train.compiled import CompiledOrEager, compile_cache_path
from dawnpipe.train.config import TrainConfig
from dawnpipe.train.epoch import LoopState, train_one_epoch, warm_up
from dawnpipe.train.finish import calibrate, carried_clock, clocks, over_processes, write_manifest
from dawnpipe.train.parts import ModelParts, TrainData, build_model, load_data
from dawnpipe.train.run_control import closing, epoch_line, graceful_interrupt, progress_bar
from dawnpipe.train.step import TrainStep

# Fields a resumed run may take from the caller instead of its checkpoint: none changes a training step.
RESUME_MAY_CHANGE = ("selective_target", "eval_every", "device")


@dataclass
class TrainResult:
    """Where the run went and what it reached."""

    run_dir: Path
    checkpoint: Path
    metrics: dict[str, Any]


def train(
    cfg: TrainConfig,
    *,
    progress: bool = True,
    dist: Any = None,
    resume_changes: dict[str, Any] | None = None,
    resume_payload: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ResNet-9 per ``cfg`` and write the run folder. ``dist`` is a train.distributed.Context or None.

    With ``cfg.resume`` the run continues with its checkpoint's config, ``cfg.device`` and ``resume_changes``
    (only RESUME_MAY_CHANGE fields; train.api.resume_changes decides them from the options a user typed).
    ``resume_payload``: that checkpoint, when the caller has already loaded (and checked) it, so it is read once.

    Rank 0 holds the run folder's lock for the whole run, and a new run refuses a folder that already holds a
    finished or interrupted run unless ``cfg.overwrite``; both are decided before any data is read.
    """
    started = time.time()
    source_commit()  # asked now, once per process: a commit made while this trains is not the code that ran
    if cfg.sync_bn and cfg.model.ghost_batch > 0:
        raise DawnpipeError(
            f"--sync-bn would replace the recipe's ghost batch norm ({cfg.model.ghost_batch}-image groups) with "
            "plain synchronised BatchNorm, silently changing the recipe",
            "drop --sync-bn: each rank's ghost BN already normalises groups of the global batch as one process would",
        )
    if cfg.name is not None:
        check_run_name(cfg.name)
    _check_switches(cfg, 1 if dist is None else dist.world_size)
    if not cfg.resume and dist is None:  # a precision that cannot run here is refused before the folder is claimed
        choose_device(cfg.device, cfg.precision)
    changes = dict(resume_changes or {})
    unknown = sorted(set(changes) - set(RESUME_MAY_CHANGE))
    if unknown:
        raise DawnpipeError(f"a resumed run cannot change {unknown}", f"change only {', '.join(RESUME_MAY_CHANGE)}")
    if changes.get("selective_target") is not None:
        check_selective_target(changes["selective_target"])
    if dist is not None and dist.rank != 0:
        return _train(cfg, Path(cfg.out), progress, dist, started, changes, resume_payload)
    with RunFolder(_run_dir(cfg)) as folder:
        if not cfg.resume:
            folder.claim_new(overwrite=cfg.overwrite)
        return _train(cfg, folder.path, progress, dist, started, changes, resume_payload)


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    progress: bool,
    dist: Any,
    started: float,
    changes: dict[str, Any],
    resume: dict[str, Any] | None,
) -> TrainResult:
    """The run itself, top to bottom: data, model, resumed state, epochs, final evaluation and manifest."""
    cfg, resume = _resumed_config(cfg, changes, resume)
    if dist is None or dist.rank == 0:  # room for two checkpoints (the new one is written beside the old), first
        ensure_room(run_dir, 2 * checkpoint_bytes(cfg.model), CHECKPOINT_NAME)
    dev = choose_device(cfg.device, cfg.precision) if dist is None else dist.device_choice
    if resume is not None:
        dev = resumed_precision(dev, resume["state"].get("precision"))
    torch.manual_seed(cfg.seed)
    world = 1 if dist is None else dist.world_size
    data = load_data(cfg, dev, world, resume)
    parts = build_model(cfg, data, dev)
    loop = LoopState(started=started) if resume is None else restore(parts, resume, dev, world, started)
    loop.checkpoint = run_dir / CHECKPOINT_NAME
    live = parts.model if dist is None else dist.wrap(parts.model)  # after resume: DDP broadcasts the weights
    compiled = CompiledOrEager(live) if cfg.compile else None
    compile_cache = None
    if compiled is not None:  # a later process with the same shapes loads what this one compiles
        compile_cache = compile_cache_path(cfg, dev.device, dev.precision, cfg.batch_size // world)
        compiled.load_cache(compile_cache)
    step = TrainStep(cfg, parts, dev, live, compiled)  # after resume: it binds the optimizer's rates to the device
    saver = _Saver(loop.checkpoint, cfg, data, parts, dev, world, loop, (resume or {}).get("run_id"))
    rank0 = dist is None or dist.rank == 0
    bar = progress_bar(cfg.epochs * parts.steps_per_epoch, enabled=progress and rank0)
    bar.update(loop.epoch * parts.steps_per_epoch + loop.skip_steps)
    benchmark_before = torch.backends.cudnn.benchmark
    if dev.device.type == "cuda":  # fixed shapes every step: let cuDNN pick the fastest kernels once (restored
        torch.backends.cudnn.benchmark = True  # after the loop: inference in this process must not autotune)
    try:
        steps = cfg.warmup_steps if cfg.warmup_steps is not None else (3 if dev.device.type == "cuda" else 0)
        loop.warmup_seconds = warm_up(cfg, data, parts, dev, step, steps, cfg.batch_size // world)
        with graceful_interrupt() as interrupt, closing(bar):
            for epoch in range(loop.epoch, cfg.epochs):
                record = train_one_epoch(cfg, epoch, data, parts, dev, dist, step, loop, interrupt, bar)
                if rank0 and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                    record["ema_test_acc"] = data.test_accuracy(parts.ema.module, dev)
                record["elapsed_s"] = time.time() - started
                loop.history.append(record)
                bar.set_postfix_str(epoch_line(record, cfg.epochs), refresh=True)
                if progress and rank0 and bar.disable:
                    print(epoch_line(record, cfg.epochs), file=sys.stderr, flush=True)
                if rank0:
                    _save_or_say_how_to_resume(saver, run_dir, epoch + 1)
                loop.epoch, loop.done, loop.epoch_start = epoch + 1, 0, None  # a Ctrl-C now resumes at the next epoch
    except KeyboardInterrupt:
        running = 0.0 if loop.epoch_start is None else time.perf_counter() - loop.epoch_start
        partial = loop.carried_epoch_seconds + running
        if rank0:
            saver.save(loop.epoch, loop.done, complete=False, partial_epoch_seconds=partial)
        where = saver.path if rank0 else "rank 0's run folder"
        raise Interrupted(
            f"{interrupt['why']} in epoch {loop.epoch + 1} after step {loop.done}; a checkpoint of that point is at "
            f"{where}",
            f"continue with `dawnpipe train --resume {run_dir}`",
        ) from None
    finally:
        torch.backends.cudnn.benchmark = benchmark_before
    if compile_cache is not None and rank0:  # set exactly when the run compiles
        compiled.save_cache(compile_cache)
    final, selective = finish(cfg, data, parts, dev, loop, compiled, step, rank0)
    if rank0:
        saver.save(cfg.epochs, 0, complete=True, final=final, selective=selective)
        write_manifest(run_dir, saver.path, cfg, dev, data.cifar, data.norm, final, world, data.holdout, selective,
                       saver.run_id)  # fmt: skip
    return TrainResult(run_dir, saver.path, final)


# ---------------------------------------------------------------------------------------------- the steps


def restore(parts: ModelParts, resume: dict[str, Any], dev: DeviceChoice, world: int, started: float) -> LoopState:
    """A resumed run's weights, EMA, optimizer, random streams, history and clocks, from its checkpoint."""
    state = resume["state"]
    saved_world = state.get("world_size", 1)
    parts.model.load_state_dict(resume["model"])
    parts.ema.load(resume["ema"], state.get("ema_updates", 0))
    parts.optimizer.load_state_dict(state["optimizer"])
    if parts.loss_scale is not None and state.get("scaler"):  # fp16: the steps skipped so far
        parts.loss_scale.load_state_dict(state["scaler"])
    restore_rng(state.get("rng"), dev.device)
    if saved_world != world:  # the global batch split and the data order depend on it
        raise DawnpipeError(
            f"the checkpoint was written by a run of {saved_world} process(es), this one has {world}",
            f"resume with torchrun --nproc_per_node {saved_world} (or without torchrun for 1)",
        )
    history = list(resume["metrics"]["epochs"])
    walls, carried = carried_clock(state, history)
    return LoopState(
        started, state["epoch"], state["step_in_epoch"], state["step_in_epoch"], None, history, walls, carried
    )


def finish(
    cfg: TrainConfig,
    data: TrainData,
    parts: ModelParts,
    dev: DeviceChoice,
    loop: LoopState,
    compiled: CompiledOrEager | None,
    step: TrainStep,
    rank0: bool,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The run's final record (clocks over every process, the EMA's accuracy with and without flip TTA, the raw
    weights' for comparison) and selective TTA's calibration on the hold-out (None without a hold-out)."""
    if cfg.lookahead:
        parts.ema.update(decay=1.0, pull_back=True)  # the weights become the average (airbench's final lookahead)
    wall_seconds = time.time() - loop.started  # this process; a resumed run's total is wall_seconds_all_processes
    train_seconds = loop.train_seconds
    final: dict[str, Any] = {
        "train_seconds": train_seconds,
        "warmup_seconds": loop.warmup_seconds,  # untimed, undone warm-up steps before the first timed epoch
        "wall_seconds": wall_seconds,
        **over_processes(loop.earlier_walls, wall_seconds),
        "train_images_per_s": cfg.epochs * parts.steps_per_epoch * cfg.batch_size / train_seconds,
        **clocks(loop.history),
        "compiled": None if compiled is None else compiled.describe(),
        "step": step.describe(),
        "first_step_unix": loop.first_step_unix,
        "started_unix": loop.started,
    }
    if parts.loss_scale is not None:
        final["skipped_nonfinite_steps"] = parts.loss_scale.skipped_steps()
    if not rank0:
        return final, None
    ema = parts.ema.module
    final["ema_test_acc"] = data.test_accuracy(ema, dev)
    final["ema_test_acc_flip"] = data.test_accuracy(ema, dev, "flip")
    final["raw_test_acc"] = data.test_accuracy(parts.model.eval(), dev)
    final["test_images"] = len(data.test_y)
    if not len(data.holdout_x):
        return final, None
    selective = calibrate(ema, data.holdout_x, data.holdout_y, data.mean, data.std, dev, cfg.selective_target)
    selective["holdout"] = data.holdout
    final["selective_threshold"] = selective["threshold"]
    return final, selective


# ---------------------------------------------------------------------------------------------- helpers


def _resumed_config(
    cfg: TrainConfig, changes: dict[str, Any], resume: dict[str, Any] | None
) -> tuple[TrainConfig, dict[str, Any] | None]:
    """A resumed run's config (its checkpoint's, with the caller's device and allowed changes) and checkpoint,
    loaded here only if the caller has not loaded it already."""
    if not cfg.resume:
        return cfg, None
    if resume is None:
        resume = load_checkpoint(cfg.resume)
    saved = TrainConfig.from_dict(resume["train_config"])
    if resume["state"].get("complete"):
        raise DawnpipeError(
            f"the run in {cfg.resume} already finished all {saved.epochs} epochs", "start a new run without --resume"
        )
    return replace(saved, **{"resume": cfg.resume, "device": cfg.device, **changes}), resume


def _save_or_say_how_to_resume(saver: _Saver, run_dir: Path, epoch: int) -> None:
    """The end-of-epoch checkpoint; a full disk stops the run with the previous checkpoint whole, and says how to
    continue from it once there is room (a resumed run replays the lost epoch exactly)."""
    try:
        saver.save(epoch, 0, complete=False)
    except DiskFull as full:
        fix = (
            f"free space, then continue from epoch {epoch - 1} with `dawnpipe train --resume {run_dir}`"
            if epoch > 1
            else "free space or pass another --out"
        )
        raise DiskFull(
            f"{full.problem}; the run stopped after epoch {epoch}, its checkpoint was not written", fix
        ) from None


class _Saver:
    """Writes the run's checkpoint: weights, EMA, config, data, history and the state a resume needs."""

    def __init__(self, path: Path, cfg, data: TrainData, parts: ModelParts, dev, world: int, loop: LoopState, run_id):
        self.path, self.cfg, self.data, self.parts, self.dev, self.world, self.loop = (
            path, cfg, data, parts, dev, world, loop,
        )  # fmt: skip
        self.run_id = run_id or uuid.uuid4().hex  # names this run in every artifact made from it

    def save(self, epoch: int, step_in_epoch: int, complete: bool, final: dict[str, Any] | None = None,
             selective: dict[str, Any] | None = None, partial_epoch_seconds: float = 0.0) -> None:  # fmt: skip
        parts, loop = self.parts, self.loop
        save_checkpoint(
            self.path,
            {
                "run_id": self.run_id,
                "selective": selective,
                "model_config": parts.model_cfg.to_dict(),
                "model": _cpu_state(parts.model),
                "ema": _cpu_state(parts.ema.module),
                "normalization": self.data.norm,
                "classes": list(self.data.cifar.classes),
                "input": input_contract(self.data.norm),
                "train_config": self.cfg.to_dict(),
                "data": self.data.cifar.describe(),
                "metrics": {"epochs": loop.history, "final": final or {}},
                "state": {
                    "epoch": epoch,
                    "step_in_epoch": step_in_epoch,
                    "complete": complete,
                    "optimizer": parts.optimizer.state_dict(),
                    "world_size": self.world,
                    "ema_updates": parts.ema.updates,
                    "scaler": None if parts.loss_scale is None else parts.loss_scale.state_dict(),
                    "precision": {"device": self.dev.device.type, "autocast": self.dev.describe()["precision"]},
                    "rng": rng_state(self.dev.device),  # stochastic depth draws from it; a resume continues the stream
                    # this process's wall so far: a process killed outright still counts up to this checkpoint
                    "clock": {
                        "process_walls": [*loop.earlier_walls, time.time() - loop.started],
                        "partial_epoch_seconds": partial_epoch_seconds,
                    },
                },
            },
        )


def _check_switches(cfg: TrainConfig, world: int = 1) -> None:
    """The recipe switches' ranges, checked before any data is read."""
    check_selective_target(cfg.selective_target)
    ghost, per_rank = cfg.model.ghost_batch, cfg.batch_size // max(world, 1)
    if ghost > 0 and per_rank % ghost:
        # GhostBatchNorm falls back to plain BatchNorm on a batch that does not split into whole groups: refused,
        # as --sync-bn is, rather than silently changing the recipe
        nearest = max(ghost, per_rank // ghost * ghost) * world
        raise DawnpipeError(
            f"--batch-size {cfg.batch_size} gives {per_rank} images per process, not a whole number of the recipe's "
            f"{ghost}-image ghost batch-norm groups; ghost BN would silently become plain BatchNorm",
            f"use a multiple of {ghost * world} (e.g. --batch-size {nearest})",
        )
    if cfg.flip_mode not in ("random", "alternating"):
        raise DawnpipeError(f"unknown flip mode {cfg.flip_mode!r}", "use random or alternating")
    for name, value, low, high in (
        ("stochastic_depth", cfg.model.stochastic_depth, 0.0, 0.95),
        ("bn_momentum", cfg.model.bn_momentum, 1e-6, 1.0),
        ("whiten_bias_frac", cfg.whiten_bias_frac, 0.0, 1.0),
    ):
        if not low <= value <= high:
            raise DawnpipeError(f"{name} is {value}, outside [{low:g}, {high:g}]", f"set {name} within that range")


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _run_dir(cfg: TrainConfig) -> Path:
    if cfg.resume:
        return Path(cfg.resume) if Path(cfg.resume).is_dir() else Path(cfg.resume).parent
    name = cfg.name or time.strftime("%Y%m%d-%H%M%S") + f"-seed{cfg.seed}"
    return Path(cfg.out) / check_run_name(name)

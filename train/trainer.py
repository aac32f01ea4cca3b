"""The trainer: Myrtle's ResNet-9 recipe from data to a run folder, top to bottom.

    cfg = TrainConfig(epochs=10)            # defaults are the post-8 record recipe
    result = train(cfg)                     # -> runs/<name>/checkpoint.pt + manifest.json

Data lives on the device as uint8 NHWC; each epoch is augmented in one batched gather from a generator
seeded by (seed, epoch), so runs repeat exactly and a resumed run replays the interrupted epoch's batches.
The step never waits for the host: loss and accuracy accumulate on the device and are read at epoch ends
(plus a finite-loss check every few dozen steps).
"""

from __future__ import annotations

import functools
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dawnpipe.common.device import DeviceChoice, choose_device
from dawnpipe.common.errors import DawnpipeError, Interrupted
from dawnpipe.common.run_folder import RunFolder, check_run_name
from dawnpipe.train.augment import alternating_flips, augment
from dawnpipe.train.calibration import check_selective_target, describe_holdout, split_holdout
from dawnpipe.train.checkpoint import (
    CHECKPOINT_NAME,
    input_contract,
    load_checkpoint,
    restore_rng,
    resumed_precision,
    rng_state,
    save_checkpoint,
)
from dawnpipe.train.compiled import CompiledOrEager
from dawnpipe.train.config import TrainConfig
from dawnpipe.train.data import load_cifar, pixel_statistics
from dawnpipe.train.ema import EMA
from dawnpipe.train.evaluation import accuracy, autocast
from dawnpipe.train.finish import calibrate, carried_clock, clocks, over_processes, write_manifest
from dawnpipe.train.guard import NonFiniteGuard
from dawnpipe.train.model import ResNet9, normalize
from dawnpipe.train.run_control import closing, epoch_line, graceful_interrupt, progress_bar
from dawnpipe.train.schedule import lr_multiplier, lr_table

_CHECK_EVERY = 32  # steps between finite-loss checks (the only host syncs inside an epoch)
# Fields a resumed run may take from the caller instead of its checkpoint: none changes a training step.
RESUME_MAY_CHANGE = ("selective_target", "eval_every", "device")


@dataclass
class TrainResult:
    """Where the run went and what it reached."""

    run_dir: Path
    checkpoint: Path
    metrics: dict[str, Any]


def train(
    cfg: TrainConfig, *, progress: bool = True, dist: Any = None, resume_changes: dict[str, Any] | None = None
) -> TrainResult:
    """Train ResNet-9 per ``cfg`` and write the run folder. ``dist`` is a train.distributed.Context or None.

    With ``cfg.resume`` the run continues with its checkpoint's config, ``cfg.device`` and ``resume_changes``
    (only RESUME_MAY_CHANGE fields; train.api.resume_changes decides them from the options a user typed).

    Rank 0 holds the run folder's lock for the whole run, and a new run refuses a folder that already holds a
    finished or interrupted run unless ``cfg.overwrite``; both are decided before any data is read.
    """
    started = time.time()
    if cfg.sync_bn and cfg.model.ghost_batch > 0:
        raise DawnpipeError(
            f"--sync-bn would replace the recipe's ghost batch norm ({cfg.model.ghost_batch}-image groups) with "
            "plain synchronised BatchNorm, silently changing the recipe",
            "drop --sync-bn: each rank's ghost BN already normalises groups of the global batch as one process would",
        )
    if cfg.name is not None:
        check_run_name(cfg.name)
    _check_switches(cfg)
    changes = dict(resume_changes or {})
    unknown = sorted(set(changes) - set(RESUME_MAY_CHANGE))
    if unknown:
        raise DawnpipeError(f"a resumed run cannot change {unknown}", f"change only {', '.join(RESUME_MAY_CHANGE)}")
    if changes.get("selective_target") is not None:
        check_selective_target(changes["selective_target"])
    if dist is not None and dist.rank != 0:
        return _train(cfg, Path(cfg.out), progress, dist, started, changes)
    with RunFolder(_run_dir(cfg)) as folder:
        if not cfg.resume:
            folder.claim_new(overwrite=cfg.overwrite)
        return _train(cfg, folder.path, progress, dist, started, changes)


def _train(
    cfg: TrainConfig, run_dir: Path, progress: bool, dist: Any, started: float, changes: dict[str, Any]
) -> TrainResult:
    """The run itself, top to bottom: data, model, loop, final evaluation, calibration, manifest."""
    rank0 = dist is None or dist.rank == 0
    resume_state: dict[str, Any] | None = None
    if cfg.resume:
        resume_state = load_checkpoint(cfg.resume)
        saved = TrainConfig.from_dict(resume_state["train_config"])
        if resume_state["state"].get("complete"):
            raise DawnpipeError(
                f"the run in {cfg.resume} already finished all {saved.epochs} epochs",
                "start a new run without --resume",
            )
        cfg = replace(saved, **{"resume": cfg.resume, "device": cfg.device, **changes})
    dev = choose_device(cfg.device) if dist is None else dist.device_choice
    if resume_state is not None:
        dev = resumed_precision(dev, resume_state["state"].get("precision"))
    torch.manual_seed(cfg.seed)

    # ---- data, on the device as uint8 NHWC
    data = load_cifar(
        cfg.data, train_limit=cfg.train_limit, test_limit=cfg.test_limit, verify_md5=not cfg.unofficial_batches
    )
    world = 1 if dist is None else dist.world_size
    if cfg.batch_size > len(data.train_y):
        raise DawnpipeError(
            f"batch size {cfg.batch_size} is larger than the {len(data.train_y)} training images",
            "lower --batch-size or raise --train-limit",
        )
    if cfg.batch_size % world:
        raise DawnpipeError(
            f"global batch {cfg.batch_size} does not split over {world} ranks",
            "pick a --batch-size divisible by the number of processes",
        )
    keep, held = split_holdout(data.train_y, cfg.holdout, cfg.batch_size)
    holdout = describe_holdout(held, len(data.train_y))
    holdout_x = torch.from_numpy(data.train_x[held]).to(dev.device)
    holdout_y = torch.from_numpy(data.train_y[held]).to(dev.device)
    train_x = torch.from_numpy(data.train_x[keep]).to(dev.device)
    train_y = torch.from_numpy(data.train_y[keep]).to(dev.device)
    test_x = torch.from_numpy(data.test_x).to(dev.device)
    test_y = torch.from_numpy(data.test_y).to(dev.device)
    norm = resume_state["normalization"] if resume_state is not None else pixel_statistics(data.train_x[keep])
    mean = torch.tensor(norm["mean"], device=dev.device)
    std = torch.tensor(norm["std"], device=dev.device)
    compute = dev.autocast_dtype or torch.float32

    # ---- model, optimizer, EMA
    model_cfg = replace(cfg.model, num_classes=len(data.classes))
    model = ResNet9(model_cfg)
    model.set_whitening(normalize(train_x[: cfg.whitening_images], mean, std, torch.float32))
    model = model.to(dev.device, memory_format=torch.channels_last if dev.channels_last else torch.preserve_format)
    steps_per_epoch = len(train_y) // cfg.batch_size  # partial batches dropped (post 1)
    whiten_bias = None if model.whiten is None else model.whiten.bias
    weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    biases = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1 and p is not whiten_bias]
    bias_group = {"lr_scale": cfg.bias_lr_scale, "weight_decay": cfg.weight_decay / cfg.bias_lr_scale}
    groups = [
        {"params": weights, "lr_scale": 1.0, "weight_decay": cfg.weight_decay},
        {"params": biases, **bias_group},
    ]
    if whiten_bias is not None:  # learns at the BN biases' rate for the first whiten_bias_frac of the steps, then lr 0
        groups.append(
            {"params": [whiten_bias], **bias_group, "until_step": cfg.whiten_bias_frac * cfg.epochs * steps_per_epoch}
        )
    optimizer = torch.optim.SGD(
        groups,
        lr=0.0,
        momentum=cfg.momentum,
        nesterov=True,
        foreach=True,
    )
    ema = EMA(model, cfg.ema_decay**cfg.ema_every, warmup=cfg.ema_warmup)
    trainable = weights + biases
    loss_scale = cfg.fp16_loss_scale if compute == torch.float16 else 1.0
    guard = NonFiniteGuard(optimizer, trainable) if loss_scale != 1.0 else None
    benchmark_before = torch.backends.cudnn.benchmark
    if dev.device.type == "cuda":  # fixed shapes every step: let cuDNN pick the fastest kernels once (restored
        torch.backends.cudnn.benchmark = True  # after the loop: inference in this process must not autotune)
    lrs = lr_table(cfg, steps_per_epoch) * lr_multiplier(cfg)
    history: list[dict[str, Any]] = []
    start_epoch, skip_steps = 0, 0
    earlier_walls: list[float] = []  # each earlier process's wall, up to its interruption
    carried_epoch_seconds = 0.0  # the interrupted epoch's seconds before this process took it over
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        ema.load(resume_state["ema"], resume_state["state"].get("ema_updates", 0))
        optimizer.load_state_dict(resume_state["state"]["optimizer"])
        start_epoch, skip_steps = resume_state["state"]["epoch"], resume_state["state"]["step_in_epoch"]
        restore_rng(resume_state["state"].get("rng"), dev.device)
        history = list(resume_state["metrics"]["epochs"])
        earlier_walls, carried_epoch_seconds = carried_clock(resume_state["state"], history)
        saved_world = resume_state["state"].get("world_size", 1)
        if saved_world != world:  # the global batch split and the data order depend on it
            raise DawnpipeError(
                f"the checkpoint was written by a run of {saved_world} process(es), this one has {world}",
                f"resume with torchrun --nproc_per_node {saved_world} (or without torchrun for 1)",
            )
    live = model if dist is None else dist.wrap(model)  # after resume: DDP broadcasts the loaded weights
    compiled = CompiledOrEager(live) if cfg.compile else None
    live = compiled or live

    run_id = resume_state.get("run_id") if resume_state is not None else None
    run_id = run_id or uuid.uuid4().hex  # names this run in every artifact made from it
    ckpt_path = run_dir / CHECKPOINT_NAME

    def checkpoint(
        epoch: int,
        step_in_epoch: int,
        complete: bool,
        final: dict[str, Any] | None = None,
        selective: dict[str, Any] | None = None,
        partial_epoch_seconds: float = 0.0,
    ) -> None:
        if not rank0:
            return
        save_checkpoint(
            ckpt_path,
            {
                "run_id": run_id,
                "selective": selective,
                "model_config": model_cfg.to_dict(),
                "model": _cpu_state(model),
                "ema": _cpu_state(ema.module),
                "normalization": norm,
                "classes": list(data.classes),
                "input": input_contract(norm),
                "train_config": cfg.to_dict(),
                "data": data.describe(),
                "metrics": {"epochs": history, "final": final or {}},
                "state": {
                    "epoch": epoch,
                    "step_in_epoch": step_in_epoch,
                    "complete": complete,
                    "optimizer": optimizer.state_dict(),
                    "world_size": world,
                    "ema_updates": ema.updates,
                    "precision": {"device": dev.device.type, "autocast": dev.describe()["precision"]},
                    "rng": rng_state(dev.device),  # stochastic depth draws from it; a resumed run continues the stream
                    # this process's wall so far: a process killed outright still counts up to this checkpoint
                    "clock": {
                        "process_walls": [*earlier_walls, time.time() - started],
                        "partial_epoch_seconds": partial_epoch_seconds,
                    },
                },
            },
        )

    def forward_backward(net: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(dev):
            out = net(x)
            value = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        (value * loss_scale).backward()  # fp16: scaled (the guard unscales); otherwise a scale of 1
        return out, value

    # ---- loop
    bar = progress_bar(cfg.epochs * steps_per_epoch, enabled=progress and rank0)
    bar.update(start_epoch * steps_per_epoch + skip_steps)
    train_seconds = sum(h.get("train_seconds", 0.0) for h in history)
    first_step_unix = None
    epoch, done = start_epoch, skip_steps
    epoch_start: float | None = None  # None between epochs: an interruption there carries no epoch time
    try:
        with graceful_interrupt() as interrupt, closing(bar):
            for epoch in range(start_epoch, cfg.epochs):
                _sync(dev)
                epoch_start = time.perf_counter()  # the epoch's augmentation counts as training time
                gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 1_000_003 + epoch)
                order = torch.randperm(len(train_y), generator=gen).to(dev.device)
                flips = None
                if cfg.flip and cfg.flip_mode == "alternating":
                    flips = alternating_flips(len(train_y), cfg.seed, epoch).to(dev.device)[order]
                epoch_x = augment(train_x[order], gen, pad=cfg.crop_pad, flip=cfg.flip, cutout=cfg.cutout, flips=flips)
                epoch_y = train_y[order]
                if dist is not None:  # each rank takes its slice of every global batch
                    epoch_x, epoch_y = dist.shard(epoch_x, epoch_y, cfg.batch_size)
                local_batch = cfg.batch_size // world
                loss_sum = torch.zeros((), device=dev.device)
                correct = torch.zeros((), device=dev.device, dtype=torch.long)
                seen, steps_run, done = 0, 0, skip_steps
                model.train()
                for step in range(skip_steps, steps_per_epoch):
                    if interrupt["stop"]:
                        raise KeyboardInterrupt
                    if first_step_unix is None:
                        first_step_unix = time.time()
                    step_index = epoch * steps_per_epoch + step  # steps done before this one
                    lr = float(lrs[step_index])
                    for group in optimizer.param_groups:
                        live_group = step_index < group.get("until_step", float("inf"))
                        group["lr"] = lr * group["lr_scale"] if live_group else 0.0
                    x = normalize(epoch_x[step * local_batch : (step + 1) * local_batch], mean, std, compute)
                    y = epoch_y[step * local_batch : (step + 1) * local_batch]
                    if compiled is not None and not compiled.proven:  # the backward compiles here: same fallback
                        logits, loss = compiled.first_step(functools.partial(forward_backward, x=x, y=y), model)
                    else:
                        logits, loss = forward_backward(live, x, y)
                    if guard is not None:  # fp16: unscale, and skip an overflowing step, on device
                        guard.step(1.0 / loss_scale)
                    else:
                        optimizer.step()
                    global_step = epoch * steps_per_epoch + step + 1
                    if global_step % cfg.ema_every == 0:  # global step: short epochs too
                        if cfg.lookahead:
                            through = global_step / (cfg.epochs * steps_per_epoch)  # fraction of training done
                            ema.update(decay=cfg.lookahead_decay**cfg.ema_every * through**3, pull_back=True)
                        else:
                            ema.update()
                    done = step + 1
                    loss_sum += loss.detach()
                    correct += (logits.detach().argmax(1) == y).sum()
                    seen += len(y)
                    steps_run += 1
                    bar.update(1)
                    if (step + 1) % _CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                        _stop_on_nan(epoch, step, ckpt_path, history)
                skip_steps = 0
                _sync(dev)
                epoch_seconds = time.perf_counter() - epoch_start  # this process's part of the epoch
                spent = epoch_seconds + carried_epoch_seconds  # with the part an interrupted process ran
                carried_epoch_seconds = 0.0
                train_seconds += spent
                if dist is not None:
                    loss_sum, correct, seen = dist.reduce_stats(loss_sum, correct, seen)  # loss averaged over ranks
                if not torch.isfinite(loss_sum):
                    _stop_on_nan(epoch, steps_per_epoch - 1, ckpt_path, history)
                record: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "train_loss": loss_sum.item() / max(steps_run, 1),
                    "train_acc": correct.item() / max(seen, 1),
                    "lr": lr,
                    "train_seconds": spent,
                    "train_images_per_s": seen / max(epoch_seconds, 1e-9),  # the images this process trained
                }
                if guard is not None:
                    record["skipped_nonfinite_steps"] = int(guard.skipped.item())  # read once per epoch
                if rank0 and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                    record["ema_test_acc"] = accuracy(ema.module, test_x, test_y, mean, std, dev, "none")
                record["elapsed_s"] = time.time() - started
                history.append(record)
                bar.set_postfix_str(epoch_line(record, cfg.epochs), refresh=True)
                if progress and rank0 and bar.disable:
                    print(epoch_line(record, cfg.epochs), file=sys.stderr, flush=True)
                checkpoint(epoch + 1, 0, complete=False)
                epoch, done = epoch + 1, 0  # a Ctrl-C from here on resumes at the next epoch's start
                epoch_start = None
    except KeyboardInterrupt:
        partial = carried_epoch_seconds + (0.0 if epoch_start is None else time.perf_counter() - epoch_start)
        checkpoint(epoch, done, complete=False, partial_epoch_seconds=partial)
        where = ckpt_path if rank0 else "rank 0's run folder"
        raise Interrupted(
            f"{interrupt['why']} in epoch {epoch + 1} after step {done}; a checkpoint of that point is at {where}",
            f"continue with `dawnpipe train --resume {run_dir}`",
        ) from None

    finally:
        torch.backends.cudnn.benchmark = benchmark_before
    if cfg.lookahead:
        ema.update(decay=1.0, pull_back=True)  # the weights become the average (airbench's final lookahead step)

    # ---- final evaluation: EMA with and without flip TTA, raw weights for comparison
    wall_seconds = time.time() - started  # this process; a resumed run's total is wall_seconds_all_processes
    final: dict[str, Any] = {
        "train_seconds": train_seconds,
        "wall_seconds": wall_seconds,
        **over_processes(earlier_walls, wall_seconds),
        "train_images_per_s": cfg.epochs * steps_per_epoch * cfg.batch_size / train_seconds,
        **clocks(history),
        "compiled": None if compiled is None else {"ran_compiled": compiled.compiled_ran, "notice": compiled.notice},
        "first_step_unix": first_step_unix,
        "started_unix": started,
    }
    if guard is not None:
        final["skipped_nonfinite_steps"] = int(guard.skipped.item())
    if rank0:
        final["ema_test_acc"] = accuracy(ema.module, test_x, test_y, mean, std, dev, "none")
        final["ema_test_acc_flip"] = accuracy(ema.module, test_x, test_y, mean, std, dev, "flip")
        final["raw_test_acc"] = accuracy(model.eval(), test_x, test_y, mean, std, dev, "none")
        final["test_images"] = len(test_y)
        selective = None
        if len(holdout_x):
            selective = calibrate(ema.module, holdout_x, holdout_y, mean, std, dev, cfg.selective_target)
            selective["holdout"] = holdout
            final["selective_threshold"] = selective["threshold"]
        checkpoint(cfg.epochs, 0, complete=True, final=final, selective=selective)
        write_manifest(run_dir, ckpt_path, cfg, dev, data, norm, final, world, holdout, selective, run_id)
    return TrainResult(run_dir, ckpt_path, final)


# ---------------------------------------------------------------------------------------------- helpers


def _check_switches(cfg: TrainConfig) -> None:
    """The recipe switches' ranges, checked before any data is read."""
    check_selective_target(cfg.selective_target)
    if cfg.flip_mode not in ("random", "alternating"):
        raise DawnpipeError(f"unknown flip mode {cfg.flip_mode!r}", "use random or alternating")
    for name, value, low, high in (
        ("stochastic_depth", cfg.model.stochastic_depth, 0.0, 0.95),
        ("bn_momentum", cfg.model.bn_momentum, 1e-6, 1.0),
        ("whiten_bias_frac", cfg.whiten_bias_frac, 0.0, 1.0),
    ):
        if not low <= value <= high:
            raise DawnpipeError(f"{name} is {value}, outside [{low:g}, {high:g}]", f"set {name} within that range")


def _sync(dev: DeviceChoice) -> None:
    if dev.device.type == "cuda":
        torch.cuda.synchronize(dev.device)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _run_dir(cfg: TrainConfig) -> Path:
    if cfg.resume:
        return Path(cfg.resume) if Path(cfg.resume).is_dir() else Path(cfg.resume).parent
    name = cfg.name or time.strftime("%Y%m%d-%H%M%S") + f"-seed{cfg.seed}"
    return Path(cfg.out) / check_run_name(name)


def _stop_on_nan(epoch: int, step: int, ckpt: Path, history: list[dict[str, Any]]) -> None:
    kept = f"the last good checkpoint (epoch {len(history)}) is kept at {ckpt}" if history else "no epoch finished"
    raise DawnpipeError(
        f"the loss became NaN or infinite in epoch {epoch + 1} near step {step + 1}; training stopped and {kept}",
        "lower the learning rate (--lr) or check the data",
    )

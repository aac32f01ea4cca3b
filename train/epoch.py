"""One training epoch: the augmented batches, the step (forward, loss, backward, optimizer), the EMA update.

``train_one_epoch`` is the loop body of ``train.trainer._train``. ``LoopState`` says where training stands (epoch,
step, history, the clocks of every process), which is what a checkpoint saves and a resumed run restores.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dawnpipe.common.device import DeviceChoice
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.train.augment import alternating_flips, augment
from dawnpipe.train.config import TrainConfig
from dawnpipe.train.model import normalize
from dawnpipe.train.parts import ModelParts, TrainData
from dawnpipe.train.step import TrainStep, smoothed_targets


@dataclass
class LoopState:
    """Where the loop stands: the epoch and step it is in, the history so far, and the clocks of every process."""

    started: float  # this process's wall-clock start (time.time())
    epoch: int = 0
    skip_steps: int = 0  # steps of ``epoch`` an interrupted process already ran
    done: int = 0  # steps of ``epoch`` finished in this process's view (what a checkpoint records)
    epoch_start: float | None = None  # perf_counter at this epoch's start; None between epochs
    history: list[dict[str, Any]] = field(default_factory=list)
    earlier_walls: list[float] = field(default_factory=list)  # each earlier process's wall, up to its interruption
    carried_epoch_seconds: float = 0.0  # the interrupted epoch's seconds before this process took it over
    first_step_unix: float | None = None
    checkpoint: Path | None = None  # where the loop's state is saved (named when a NaN stops the run)
    warmup_seconds: float = 0.0  # this process's untimed warm-up (epoch.warm_up), kept apart from the training clock

    @property
    def train_seconds(self) -> float:
        """The training clock over every finished epoch."""
        return sum(h.get("train_seconds", 0.0) for h in self.history)


def train_one_epoch(
    cfg: TrainConfig,
    epoch: int,
    data: TrainData,
    parts: ModelParts,
    dev: DeviceChoice,
    dist: Any,
    step: TrainStep,
    loop: LoopState,
    interrupt: dict[str, Any],
    bar: Any,
) -> dict[str, Any]:
    """One pass over the augmented training set (from ``loop.skip_steps`` in a resumed epoch); its record."""
    _sync(dev)
    loop.epoch_start = time.perf_counter()  # the epoch's augmentation counts as training time
    epoch_x, epoch_y = _epoch_batches(cfg, epoch, data, dev, dist)
    epoch_x = normalize(epoch_x, data.mean, data.std, data.compute)  # once per epoch, not once per step
    targets = smoothed_targets(epoch_y, len(data.cifar.classes), cfg.label_smoothing)
    local_batch = cfg.batch_size // (1 if dist is None else dist.world_size)
    step.start_epoch(epoch * parts.steps_per_epoch + loop.skip_steps)
    seen, steps_run, loop.done = 0, 0, loop.skip_steps
    parts.model.train()
    for index in range(loop.skip_steps, parts.steps_per_epoch):
        if interrupt["stop"]:
            raise KeyboardInterrupt
        if loop.first_step_unix is None:
            loop.first_step_unix = time.time()
        batch = slice(index * local_batch, (index + 1) * local_batch)
        step.run(epoch_x[batch], epoch_y[batch], targets[batch])
        global_step = epoch * parts.steps_per_epoch + index + 1
        if global_step % cfg.ema_every == 0:  # counted in global steps, so short epochs still update
            step.update_ema(*_ema_decay(cfg, parts, global_step))
        loop.done = index + 1
        seen += local_batch
        steps_run += 1
        bar.update(1)
    loop.skip_steps = 0
    _sync(dev)
    epoch_seconds = time.perf_counter() - loop.epoch_start  # this process's part of the epoch
    spent = epoch_seconds + loop.carried_epoch_seconds  # with the part an interrupted process ran
    loop.carried_epoch_seconds = 0.0
    loss_sum, correct = step.loss_sum, step.correct
    if dist is not None:
        loss_sum, correct, seen = dist.reduce_stats(loss_sum, correct, seen)  # loss averaged over ranks
    if not torch.isfinite(loss_sum):  # read once per epoch: a non-finite step leaves its mark in the sum
        _stop_on_nan(epoch, loop)
    last = epoch * parts.steps_per_epoch + parts.steps_per_epoch - 1
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": loss_sum.item() / max(steps_run, 1),
        "train_acc": correct.item() / max(seen, 1),
        "lr": float(parts.lrs[last]),
        "train_seconds": spent,
        "train_images_per_s": seen / max(epoch_seconds, 1e-9),  # the images this process trained
    }
    if parts.loss_scale is not None:
        record["skipped_nonfinite_steps"] = parts.loss_scale.skipped_steps()  # read once per epoch
    return record


def warm_up(cfg: TrainConfig, data: TrainData, parts: ModelParts, dev: DeviceChoice, step: TrainStep, steps: int,
            batch: int) -> float:  # fmt: skip
    """Seconds spent on ``steps`` untimed training steps of ``batch`` images (this process's share of a step), then
    on capturing the step as a CUDA graph where the run uses one, whose effects are then undone:
    weights, BatchNorm statistics, momentum, EMA, loss-scale count, the step's sums and the random streams are put
    back exactly and in place (a captured graph holds those very tensors), so a run that warmed up is bit-identical
    to one that did not (tests/train/test_trainer.py). What a cold process pays once (cuDNN autotuning, lazy module
    loading, compilation, allocator growth, graph capture) lands here instead of in epoch 1's clock.
    """
    from dawnpipe.train.checkpoint import restore_rng, rng_state

    if step.wants_graph:
        steps = max(steps, 3)  # a capture needs the kernels chosen and the libraries loaded by eager steps first
    if steps <= 0:
        return 0.0
    _sync(dev)
    began = time.perf_counter()
    kept = _state_tensors(parts)
    saved = [t.detach().clone() for t in kept]
    ema_updates = parts.ema.updates
    random_state = rng_state(dev.device)
    x = normalize(data.train_x[:batch], data.mean, data.std, data.compute)
    y = data.train_y[:batch]
    targets = smoothed_targets(y, len(data.cifar.classes), cfg.label_smoothing)
    parts.model.train()
    side = torch.cuda.Stream() if step.wants_graph else None  # graph warm-up runs on a side stream (CUDA graphs docs)
    if side is not None:
        side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
        for _ in range(steps):
            step.start_epoch(0)
            step.run(x, y, targets)
            step.update_ema(0.5, False)
    if side is not None:
        torch.cuda.current_stream().wait_stream(side)
        step.capture(x, y, targets, pull_back=cfg.lookahead)
    _sync(dev)
    with torch.no_grad():
        torch._foreach_copy_(kept, saved)
    parts.ema.updates = ema_updates
    restore_rng(random_state, dev.device)
    if step.graph is None:
        parts.model.zero_grad(set_to_none=True)
    return time.perf_counter() - began


def _state_tensors(parts: ModelParts) -> list[torch.Tensor]:
    """Every tensor a training step changes: weights and buffers, momentum, the EMA, the loss-scale count."""
    tensors = list(parts.model.state_dict().values()) + list(parts.ema.state_dict().values())
    tensors += [s["momentum_buffer"] for s in parts.optimizer.state.values()]
    if parts.loss_scale is not None:
        tensors.append(parts.loss_scale.skipped)
    return tensors


def _epoch_batches(cfg: TrainConfig, epoch: int, data: TrainData, dev: DeviceChoice, dist: Any) -> tuple:
    """The epoch's augmented images and labels in order (this rank's slice of every global batch under DDP)."""
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 1_000_003 + epoch)
    order = torch.randperm(len(data.train_y), generator=gen).to(dev.device)
    flips = None
    if cfg.flip and cfg.flip_mode == "alternating":
        flips = alternating_flips(len(data.train_y), cfg.seed, epoch).to(dev.device)[order]
    epoch_x = augment(data.train_x[order], gen, pad=cfg.crop_pad, flip=cfg.flip, cutout=cfg.cutout, flips=flips)
    epoch_y = data.train_y[order]
    if dist is not None:
        epoch_x, epoch_y = dist.shard(epoch_x, epoch_y, cfg.batch_size)
    return epoch_x, epoch_y


def _ema_decay(cfg: TrainConfig, parts: ModelParts, global_step: int) -> tuple[float, bool]:
    """(decay, pull back) of the EMA update after ``global_step`` steps."""
    if cfg.lookahead:
        through = global_step / (cfg.epochs * parts.steps_per_epoch)  # fraction of training done
        return parts.ema.next_decay(cfg.lookahead_decay**cfg.ema_every * through**3), True
    return parts.ema.next_decay(), False


def _sync(dev: DeviceChoice) -> None:
    if dev.device.type == "cuda":
        torch.cuda.synchronize(dev.device)


def _stop_on_nan(epoch: int, loop: LoopState) -> None:
    kept = (
        f"the last good checkpoint (epoch {len(loop.history)}) is kept at {loop.checkpoint}"
        if loop.history
        else "no epoch finished"
    )
    raise DawnpipeError(
        f"the loss became NaN or infinite in epoch {epoch + 1}; training stopped and {kept}",
        "lower the learning rate (--lr) or check the data",
    )

"""One training epoch: the augmented batches, the step (forward, loss, backward, optimizer), the EMA update.

``train_one_epoch`` is the loop body of ``train.trainer._train``. ``LoopState`` says where training stands (epoch,
step, history, the clocks of every process), which is what a checkpoint saves and a resumed run restores.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dawnpipe.common.device import DeviceChoice
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.train.augment import alternating_flips, augment
from dawnpipe.train.compiled import CompiledOrEager
from dawnpipe.train.config import TrainConfig
from dawnpipe.train.evaluation import autocast
from dawnpipe.train.loss_scaling import skipped_steps
from dawnpipe.train.model import normalize
from dawnpipe.train.parts import ModelParts, TrainData


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
    live: Any,
    compiled: CompiledOrEager | None,
    loop: LoopState,
    interrupt: dict[str, Any],
    bar: Any,
) -> dict[str, Any]:
    """One pass over the augmented training set (from ``loop.skip_steps`` in a resumed epoch); its record."""
    _sync(dev)
    loop.epoch_start = time.perf_counter()  # the epoch's augmentation counts as training time
    epoch_x, epoch_y = _epoch_batches(cfg, epoch, data, dev, dist)
    epoch_x = normalize(epoch_x, data.mean, data.std, data.compute)  # once per epoch, not once per step
    local_batch = cfg.batch_size // (1 if dist is None else dist.world_size)
    loss_sum = torch.zeros((), device=dev.device)
    correct = torch.zeros((), device=dev.device, dtype=torch.long)
    seen, steps_run, loop.done, lr = 0, 0, loop.skip_steps, 0.0
    parts.model.train()
    for step in range(loop.skip_steps, parts.steps_per_epoch):
        if interrupt["stop"]:
            raise KeyboardInterrupt
        if loop.first_step_unix is None:
            loop.first_step_unix = time.time()
        step_index = epoch * parts.steps_per_epoch + step  # steps done before this one
        lr = float(parts.lrs[step_index])
        for group in parts.optimizer.param_groups:
            live_group = step_index < group.get("until_step", float("inf"))
            group["lr"] = lr * group["lr_scale"] if live_group else 0.0
        x = epoch_x[step * local_batch : (step + 1) * local_batch]
        y = epoch_y[step * local_batch : (step + 1) * local_batch]
        logits, loss = _step(cfg, parts, dev, live, compiled, x, y)
        _update_ema(cfg, parts, step_index + 1)
        loop.done = step + 1
        loss_sum += loss.detach()
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        steps_run += 1
        bar.update(1)
    loop.skip_steps = 0
    _sync(dev)
    epoch_seconds = time.perf_counter() - loop.epoch_start  # this process's part of the epoch
    spent = epoch_seconds + loop.carried_epoch_seconds  # with the part an interrupted process ran
    loop.carried_epoch_seconds = 0.0
    if dist is not None:
        loss_sum, correct, seen = dist.reduce_stats(loss_sum, correct, seen)  # loss averaged over ranks
    if not torch.isfinite(loss_sum):  # read once per epoch: a non-finite step leaves its mark in the sum
        _stop_on_nan(epoch, loop)
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": loss_sum.item() / max(steps_run, 1),
        "train_acc": correct.item() / max(seen, 1),
        "lr": lr,
        "train_seconds": spent,
        "train_images_per_s": seen / max(epoch_seconds, 1e-9),  # the images this process trained
    }
    if parts.scaler is not None:
        record["skipped_nonfinite_steps"] = skipped_steps(parts.scaler, cfg.fp16_loss_scale)  # read once per epoch
    return record


def warm_up(cfg: TrainConfig, data: TrainData, parts: ModelParts, dev: DeviceChoice, live: Any,
            compiled: CompiledOrEager | None, steps: int, batch: int) -> float:  # fmt: skip
    """Seconds spent on ``steps`` untimed training steps of ``batch`` images (this process's share of a step), whose
    effects are then undone:
    weights, BatchNorm statistics, optimizer state, loss scale and random streams are put back exactly, so a run
    that warmed up is bit-identical to one that did not (tests/train/test_trainer.py). What a cold process pays once
    (cuDNN autotuning, lazy module loading, compilation, allocator growth) lands here instead of in epoch 1's clock.
    """
    import copy

    from dawnpipe.train.checkpoint import restore_rng, rng_state

    if steps <= 0:
        return 0.0
    _sync(dev)
    began = time.perf_counter()
    model_state = {k: v.detach().clone() for k, v in parts.model.state_dict().items()}
    optimizer_state = copy.deepcopy(parts.optimizer.state_dict())
    scaler_state = None if parts.scaler is None else copy.deepcopy(parts.scaler.state_dict())
    random_state = rng_state(dev.device)
    x = normalize(data.train_x[:batch], data.mean, data.std, data.compute)
    y = data.train_y[:batch]
    parts.model.train()
    for group in parts.optimizer.param_groups:
        group["lr"] = 0.0
    for _ in range(steps):
        _step(cfg, parts, dev, live, compiled, x, y)
    _sync(dev)
    with torch.no_grad():
        for key, value in parts.model.state_dict().items():
            value.copy_(model_state[key])
    parts.optimizer.load_state_dict(optimizer_state)
    if scaler_state is not None:
        parts.scaler.load_state_dict(scaler_state)
    restore_rng(random_state, dev.device)
    parts.model.zero_grad(set_to_none=True)
    return time.perf_counter() - began


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


def _forward_backward(net: Any, x: torch.Tensor, y: torch.Tensor, *, cfg: TrainConfig, parts: ModelParts, dev):
    with autocast(dev):
        out = net(x)
        value = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
    parts.optimizer.zero_grad(set_to_none=True)
    (value if parts.scaler is None else parts.scaler.scale(value)).backward()  # fp16: scaled (the step unscales)
    return out, value


def _step(cfg, parts: ModelParts, dev, live, compiled, x: torch.Tensor, y: torch.Tensor) -> tuple:
    """Forward, loss, backward and the optimizer step (fp16: unscaled and skipped on overflow, on the device)."""
    forward_backward = functools.partial(_forward_backward, x=x, y=y, cfg=cfg, parts=parts, dev=dev)
    if compiled is not None and not compiled.proven:  # the backward compiles here: same fallback
        logits, loss = compiled.first_step(forward_backward, parts.model)
    else:
        logits, loss = forward_backward(compiled or live)
    if parts.scaler is not None:  # the fused kernel unscales, and skips an overflowing update on the device
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    else:
        parts.optimizer.step()
    return logits, loss


def _update_ema(cfg: TrainConfig, parts: ModelParts, global_step: int) -> None:
    if global_step % cfg.ema_every:  # counted in global steps, so epochs shorter than ema_every still update
        return
    if cfg.lookahead:
        through = global_step / (cfg.epochs * parts.steps_per_epoch)  # fraction of training done
        parts.ema.update(decay=cfg.lookahead_decay**cfg.ema_every * through**3, pull_back=True)
    else:
        parts.ema.update()


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

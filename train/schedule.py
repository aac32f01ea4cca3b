"""One-cycle piecewise-linear learning rate, as a pure function of training progress."""

from __future__ import annotations

import numpy as np

from dawnpipe.train.config import TrainConfig


def lr_knots(cfg: TrainConfig) -> tuple[list[float], list[float]]:
    """(epochs, lr) knots: 0 -> peak at warmup, linear decay to lr_final, then hold for the last lr_hold_frac."""
    warm = cfg.epochs * cfg.lr_warmup_frac
    decay_end = max(warm, cfg.epochs * (1.0 - cfg.lr_hold_frac))
    return [0.0, warm, decay_end, float(cfg.epochs)], [0.0, cfg.lr_peak, cfg.lr_final, cfg.lr_final]


def lr_at(cfg: TrainConfig, epoch: float) -> float:
    """Learning rate at a fractional epoch (interpolated between knots, clamped at both ends)."""
    xs, ys = lr_knots(cfg)
    return float(np.interp(epoch, xs, ys))


def lr_table(cfg: TrainConfig, steps_per_epoch: int) -> np.ndarray:
    """Per-step learning rates for the whole run, evaluated at each step's end (step 0 is not lr 0)."""
    steps = np.arange(1, cfg.epochs * steps_per_epoch + 1) / steps_per_epoch
    xs, ys = lr_knots(cfg)
    return np.interp(steps, xs, ys)


def lr_multiplier(cfg: TrainConfig) -> float:
    """Linear scaling rule (Goyal et al. 2017): lr grows with the global batch over the recipe's 512.

    The one-cycle warm-up doubles as the rule's slow start. Scaling depends on the global batch only, so a
    run split over N processes uses the same rates as one process with the same global batch.
    """
    return cfg.batch_size / cfg.lr_base_batch if cfg.lr_scaling == "linear" else 1.0

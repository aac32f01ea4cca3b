"""Evaluation inside training: EMA accuracy with TTA views and the hold-out confidences selective TTA is
calibrated on, in the device's autocast dtype, on uint8 NHWC images already on the device."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from dawnpipe.common.device import DeviceChoice
from dawnpipe.common.tta import softmax_confidence, tta_logits, views
from dawnpipe.train.model import ResNet9, normalize


def autocast(dev: DeviceChoice, cache: bool = True) -> contextlib.AbstractContextManager:
    """torch.autocast in the device's compute dtype (fp16 on CUDA, bf16 on CPUs that have it), else nothing;
    ``cache``: autocast's cache of weight casts (off for a step a CUDA graph captures)."""
    if dev.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(dev.device.type, dtype=dev.autocast_dtype, cache_enabled=cache)


@torch.no_grad()
def plain_confidence(
    model: ResNet9, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dev: DeviceChoice, batch: int = 1000
) -> np.ndarray:
    """Top-1 softmax probability of the plain view per image, computed by the same function deployment
    thresholds with (``common.tta.softmax_confidence``)."""
    model.eval()
    compute = dev.autocast_dtype or torch.float32
    out = []
    with autocast(dev):
        for i in range(0, len(images), batch):
            out.append(model(normalize(images[i : i + batch], mean, std, compute)).float().cpu())
    return softmax_confidence(torch.cat(out).numpy())


@torch.no_grad()
def correct(
    model: ResNet9,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    dev: DeviceChoice,
    tta: str,
    batch: int = 1000,
) -> torch.Tensor:
    """Per image, on the images' device: is the eval-mode model's top-1 with the named TTA views the label."""
    was_training = model.training
    model.eval()
    compute = dev.autocast_dtype or torch.float32
    run = lambda x: model(normalize(x, mean, std, compute)).float()  # noqa: E731
    hits = torch.zeros(len(labels), dtype=torch.bool, device=images.device)
    with autocast(dev):
        for i in range(0, len(labels), batch):
            hits[i : i + batch] = tta_logits(run, images[i : i + batch], views(tta)).argmax(1) == labels[i : i + batch]
    model.train(was_training)
    return hits


def accuracy(
    model: ResNet9,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    dev: DeviceChoice,
    tta: str,
    batch: int = 1000,
) -> float:
    """Top-1 accuracy of an eval-mode model on uint8 NHWC images, with the named TTA views (one host sync)."""
    return correct(model, images, labels, mean, std, dev, tta, batch).sum().item() / max(len(labels), 1)

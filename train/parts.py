"""What a training run is made of: its images on the device, and the network with its optimizer, EMA and schedule.

``load_data`` and ``build_model`` are the first two steps of ``train.trainer._train``; they hold the recipe's
choices about data (hold-out, normalisation, autocast dtype) and parameters (the x64 bias learning rate, the
whitening bias window, Nesterov SGD, the EMA), one place each.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from dawnpipe.common.device import DeviceChoice
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.train.calibration import describe_holdout, split_holdout
from dawnpipe.train.config import ModelConfig, TrainConfig
from dawnpipe.train.data import Cifar, load_cifar, pixel_statistics
from dawnpipe.train.ema import EMA
from dawnpipe.train.evaluation import accuracy
from dawnpipe.train.loss_scaling import ConstantLossScale
from dawnpipe.train.model import ResNet9, normalize
from dawnpipe.train.schedule import lr_multiplier, lr_table


@dataclass
class TrainData:
    """The run's images on the device (uint8 NHWC) and what was derived from them."""

    cifar: Cifar
    train_x: torch.Tensor
    train_y: torch.Tensor
    holdout_x: torch.Tensor
    holdout_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    holdout: dict[str, Any]  # what the manifest records about the hold-out
    norm: dict[str, list[float]]  # per-channel mean and std of the training images (kept by a resumed run)
    mean: torch.Tensor
    std: torch.Tensor
    compute: torch.dtype  # the autocast dtype of a step (float32 without autocast)

    def test_accuracy(self, model: torch.nn.Module, dev: DeviceChoice, mode: str = "none") -> float:
        """Top-1 accuracy of ``model`` on the test images under TTA ``mode`` (none or flip)."""
        return accuracy(model, self.test_x, self.test_y, self.mean, self.std, dev, mode)


def load_data(cfg: TrainConfig, dev: DeviceChoice, world: int, resume: dict[str, Any] | None) -> TrainData:
    """The training, hold-out and test images on the device; the batch checked against them."""
    cifar = load_cifar(
        cfg.data, train_limit=cfg.train_limit, test_limit=cfg.test_limit, verify_md5=not cfg.unofficial_batches
    )
    if cfg.batch_size > len(cifar.train_y):
        raise DawnpipeError(
            f"batch size {cfg.batch_size} is larger than the {len(cifar.train_y)} training images",
            "lower --batch-size or raise --train-limit",
        )
    if cfg.batch_size % world:
        raise DawnpipeError(
            f"global batch {cfg.batch_size} does not split over {world} ranks",
            "pick a --batch-size divisible by the number of processes",
        )
    keep, held = split_holdout(cifar.train_y, cfg.holdout, cfg.batch_size)
    norm = resume["normalization"] if resume is not None else pixel_statistics(cifar.train_x[keep])
    on = dev.device
    return TrainData(
        cifar=cifar,
        train_x=torch.from_numpy(cifar.train_x[keep]).to(on),
        train_y=torch.from_numpy(cifar.train_y[keep]).to(on),
        holdout_x=torch.from_numpy(cifar.train_x[held]).to(on),
        holdout_y=torch.from_numpy(cifar.train_y[held]).to(on),
        test_x=torch.from_numpy(cifar.test_x).to(on),
        test_y=torch.from_numpy(cifar.test_y).to(on),
        holdout=describe_holdout(held, len(cifar.train_y)),
        norm=norm,
        mean=torch.tensor(norm["mean"], device=on),
        std=torch.tensor(norm["std"], device=on),
        compute=dev.autocast_dtype or torch.float32,
    )


@dataclass
class ModelParts:
    """The network, its optimizer with the recipe's parameter groups, the EMA, and the per-step schedule."""

    model_cfg: ModelConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA
    loss_scale: ConstantLossScale | None  # fp16 only: the loss scale, and overflowing steps skipped on the device
    lrs: Any  # learning rate of every step (the one-cycle table, scaled)
    steps_per_epoch: int


def build_model(cfg: TrainConfig, data: TrainData, dev: DeviceChoice) -> ModelParts:
    """ResNet-9 with its whitening layer set from the training images, Nesterov SGD over the recipe's groups (BN
    biases at x64 the rate and 1/64 the decay; a whitening bias only for its first steps), and the EMA."""
    model_cfg = replace(cfg.model, num_classes=len(data.cifar.classes))
    model = ResNet9(model_cfg)
    model.set_whitening(normalize(data.train_x[: cfg.whitening_images], data.mean, data.std, torch.float32))
    model = model.to(dev.device, memory_format=torch.channels_last if dev.channels_last else torch.preserve_format)
    steps_per_epoch = len(data.train_y) // cfg.batch_size  # partial batches dropped (post 1)
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
    # one fused kernel per group, whose learning rate is a device tensor (train.step) and which skips an fp16 step
    # the loss scale flagged; momentum starts as zeros, the same first step as none (buf = 0*m + g), so the
    # buffers exist before a CUDA graph is captured and stay the same tensors for the whole run
    optimizer = torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum, nesterov=True, fused=True)
    for p in weights + biases + ([] if whiten_bias is None else [whiten_bias]):
        optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    loss_scale = None
    if data.compute == torch.float16:  # train.loss_scaling: a constant scale, overflowing steps skipped on device
        trained = [p for group in groups for p in group["params"]]
        loss_scale = ConstantLossScale(cfg.fp16_loss_scale, trained, dev.device)
    ema = EMA(model, cfg.ema_decay**cfg.ema_every, warmup=cfg.ema_warmup)
    lrs = lr_table(cfg, steps_per_epoch) * lr_multiplier(cfg)
    return ModelParts(model_cfg, model, optimizer, ema, loss_scale, lrs, steps_per_epoch)

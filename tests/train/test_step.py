"""The training step (train/step.py) against the textbook step it replaced: float64 on the CPU, any CPU."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from dawnpipe.common.device import DeviceChoice
from dawnpipe.train.config import ModelConfig, TrainConfig
from dawnpipe.train.ema import EMA
from dawnpipe.train.model import ResNet9
from dawnpipe.train.parts import ModelParts
from dawnpipe.train.step import TrainStep, smoothed_targets


def _groups(model: torch.nn.Module) -> list[dict]:
    weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    biases = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": weights, "lr_scale": 1.0, "weight_decay": 5e-4},
            {"params": biases, "lr_scale": 64.0, "weight_decay": 5e-4 / 64}]  # fmt: skip


def test_twenty_steps_equal_the_textbook_step():
    """float64: the device-tensor step (fused SGD called per group, rates from the device table, label smoothing in
    the targets, sums on the device) ends 20 steps at the weights, momentum and loss of SGD(foreach=False) with
    Python rates and F.cross_entropy(label_smoothing=0.2). Chaotic growth of rounding differences stays under 1e-6
    in float64 (tests/train/test_model.py says why fp32 cannot be compared over 20 steps)."""
    torch.manual_seed(0)
    steps = 20
    model = ResNet9(ModelConfig(width=0.125, num_classes=4)).to(torch.float64, memory_format=torch.channels_last)
    textbook = copy.deepcopy(model)
    lrs = np.linspace(0.05, 0.4, steps)
    optimizer = torch.optim.SGD(_groups(model), lr=0.0, momentum=0.9, nesterov=True, fused=True)
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
    parts = ModelParts(model.cfg, model, optimizer, EMA(model, 0.9), None, lrs, steps)
    cfg = TrainConfig(epochs=1, label_smoothing=0.2)
    step = TrainStep(cfg, parts, DeviceChoice(torch.device("cpu"), None, channels_last=True), model, None)
    x = torch.randn(steps, 64, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 4, (steps, 64))
    step.start_epoch(0)
    for i in range(steps):
        step.run(
            x[i].contiguous(memory_format=torch.channels_last), y[i], smoothed_targets(y[i], 4, 0.2, torch.float64)
        )
    plain = torch.optim.SGD(_groups(textbook), lr=0.0, momentum=0.9, nesterov=True, foreach=False)
    losses = []
    for i in range(steps):
        for group in plain.param_groups:
            group["lr"] = float(lrs[i]) * group["lr_scale"]
        loss = F.cross_entropy(textbook(x[i].contiguous(memory_format=torch.channels_last)), y[i], label_smoothing=0.2)
        plain.zero_grad()
        loss.backward()
        plain.step()
        losses.append(loss.item())
    for (name, a), b in zip(model.state_dict().items(), textbook.state_dict().values(), strict=True):
        if a.is_floating_point():
            worst = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
            assert worst <= 1e-6, (name, worst)
    for p, q in zip(model.parameters(), textbook.parameters(), strict=True):
        if p.requires_grad:
            assert torch.allclose(optimizer.state[p]["momentum_buffer"], plain.state[q]["momentum_buffer"], rtol=1e-5,
                                  atol=1e-9)  # fmt: skip
    assert abs(float(step.loss_sum) - sum(losses)) < 1e-6 * sum(losses)  # the sum is kept in fp32
    assert int(step.counter) == steps and float(step.lr_row[0, 1]) == lrs[-1] * 64.0


def test_a_capture_that_fails_leaves_a_notice_and_the_eager_step_exactly(capsys):
    """float64: capturing the step raises on a machine without CUDA (torch's own refusal, as an op the capture
    refuses would on a GPU); the step then says so in one notice line and in describe(), and trains eagerly to the
    very weights of a step that never tried to capture."""
    torch.manual_seed(0)
    model = ResNet9(ModelConfig(width=0.125, num_classes=4)).to(torch.float64, memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    x = torch.randn(3, 16, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 4, (3, 16))
    lrs = np.linspace(0.05, 0.2, 3)

    def build(net: torch.nn.Module) -> TrainStep:
        optimizer = torch.optim.SGD(_groups(net), lr=0.0, momentum=0.9, nesterov=True, fused=True)
        for group in optimizer.param_groups:
            for p in group["params"]:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
        parts = ModelParts(net.cfg, net, optimizer, EMA(net, 0.9), None, lrs, 3)
        step = TrainStep(TrainConfig(epochs=1), parts, DeviceChoice(torch.device("cpu"), None, channels_last=True),
                         net, None)  # fmt: skip
        step.start_epoch(0)
        return step

    tried, never = build(model), build(twin)
    targets = [smoothed_targets(y[i], 4, 0.2, torch.float64) for i in range(3)]
    tried.capture(x[0].contiguous(memory_format=torch.channels_last), y[0], targets[0], pull_back=False)
    notice = capsys.readouterr().err
    assert notice.startswith("notice: CUDA graph capture failed (") and notice.count("\n") == 1
    assert tried.graph is None and tried.describe()["cuda_graph"] is False and tried.describe()["notice"]
    for step in (tried, never):
        for i in range(3):
            step.run(x[i].contiguous(memory_format=torch.channels_last), y[i], targets[i])
    for a, b in zip(model.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b)

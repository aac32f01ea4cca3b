"""EMA arithmetic and the one-cycle learning-rate schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dawnpipe.train.config import TrainConfig
from dawnpipe.train.ema import EMA
from dawnpipe.train.schedule import lr_at, lr_multiplier, lr_table


def test_ema_averages_weights_and_bn_buffers_and_copies_counters():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = EMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(5.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update()
    state = ema.state_dict()
    assert torch.allclose(state["0.weight"], 0.9 * start["0.weight"] + 0.1 * model[0].weight)
    assert torch.allclose(state["1.running_mean"], torch.full((3,), 0.5))
    assert int(state["1.num_batches_tracked"]) == 7
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_warmup_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.95, warmup=True)
    with torch.no_grad():
        model.weight.fill_(0.0)
        ema.module.weight.fill_(1.0)
    ema.update()  # first update: decay min(0.95, 1/10) = 0.1
    assert float(ema.module.weight) == pytest.approx(0.1)


def test_schedule_shape():
    cfg = TrainConfig(epochs=10)
    assert lr_at(cfg, 0) == 0.0
    assert lr_at(cfg, 2) == pytest.approx(1.0)
    assert lr_at(cfg, 5) == pytest.approx(1.0 - 0.9 * 3 / 6)
    assert lr_at(cfg, 8) == pytest.approx(0.1) and lr_at(cfg, 9.5) == pytest.approx(0.1)
    table = lr_table(cfg, steps_per_epoch=97)
    assert len(table) == 970 and table[0] > 0 and np.argmax(table) == 2 * 97 - 1


def test_linear_scaling_rule():
    assert lr_multiplier(TrainConfig(batch_size=512)) == 1.0
    assert lr_multiplier(TrainConfig(batch_size=2048)) == 4.0
    assert lr_multiplier(TrainConfig(batch_size=2048, lr_scaling="none")) == 1.0

"""Exponential moving average of a model's weights *and* BatchNorm buffers (post 8)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``ema = decay*ema + (1-decay)*model`` over every floating tensor of the state dict.

    Including BN running statistics matters: averaged weights with un-averaged statistics mismatch. Integer
    buffers (BN's batch counter) are copied. Updates use fused foreach ops and never sync with the host.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup  # TF ExponentialMovingAverage's num_updates rule: decay min(d, (1+u)/(10+u))
        self.updates = 0
        self._pairs = [
            (e, m) for e, m in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True)
        ]
        self._float = [(e, m) for e, m in self._pairs if e.is_floating_point()]
        self._other = [(e, m) for e, m in self._pairs if not e.is_floating_point()]

    def next_decay(self, decay: float | None = None) -> float:
        """The decay of the next update, counting that update: ``decay`` where the caller has its own schedule
        (lookahead), else the configured one with its warm-up."""
        if decay is None:
            decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        self.updates += 1
        return decay

    @torch.no_grad()
    def update(self, decay: float | None = None, pull_back: bool = False) -> None:
        """One EMA step towards the live model (at ``decay``, else the configured one with its warm-up).

        ``pull_back``: then copy the average back into the live model, the lookahead scheme of hlb-CIFAR10 and
        airbench (Zhang et al. 2019's Lookahead with an EMA as the slow weights).
        """
        self.apply(1.0 - self.next_decay(decay), pull_back)

    @torch.no_grad()
    def apply(self, weight: float | torch.Tensor, pull_back: bool = False) -> None:
        """Move the average ``weight`` of the way to the live model (a device scalar keeps it capturable in a CUDA
        graph, whose replay then reads the weight from that tensor)."""
        if self._float:
            ema, live = (list(t) for t in zip(*self._float, strict=True))
            torch._foreach_lerp_(ema, live, [weight] * len(ema) if isinstance(weight, torch.Tensor) else weight)
            if pull_back:
                torch._foreach_copy_(live, ema)
        if self._other:
            torch._foreach_copy_([e for e, _ in self._other], [m for _, m in self._other])

    def load(self, state: dict[str, torch.Tensor], updates: int) -> None:
        """Restore a saved average and its update count (for resume)."""
        self.module.load_state_dict(state)
        self.updates = updates

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged state, loadable into a model of the same config."""
        return self.module.state_dict()

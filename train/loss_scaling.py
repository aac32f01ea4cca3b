"""fp16's loss scaling: a constant scale, and a step whose gradients overflow skipped on the device.

Why: under fp16 autocast small gradients underflow unless the loss is scaled (the posts sum the loss over a batch
of 512: an implicit x512), and a gradient that overflows must not reach the weights, the momentum buffers and then
the EMA. The recipe's scale never needs to change (0 skipped steps in the H200 runs of 2026-12-04), so it is a
constant: the loss is multiplied by it, one foreach kernel unscales every gradient and raises a device flag on a
non-finite one, and ``SGD(fused=True)`` reads that flag and leaves weights and momentum alone when it is set. No
host sync, no per-step Python of ``torch.amp.GradScaler`` (issue 45), and the whole step stays capturable in a
CUDA graph. Skipped steps accumulate on the device and are read once per epoch.

It replaced GradScaler with the fused kernel, which had replaced a guard that cloned every parameter and momentum
buffer each step (the optimizer step then ran 11x faster, 63 ms against 5.7 ms per step on ResNet-9 width 1, on a
quiet 2-core AMD EPYC; ``python bench/loss_scaling.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch


class ConstantLossScale:
    """The loss scale, the non-finite flag the fused optimizer reads, and the count of skipped steps, on the device."""

    def __init__(self, scale: float, params: list[torch.Tensor], device: torch.device) -> None:
        self.value = float(scale)
        self.params = params  # every trained parameter: their gradients are unscaled and checked together
        self.inv_scale = torch.full((), 1.0 / scale, device=device)
        self.found_inf = torch.zeros((), device=device)
        self.skipped = torch.zeros((), device=device)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to differentiate: ``loss`` x the scale."""
        return loss * self.value

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale every gradient in place, flag a non-finite one, and hand the flag to the fused optimizer step."""
        self.found_inf.zero_()
        grads = [p.grad for p in self.params if p.grad is not None]
        torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found_inf, self.inv_scale)
        self.skipped.add_(self.found_inf)
        optimizer.found_inf = self.found_inf  # SGD(fused=True) skips the whole update while it is nonzero

    def skipped_steps(self) -> int:
        """Steps skipped for non-finite gradients so far (one host read)."""
        return round(float(self.skipped))

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the scale and the skipped steps."""
        return {"scale": self.value, "skipped": self.skipped_steps()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checkpoint's count; one written by GradScaler (whose scale halved per skip) converts."""
        skipped = state.get("skipped")
        if skipped is None:  # GradScaler's state: log2(initial / current scale) steps were skipped
            skipped = round(math.log2(self.value / float(state.get("scale", self.value))))
        self.skipped.fill_(float(skipped))

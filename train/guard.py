"""An optimizer step that is skipped, on the device, when its gradients are not finite.

Why: under fp16 autocast the recipe uses a static loss scale (no GradScaler, so no host sync per step). A
gradient that overflows would otherwise reach the weights, the momentum buffers and then the EMA, up to the
next finite-loss check 32 steps later. Here one fused kernel unscales the gradients and flags inf/nan; the
step runs anyway (no branch on the host), and where the flag is set the weights and momentum buffers are put
back as they were before the step. The count of skipped steps stays on the device until the epoch ends.
"""

from __future__ import annotations

import torch


class NonFiniteGuard:
    """Unscale, check and (conditionally) undo one optimizer step, without reading anything on the host."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        self.optimizer = optimizer
        self.params = params
        device = params[0].device
        self.skipped = torch.zeros((), dtype=torch.long, device=device)
        self._found = torch.zeros(1, device=device)

    @torch.no_grad()
    def step(self, inv_scale: float = 1.0) -> torch.Tensor:
        """Unscale the gradients by ``inv_scale`` and step; a step with inf/nan gradients leaves weights and
        momentum as they were. Returns the 0-dim bool flag (on the device)."""
        with_grad = [p for p in self.params if p.grad is not None]
        grads = [p.grad for p in with_grad]
        self._found.zero_()
        inv = torch.full((1,), inv_scale, device=self._found.device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, self._found, inv)
        bad = self._found[0] > 0
        for g in grads:
            g.masked_fill_(bad, 0.0)  # the step itself stays finite; it is undone below anyway
        before = [p.detach().clone() for p in with_grad]
        buffers = [self.optimizer.state.get(p, {}).get("momentum_buffer") for p in with_grad]
        saved = [None if b is None else b.clone() for b in buffers]
        self.optimizer.step()
        for p, old in zip(with_grad, before, strict=True):
            p.copy_(torch.where(bad, old, p))
        for p, old in zip(with_grad, saved, strict=True):
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buf.copy_(torch.where(bad, torch.zeros_like(buf) if old is None else old, buf))
        self.skipped += bad
        return bad

"""fp16's overflow guard against torch.amp.GradScaler with a fused optimizer: the optimizer step's cost, per step.

    python bench/loss_scaling.py --width 1 --rounds 5 --steps 20      # -> bench/results/loss_scaling.json

Both skip a step whose gradients overflow without a host sync: ``train.guard.NonFiniteGuard`` (the trainer's, with
the recipe's static loss scale and foreach Nesterov SGD) unscales, steps, and puts weights and momentum back where
the step was bad, which costs a clone of every parameter and momentum buffer per step; GradScaler hands its
``found_inf`` to ``SGD(fused=True)``, whose kernel skips the update itself. Timed on ResNet-9's real parameter
shapes with random gradients, rows interleaved in rounds; the CPU and its flags are written beside the figures.
GradScaler's scale is dynamic (it must back off on overflow: ``backoff_factor < 1``), the recipe's is static.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result  # noqa: E402


def _guard_class():
    """The guard the trainer used before GradScaler (train/guard.py until issue 34), kept here as the baseline."""
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

    return NonFiniteGuard


def _rows(width: float, device: str) -> dict:
    import torch

    from dawnpipe.train.config import ModelConfig
    from dawnpipe.train.model import ResNet9

    def make(fused: bool):
        torch.manual_seed(0)
        model = ResNet9(ModelConfig(width=width)).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p) * 512
        kwargs = {"fused": True} if fused else {"foreach": True}
        return params, torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4, **kwargs)

    params, sgd = make(False)
    guard = _guard_class()(sgd, params)
    params_f, sgd_f = make(True)
    scaler = torch.amp.GradScaler(device, init_scale=512.0)
    scaler.scale(torch.ones((), device=device))  # its scale tensor exists before timing

    def scaled_step():
        scaler.unscale_(sgd_f)
        scaler.step(sgd_f)
        scaler.update()
        for p in params_f:  # gradients as the next backward would leave them (unscale_ divided them in place)
            p.grad.mul_(512.0)

    guarded = "guard (foreach SGD, clone and restore)"
    return {guarded: lambda: guard.step(1 / 512), "GradScaler + fused SGD": scaled_step}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    rows = _rows(args.width, args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    for run in rows.values():  # warm-up: optimizer state (momentum buffers) allocated
        run()
    per_round = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, run in rows.items():
            sync()
            started = time.perf_counter()
            for _ in range(args.steps):
                run()
            sync()
            per_round[name].append(1000 * (time.perf_counter() - started) / args.steps)
    names = list(rows)
    ratios = [a / b for a, b in zip(per_round[names[0]], per_round[names[1]], strict=True)]
    write_result(
        "loss_scaling",
        {
            "what": "optimizer step ms (median of per-round means), ResNet-9 parameter shapes, random gradients",
            "width": args.width,
            "device": args.device,
            "torch": torch.__version__,
            "ms_per_step": {name: statistics.median(v) for name, v in per_round.items()},
            "per_round_ms": per_round,
            "guard_over_scaler_per_round": ratios,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Ghost BN's kernels on this device, on ResNet-9's real layer shapes: the library's layouts, a copy-free candidate,
and the plain-BN floor.

    python bench/ghost_bn.py [--device cuda|cpu] [--precision fp16|bf16|fp32] [--width 1] [--batch 512] [--rounds 5]

For every BN layer of the network (shapes from one training forward with hooks), the seconds of one forward and
backward of:

- ``gathered``: ``train.model``'s group-norm kernel over the groups copied contiguous, one ``native_group_norm``
  each way (the library's kernel on CUDA);
- ``sliced``: ``train.model``'s per-group ``native_batch_norm`` on slices of the batch joined by ``cat`` (the
  library's kernel on a CPU; two ops per group each way);
- ``reductions``: ``ReductionGhostNorm`` below, a candidate written as reductions and elementwise ops over the free
  (groups, ghost*h*w, channels) view of channels_last memory: no copies, every access runs along the channels
  (coalesced on a GPU), about 7 ops forward and 16 backward per layer;
- ``batch_norm``: plain BN over the whole batch (cuDNN on CUDA): the floor, not ghost BN.

The per-layer seconds summed over the network are ghost BN's share of one training step. Rounds interleave the
candidates; the statistic is the median round (each round times ``--calls`` calls) with the rounds' min and max.
Before timing, each ghost candidate's output and input gradient are checked against the per-group reference in fp32
on the same device. The question it answers (issue 45): do the gathered layout's copies cost a GPU step milliseconds
that a copy-free layout would save? On a GPU ``bench/gpu.py``'s ``ghost_bn`` step runs it at batch 512 in fp16.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class ReductionGhostNorm(torch.autograd.Function):
    """Ghost BN over the free (groups, ghost*h*w, c) view of channels_last memory: statistics by one ``var_mean``
    over the middle dimension, the output by one ``addcmul`` whose fp32 coefficients are applied in fp32 and written
    in the input's precision (``out=``), the backward from two channel-wise sums and two ``addcmul``. The centred
    input is formed in the backward so that no term cancels a large mean in reduced precision."""

    @staticmethod
    def forward(ctx, x, weight, bias, ghost, eps):  # type: ignore[override]
        with torch.autocast(x.device.type, enabled=False):  # its precision is its own, as the library kernels' are
            return ReductionGhostNorm._forward(ctx, x, weight, bias, ghost, eps)

    @staticmethod
    def _forward(ctx, x, weight, bias, ghost, eps):  # type: ignore[no-untyped-def]
        n, c, h, w = x.shape
        rows = ghost * h * w
        x = x.contiguous(memory_format=torch.channels_last)  # free in a channels_last network
        v = x.as_strided((n // ghost, rows, c), (rows * c, c, 1))  # channels_last memory as (groups, rows, c): a view
        acc = torch.promote_types(x.dtype, torch.float32)  # coefficients in fp32 at least
        var, mean = torch.var_mean(v, dim=1, correction=0, keepdim=True)
        mean = mean.to(acc)
        rstd = torch.rsqrt(var.to(acc) + eps)
        scale = rstd * weight
        shift = torch.addcmul(bias, mean, scale, value=-1)
        y = torch.addcmul(shift, v, scale, out=torch.empty_like(v))
        ctx.save_for_backward(v, mean, rstd, weight)
        return y.as_strided(x.shape, (h * w * c, 1, w * c, c))

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        v, mean, rstd, weight = ctx.saved_tensors
        dy = dy.contiguous(memory_format=torch.channels_last)
        dv = dy.as_strided(v.shape, v.stride())
        rows = v.shape[1]
        centred = torch.sub(v, mean, out=torch.empty_like(v))
        sum_dy = dv.sum(1, keepdim=True, dtype=mean.dtype)
        dot = (dv * centred).sum(1, keepdim=True, dtype=mean.dtype)  # sum of dy (x - mean) per group and channel
        a = rstd * weight
        b = a * rstd.square() * dot / -rows
        dx = torch.addcmul(a * sum_dy / -rows, dv, a, out=torch.empty_like(v))
        dx.addcmul_(centred, b)
        dbias = sum_dy.sum((0, 1))
        dweight = (dot * rstd).sum((0, 1)) if ctx.needs_input_grad[1] else None
        return dx.as_strided(dy.shape, dy.stride()), dweight, dbias, None, None


def layer_shapes(width: float, device: torch.device) -> list[tuple[int, int, int]]:
    """(channels, h, w) of every ghost BN layer of ResNet-9 at ``width``, in network order (one forward)."""
    from dawnpipe.train.config import ModelConfig
    from dawnpipe.train.model import GhostBatchNorm, ResNet9

    model = ResNet9(ModelConfig(width=width)).to(device, memory_format=torch.channels_last).train()
    shapes: list[tuple[int, int, int]] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape[1:])))
             for m in model.modules() if isinstance(m, GhostBatchNorm)]  # fmt: skip
    model(torch.randn(64, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last))
    for hook in hooks:
        hook.remove()
    return shapes  # type: ignore[return-value]


def candidates() -> dict[str, Any]:
    """name -> f(x, weight, bias, ghost, eps) -> output, on any device."""
    from dawnpipe.train.model import GHOST_KERNELS

    gathered, sliced = GHOST_KERNELS["gathered"], GHOST_KERNELS["sliced"]
    return {
        "gathered": lambda x, w, b, g, e: gathered.apply(x, w, b, g, e)[0],
        "sliced": lambda x, w, b, g, e: sliced.apply(x, w, b, g, e)[0],
        "reductions": ReductionGhostNorm.apply,
        "batch_norm": lambda x, w, b, g, e: F.batch_norm(x, None, None, w, b, training=True, eps=e),
    }


def ghost_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, ghost: int, eps: float) -> torch.Tensor:
    """Ghost BN by plain autograd: each group of ``ghost`` consecutive images normalised over (images, h, w) by its
    own biased variance. The oracle every kernel is checked against, here and in the tests."""
    n, c, h, w = x.shape
    groups = x.view(n // ghost, ghost, c, h, w)
    var, mean = torch.var_mean(groups, dim=(1, 3, 4), keepdim=True, correction=0)
    out = (groups - mean) * torch.rsqrt(var + eps) * weight.view(1, 1, c, 1, 1) + bias.view(1, 1, c, 1, 1)
    return out.view(n, c, h, w)


def check(fn: Any, shape: tuple[int, ...], device: torch.device, ghost: int = 32) -> float:
    """Largest error of ``fn``'s output and input gradient against the per-group reference, fp32, relative to the
    reference's largest magnitude (the input has a mean far from zero, as a conv's output may)."""
    torch.manual_seed(0)
    base = (torch.randn(shape, device=device) * 2 + 3).contiguous(memory_format=torch.channels_last)
    weight = torch.rand(shape[1], device=device) + 0.5
    bias = torch.randn(shape[1], device=device, requires_grad=True)
    grad = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last)
    worst = 0.0
    outputs = []
    for f in (fn, ghost_reference):
        x = base.clone().requires_grad_(True)
        out = f(x, weight, bias, ghost, 1e-5)
        (out * grad).sum().backward()
        outputs.append((out.detach(), x.grad))
    for got, want in zip(outputs[0], outputs[1], strict=True):
        worst = max(worst, float((got - want).abs().max() / want.abs().max()))
    return worst


def _time_rounds(fns: dict[str, Any], shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, calls: int,
                 rounds: int, ghost: int) -> dict[str, list[float]]:  # fmt: skip
    """Seconds per forward+backward call, one figure per round, the candidates interleaved within each round."""
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    dy = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.ones(shape[1], device=device)  # the recipe's frozen scale: no weight gradient
    bias = torch.zeros(shape[1], device=device, requires_grad=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(fn: Any) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = fn(x, weight, bias, ghost, 1e-5)
        out.backward(dy)
        x.grad = bias.grad = None

    for fn in fns.values():  # warm-up: kernels loaded, caches and allocator grown
        run(fn)
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            for _ in range(calls):
                run(fn)
            sync()
            seconds[name].append((time.perf_counter() - start) / calls)
    return seconds


def measure(device: str = "cuda", precision: str = "fp16", width: float = 1.0, batch: int = 512, rounds: int = 5,
            calls: int = 10, ghost: int = 32) -> dict[str, Any]:  # fmt: skip
    """Per layer and summed over the network: median forward+backward milliseconds of each candidate."""
    dev = torch.device(device)
    dtype = DTYPES[precision]
    fns = candidates()
    shapes = layer_shapes(width, dev)
    errors = {name: check(fn, (64, *shapes[-1]), dev) for name, fn in fns.items() if name != "batch_norm"}
    layers = []
    for c, h, w in shapes:
        seconds = _time_rounds(fns, (batch, c, h, w), dtype, dev, calls, rounds, ghost)
        layers.append({"shape": [batch, c, h, w], "ms": {name: {"median": statistics.median(s) * 1e3,
                                                               "min": min(s) * 1e3, "max": max(s) * 1e3}
                                                        for name, s in seconds.items()}})  # fmt: skip
    total = {name: sum(layer["ms"][name]["median"] for layer in layers) for name in fns}
    return {
        "benchmark": "ghost BN forward+backward per layer, ResNet-9's shapes",
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "precision": precision,
        "width": width,
        "batch": batch,
        "ghost": ghost,
        "rounds": rounds,
        "calls_per_round": calls,
        "statistic": "median over rounds of the mean call in a round; min and max of the rounds beside",
        "max_relative_error_fp32": errors,
        "network_ms": total,
        "network_ms_over_gathered": {name: total[name] / total["gathered"] for name in fns},
        "layers": layers,
    }


def _cpu_name() -> str:
    from dawnpipe.common.machine import cpu_summary

    return f"{cpu_summary()}, {torch.get_num_threads()} threads"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=tuple(DTYPES), default=None, help="default: fp16 on CUDA, else bf16")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    precision = args.precision or ("fp16" if args.device == "cuda" else "bf16")
    result = measure(args.device, precision, args.width, args.batch, args.rounds, args.calls)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

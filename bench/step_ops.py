"""Dispatcher ops and host syncs per training step, counted on any CPU (no GPU needed).

    python bench/step_ops.py [--width 0.125] [--batch 64] [--steps 32] [--precision fp32,bf16]

Every aten op the trainer issues (views included) is counted with a ``TorchDispatchMode`` while ``train`` runs one
epoch of N steps and one of 2N steps on the same synthetic images; the difference divided by N is the per-step
count, so data loading, whitening, the final evaluation and the manifest cancel out. On a GPU each op is a kernel
launch plus Python on the host (about 25 us each on the lent H200: the whole step at batch 512), so this count is
the step's floor there. Host syncs are the ops that read a device value back (``_local_scalar_dense``: ``.item()``,
``float(tensor)``, ``if tensor``; ``nonzero``; copies to the CPU), counted the same way. bf16 autocast stands for
the casts fp16 autocast makes on CUDA.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.item")


class OpCounter(TorchDispatchMode):
    """Counts every aten op by name (overload stripped) that reaches the dispatcher while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def count_training(images_folder: Path, steps: int, width: float, batch: int, precision: str, out: Path,
                   kernel: str | None = None, **options) -> collections.Counter[str]:  # fmt: skip
    """Ops of one ``train`` call of one epoch of ``steps`` steps on the image folder (no hold-out, no compile), with
    ghost-BN kernel ``kernel`` (default: this device's)."""
    from dawnpipe.train.api import config_from_options
    from dawnpipe.train.trainer import train

    cfg = config_from_options(data=images_folder, epochs=1, batch_size=batch, width=width, train_limit=steps * batch,
                              test_limit=64, out=out, name=f"ops-{steps}-{precision}", device="cpu", holdout=0,
                              precision=precision, overwrite=True, whitening_images=batch,
                              **options)  # fmt: skip  # the same whitening work at N and 2N steps: it cancels
    from dawnpipe.train.model import force_ghost_kernel

    with force_ghost_kernel(kernel) if kernel else contextlib.nullcontext(), OpCounter() as counter:
        train(cfg, progress=False)
    return counter.ops


def per_step(images_folder: Path, steps: int, width: float, batch: int, precision: str, out: Path,
             kernel: str | None = None, **options) -> dict:  # fmt: skip
    """Per-step op counts by name (2N steps minus N steps, over N), their total, and host syncs per step."""
    one = count_training(images_folder, steps, width, batch, precision, out, kernel, **options)
    two = count_training(images_folder, 2 * steps, width, batch, precision, out, kernel, **options)
    diff = {name: (two[name] - one[name]) / steps for name in set(one) | set(two) if two[name] != one[name]}
    syncs = sum(v for name, v in diff.items() if name in SYNC_OPS)
    return {
        "total": sum(diff.values()),
        "host_syncs": syncs,
        "by_op": dict(sorted(diff.items(), key=lambda kv: -kv[1])),
    }


def synthetic_folder(root: Path, images: int) -> Path:
    """A small learnable image folder (the test suite's colour task), enough for 2N steps."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_images, write_image_folder  # the suite's data maker: no real data needed

    per_class = -(-images // 4)
    return write_image_folder(root, {"train": make_images(per_class, 1), "test": make_images(16, 2)})


def main() -> None:
    from bench.common import write_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--precision", default="fp32,bf16")
    parser.add_argument("--ghost-kernel", default="gathered,sliced",
                        help="ghost-BN kernels to count with (gathered: CUDA's; sliced: the CPU's)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = {"width": args.width, "batch": args.batch, "steps": args.steps, "statistic": "aten ops per step "
              "(views included): (ops of 2N steps - ops of N steps) / N", "kernels": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = synthetic_folder(Path(tmp) / "data", 2 * args.steps * args.batch)
        for kernel in args.ghost_kernel.split(","):
            result["kernels"][kernel] = {
                precision: per_step(folder, args.steps, args.width, args.batch, precision, Path(tmp) / "runs", kernel)
                for precision in args.precision.split(",")
            }
    write_result("step_ops", result)


if __name__ == "__main__":
    main()

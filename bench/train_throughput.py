"""Training throughput of the trainer against a bare forward/backward/step loop, measured in one run.

    python bench/train_throughput.py [--steps 8] [--width 1.0] [--rounds 2]

Both use the same ResNet-9, batch 512, channels_last and autocast (bf16 on this CPU, fp16 on CUDA). The
trainer's figure comes from its own clock over full epochs (augmentation, LR schedule, EMA included); the bare
loop times only forward, loss, backward and optimizer step. Rounds alternate so drift hits both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import data_source, write_result  # noqa: E402
from dawnpipe.common.device import choose_device  # noqa: E402
from dawnpipe.train.api import config_from_options  # noqa: E402
from dawnpipe.train.model import ModelConfig, ResNet9  # noqa: E402
from dawnpipe.train.trainer import train  # noqa: E402


def bare_loop(width: float, batch: int, steps: int) -> float:
    """images/s of forward + loss + backward + SGD step on fixed device-resident data."""
    dev = choose_device("auto")
    model = ResNet9(ModelConfig(width=width)).to(dev.device, memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, foreach=True)
    x = torch.randn(batch, 3, 32, 32, device=dev.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev.device)
    autocast = torch.autocast(dev.device.type, dev.autocast_dtype) if dev.autocast_dtype else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    if dev.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def trainer(width: float, batch: int, steps: int, data: str | None, out: Path) -> float:
    """images/s the trainer reports for one epoch of ``steps`` steps."""
    cfg = config_from_options(
        data=data,
        epochs=1,
        batch_size=batch,
        width=width,
        train_limit=batch * steps,
        test_limit=500,
        out=out,
        holdout=0,  # every training image trains: exactly ``steps`` steps
    )
    return train(cfg, progress=False).metrics["train_images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    data = data_source()
    if data is None:
        sys.exit("bench/train_throughput.py needs CIFAR-10: set DAWNPIPE_BENCH_DATA or place ../shared/data")
    bare, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        trainer(args.width, args.batch, 1, data, Path(tmp))  # decode/cache the data outside the timed rounds
        for _ in range(args.rounds):
            bare.append(bare_loop(args.width, args.batch, args.steps))
            ours.append(trainer(args.width, args.batch, args.steps, data, Path(tmp)))
    write_result(
        "train_throughput",
        {
            "device": choose_device("auto").describe(),
            "batch": args.batch,
            "steps": args.steps,
            "width": args.width,
            "bare_images_per_s": bare,
            "trainer_images_per_s": ours,
            "trainer_over_bare": [o / b for o, b in zip(ours, bare, strict=True)],
            "best_ratio": max(ours) / max(bare),
        },
    )


if __name__ == "__main__":
    main()

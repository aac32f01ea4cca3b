"""Training throughput at fp32 against bf16 on this CPU, through the trainer, in interleaved rounds.

    python bench/train_precision.py [--width 1.0] [--batch 256] [--steps 6] [--rounds 3]

Each round trains one short epoch (``steps`` steps of ``batch`` images of the real JPEG CIFAR-10, augmentation, the
one-cycle schedule and the EMA included) at fp32 and then at bf16 (``--precision``), in alternating order, and takes
the trainer's own images/s for the epoch (warm: the data is decoded and cached before round 1, and each process
compiles nothing). The ratio is bf16 over fp32 per round. Where the CPU has no native bf16, bf16 is emulated and the
ratio says what that costs. `auto` precision picks bf16 on a CPU only where it has it natively (common.precision);
this is the figure behind that choice, with the CPU named.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import data_source, write_result  # noqa: E402
from dawnpipe.train.api import config_from_options  # noqa: E402
from dawnpipe.train.trainer import train  # noqa: E402


def epoch_images_per_s(precision: str, width: float, batch: int, steps: int, data: str, out: Path) -> float:
    """The trainer's images/s over one epoch of ``steps`` steps at ``precision``."""
    cfg = config_from_options(data=data, epochs=1, batch_size=batch, width=width, train_limit=batch * steps,
                              test_limit=500, out=out, holdout=0, device="cpu", precision=precision,
                              name=f"{precision}", overwrite=True)  # fmt: skip
    return train(cfg, progress=False).metrics["train_images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = data_source()
    if data is None:
        sys.exit("bench/train_precision.py needs CIFAR-10: set DAWNPIPE_BENCH_DATA or place ../shared/data")
    figures: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        epoch_images_per_s("fp32", args.width, args.batch, 1, data, Path(tmp))  # decode and cache the data first
        for r in range(args.rounds):
            for precision in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
                figures[precision].append(epoch_images_per_s(precision, args.width, args.batch, args.steps, data,
                                                             Path(tmp)))  # fmt: skip
    ratios = [b / f for b, f in zip(figures["bf16"], figures["fp32"], strict=True)]
    write_result(
        "train_precision",
        {
            "width": args.width,
            "batch": args.batch,
            "steps_per_round": args.steps,
            "rounds": args.rounds,
            "threads": torch.get_num_threads(),
            "statistic": "trainer images/s over one warm epoch per round (augmentation, schedule, EMA included)",
            "fp32_images_per_s": figures["fp32"],
            "bf16_images_per_s": figures["bf16"],
            "bf16_over_fp32_per_round": ratios,
            "bf16_over_fp32_range": [min(ratios), max(ratios)],
        },
    )


if __name__ == "__main__":
    main()

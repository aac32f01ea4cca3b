"""The CPU paths of one trained run side by side: onnxruntime fp32 and int8 exports, PyTorch eager.

    python bench/precision.py RUN_DIR [--batch 256] [--rounds 5] [--threads 2]

Every row runs in this one process, interleaved per round through the shared protocol (infer/latency.py): the
same images, the same thread count. Reported per row: images/s at --batch (and its per-round medians), batch-1
mean/p50/p99, and the int8/fp32 ratios per round, so a ratio is read from one run on one machine. PyTorch runs
at its `auto` precision (bf16 autocast on a CPU with native bf16, else fp32) and, labelled as such, at bf16.
Missing exports are made first (int8 calibrated on the run's training images).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result  # noqa: E402
from dawnpipe.export.api import ExportConfig, export  # noqa: E402
from dawnpipe.infer.backends import load  # noqa: E402
from dawnpipe.infer.latency import Protocol, measure_rows  # noqa: E402
from dawnpipe.train.checkpoint import load_checkpoint  # noqa: E402
from dawnpipe.train.data import load_cifar  # noqa: E402


def _onnx(run_dir: Path, precision: str) -> Path:
    path = run_dir / f"resnet9-ema-none-{precision}.onnx"
    return path if path.exists() else export(ExportConfig(source=str(run_dir), precision=precision)).onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    data = load_checkpoint(args.run_dir)["data"]
    images = load_cifar(data["source"], trusted_sha256=data["sha256"], test_limit=2048).test_x
    paths = {p: _onnx(args.run_dir, p) for p in ("fp32", "int8")}
    with (
        load(paths["fp32"], threads=args.threads) as fp32,
        load(paths["int8"], threads=args.threads) as int8,
        load(args.run_dir, "torch", threads=args.threads) as eager,
        load(args.run_dir, "torch", precision="bf16", threads=args.threads) as bf16,
    ):
        runs = {
            "onnxruntime_fp32": fp32.infer,
            "onnxruntime_int8": int8.infer,
            f"torch_{eager.precision}": eager.infer,
            "torch_bf16": bf16.infer,
        }
        bulk = measure_rows(runs, images, batch=args.batch, protocol=Protocol(args.rounds, 2, 0.0, 1))
        single = measure_rows(runs, images, batch=1, protocol=Protocol(args.rounds, 40))
    per_round = {name: t.round_p50_ms for name, t in bulk.items()}
    fp32_rounds, int8_rounds = per_round["onnxruntime_fp32"], per_round["onnxruntime_int8"]
    write_result(
        "precision",
        {
            "run": str(args.run_dir),
            "threads": args.threads,
            "batch": args.batch,
            "images_per_s": {name: t.images_per_s for name, t in bulk.items()},
            "round_p50_ms_per_image": per_round,
            "int8_speedup_per_round": [f / i for f, i in zip(fp32_rounds, int8_rounds, strict=True)],
            "batch1": {name: t.to_dict() for name, t in single.items()},
            "int8_over_fp32_batch1_p50": single["onnxruntime_int8"].p50_ms / single["onnxruntime_fp32"].p50_ms,
            "torch_auto_precision": eager.precision,
            "images": "JPEG CIFAR-10 test images (first 2048, class-balanced)",
        },
    )


if __name__ == "__main__":
    main()

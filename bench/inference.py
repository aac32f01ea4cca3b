"""onnxruntime backend against a bare InferenceSession on the same file and batch, beside PyTorch eager.

    python bench/inference.py RUN_DIR [--batch 256] [--iters 10] [--rounds 3]

All three run in this one process, interleaved per round: the dawnpipe onnxruntime backend (input checks
included), a bare onnxruntime.InferenceSession on the same model file, and the PyTorch backend on the
checkpoint (bf16 autocast on this CPU). Batch-1 latency percentiles of every backend come from the shared
harness in infer/latency.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bench.common import write_result  # noqa: E402
from dawnpipe.export.api import ExportConfig, export  # noqa: E402
from dawnpipe.infer.backends import load  # noqa: E402
from dawnpipe.infer.latency import Protocol, measure_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-iters", type=int, default=200)
    args = parser.parse_args()
    onnx_path = args.run_dir / "resnet9-ema-none-fp32.onnx"
    if not onnx_path.exists():
        onnx_path = export(ExportConfig(source=str(args.run_dir))).onnx
    images = np.random.default_rng(0).integers(0, 256, size=(args.batch, 32, 32, 3), dtype=np.uint8)
    bare = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with load(onnx_path) as ours, load(args.run_dir, "torch") as eager:
        runs = {
            "dawnpipe_onnxruntime": ours.infer,
            "bare_onnxruntime": lambda x: bare.run(None, {"images": x}),
            "torch_eager": eager.infer,
        }
        # the shared protocol: rows interleaved in rounds, distinct inputs per call, spread flagged
        bulk = measure_rows(runs, images, batch=args.batch, protocol=Protocol(args.rounds, args.iters, 0.0, 2))
        results = {name: timing.round_p50_ms for name, timing in bulk.items()}  # per-round ms/image medians
        single = measure_rows(runs, images, batch=1, protocol=Protocol(args.rounds, args.latency_iters // args.rounds))
        latency = {name: timing.to_dict() for name, timing in single.items()}
        torch_precision = eager.precision
    write_result(
        "inference",
        {
            "model": str(onnx_path),
            "batch": args.batch,
            "round_p50_ms_per_image": results,
            "images_per_s": {name: timing.images_per_s for name, timing in bulk.items()},
            "ours_over_bare_per_round": [  # time ratio per round: above 1 = dawnpipe slower than the bare session
                o / b for o, b in zip(results["dawnpipe_onnxruntime"], results["bare_onnxruntime"], strict=True)
            ],
            "torch_precision": torch_precision,
            "batch1_latency": latency,
        },
    )


if __name__ == "__main__":
    main()

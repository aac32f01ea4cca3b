"""The CPU paths of one trained run side by side: onnxruntime fp32 (BatchNorm folded and not), symmetric int8
(TensorRT's form), asymmetric uint8 int8, OpenVINO fp32 and symmetric int8 (the same two files; where the
``openvino`` extra is installed) and, on a CPU with native bf16, OpenVINO computing the fp32 file in bf16, and
PyTorch eager.

    python bench/precision.py RUN_DIR [--batch 256] [--rounds 5] [--threads 2]

Every row runs in this one process, interleaved per round through the shared protocol (infer/latency.py): the
same images, the same thread count. Reported per row: images/s at --batch (and its per-round medians) and
batch-1 mean/p50/p99; the ratios per round (int8/fp32, symmetric/asymmetric, folded/unfolded), so a ratio is read
from one run on one machine; and, on all test images, each int8 graph's top-1 agreement with fp32 and its paired
accuracy difference (exact 95% interval). PyTorch runs at its `auto` precision (bf16 autocast on a CPU with
native bf16, else fp32). Missing exports are made first (int8 calibrated on the run's training images); the
unfolded fp32 graph goes to RUN_DIR/bench-unfolded/.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result  # noqa: E402
from dawnpipe.common.machine import cpu_features, cpu_summary  # noqa: E402
from dawnpipe.costs.stats import paired_difference  # noqa: E402
from dawnpipe.export.api import ExportConfig, export  # noqa: E402
from dawnpipe.export.config import Int8Spec  # noqa: E402
from dawnpipe.infer.backends import load  # noqa: E402
from dawnpipe.infer.latency import Protocol, measure_rows  # noqa: E402
from dawnpipe.train.checkpoint import load_checkpoint  # noqa: E402
from dawnpipe.train.data import load_cifar  # noqa: E402

ROWS = {  # row name -> (precision, folded)
    "onnxruntime_fp32": ("fp32", True),
    "onnxruntime_fp32_unfolded": ("fp32", False),
    "onnxruntime_int8": ("int8", True),
    "onnxruntime_int8_asym": ("int8-asym", True),
}


def _onnx(run_dir: Path, precision: str, folded: bool, min_agreement: float) -> Path:
    out = run_dir if folded else run_dir / "bench-unfolded"
    path = out / f"resnet9-ema-none-{precision}.onnx"
    if path.exists():
        return path
    int8 = Int8Spec(min_agreement=min_agreement)
    return export(ExportConfig(source=str(run_dir), precision=precision, fold_bn=folded, out=str(out), int8=int8)).onnx


def _ratios(top: list[float], bottom: list[float]) -> list[float]:
    """Per-round throughput ratio top/bottom from per-round ms per image (bottom's time over top's)."""
    return [b / t for t, b in zip(top, bottom, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-agreement", type=float, default=Int8Spec.min_agreement,
                        help="the int8 export's top-1 agreement check; lower it only to time a briefly trained "
                        "model (recorded with the result)")  # fmt: skip
    args = parser.parse_args()
    data = load_checkpoint(args.run_dir)["data"]
    test = load_cifar(data["source"], trusted_sha256=data["sha256"])
    images = test.test_x[:2048]
    paths = {name: _onnx(args.run_dir, *spec, args.min_agreement) for name, spec in ROWS.items()}
    opened = {name: load(path, threads=args.threads) for name, path in paths.items()}
    if importlib.util.find_spec("openvino") is not None:  # the same fp32 and symmetric int8 files, in OpenVINO
        for precision in ("fp32", "int8"):
            opened[f"openvino_{precision}"] = load(paths[f"onnxruntime_{precision}"], "openvino", threads=args.threads)
        if cpu_features().get("bf16_native"):  # the fp32 file computed in bf16, OpenVINO's own default on such CPUs
            opened["openvino_bf16"] = load(paths["onnxruntime_fp32"], "openvino", threads=args.threads,
                                           precision="bf16")  # fmt: skip
    eager = load(args.run_dir, "torch", threads=args.threads)
    try:
        runs = {name: backend.infer for name, backend in opened.items()}
        runs[f"torch_{eager.precision}"] = eager.infer
        bulk = measure_rows(runs, images, batch=args.batch, protocol=Protocol(args.rounds, 2, 0.0, 1))
        single = measure_rows(runs, images, batch=1, protocol=Protocol(args.rounds, 40))
        logits = {name: backend.infer(test.test_x) for name, backend in opened.items()}
        described = {name: backend.describe() for name, backend in opened.items()}
    finally:
        for backend in (*opened.values(), eager):
            backend.close()
    rounds = {name: t.round_p50_ms for name, t in bulk.items()}
    fp32 = logits["onnxruntime_fp32"]
    against_fp32 = {}
    for name in [n for n in logits if n != "onnxruntime_fp32"]:
        hits, base = logits[name].argmax(1) == test.test_y, fp32.argmax(1) == test.test_y
        against_fp32[name] = {
            "top1_agreement": float((logits[name].argmax(1) == fp32.argmax(1)).mean()),
            "max_abs_logit_diff": float(abs(logits[name] - fp32).max()),
            "accuracy": float(hits.mean()),
            "fp32_accuracy": float(base.mean()),
            "paired_difference": paired_difference([hits], [base]).to_dict(),
        }
    single_p50 = {name: t.p50_ms for name, t in single.items()}
    ratios = {
        "int8_over_fp32": _ratios(rounds["onnxruntime_int8"], rounds["onnxruntime_fp32"]),
        "int8_asym_over_fp32": _ratios(rounds["onnxruntime_int8_asym"], rounds["onnxruntime_fp32"]),
        "int8_over_int8_asym": _ratios(rounds["onnxruntime_int8"], rounds["onnxruntime_int8_asym"]),
        "fp32_folded_over_unfolded": _ratios(rounds["onnxruntime_fp32"], rounds["onnxruntime_fp32_unfolded"]),
    }
    p50_ratios = {
        "int8_over_fp32": single_p50["onnxruntime_int8"] / single_p50["onnxruntime_fp32"],
        "int8_asym_over_fp32": single_p50["onnxruntime_int8_asym"] / single_p50["onnxruntime_fp32"],
    }
    openvino = {}
    if "openvino_int8" in rounds:
        ratios["openvino_int8_over_onnxruntime_int8"] = _ratios(rounds["openvino_int8"], rounds["onnxruntime_int8"])
        ratios["openvino_fp32_over_onnxruntime_fp32"] = _ratios(rounds["openvino_fp32"], rounds["onnxruntime_fp32"])
        ratios["openvino_int8_over_onnxruntime_fp32"] = _ratios(rounds["openvino_int8"], rounds["onnxruntime_fp32"])
        p50_ratios["openvino_int8_over_onnxruntime_int8"] = single_p50["openvino_int8"] / single_p50["onnxruntime_int8"]
        p50_ratios["openvino_fp32_over_onnxruntime_fp32"] = single_p50["openvino_fp32"] / single_p50["onnxruntime_fp32"]
        openvino = {name: described[name]["openvino"] for name in described if name.startswith("openvino")}
    if "openvino_bf16" in rounds:
        ratios["openvino_bf16_over_onnxruntime_fp32"] = _ratios(rounds["openvino_bf16"], rounds["onnxruntime_fp32"])
        ratios["openvino_bf16_over_openvino_fp32"] = _ratios(rounds["openvino_bf16"], rounds["openvino_fp32"])
        p50_ratios["openvino_bf16_over_onnxruntime_fp32"] = single_p50["openvino_bf16"] / single_p50["onnxruntime_fp32"]
    write_result(
        "precision",
        {
            "run": str(args.run_dir),
            "cpu_summary": cpu_summary(cpu_features()),
            "threads": args.threads,
            "batch": args.batch,
            "int8_export_min_agreement": args.min_agreement,
            "images_per_s": {name: t.images_per_s for name, t in bulk.items()},
            "round_p50_ms_per_image": rounds,
            "per_round_throughput_ratio": ratios,
            "batch1": {name: t.to_dict() for name, t in single.items()},
            "batch1_p50_ratio": p50_ratios,
            "openvino": openvino or "not installed (pip install -e '.[openvino]')",
            "against_fp32_on_all_test_images": against_fp32,
            "torch_auto_precision": eager.precision,
            "images": "JPEG CIFAR-10 test images: timing on the first 2048, agreement on all",
        },
    )


if __name__ == "__main__":
    main()

"""Seconds for a ResNet-9 export with all its checks, and fp16-vs-fp32 top-1 agreement on the full test set.

python bench/export_time.py RUN_DIR [--data PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import data_source, write_result  # noqa: E402
from dawnpipe.export.api import ExportConfig, export  # noqa: E402
from dawnpipe.infer.backends import load  # noqa: E402
from dawnpipe.train.data import load_cifar  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        fp32 = export(ExportConfig(source=str(args.run_dir), out=tmp))
        fp32_seconds = time.perf_counter() - start
        start = time.perf_counter()
        fp16 = export(ExportConfig(source=str(args.run_dir), out=tmp, precision="fp16"))
        fp16_seconds = time.perf_counter() - start
        data = load_cifar(args.data or data_source())
        with load(fp32.onnx) as full, load(fp16.onnx) as half:
            a = full.infer(data.test_x).argmax(1)
            b = half.infer(data.test_x).argmax(1)
    write_result(
        "export",
        {
            "fp32_export_seconds": fp32_seconds,
            "fp16_export_seconds": fp16_seconds,
            "fp32_check": fp32.checks["fp32"],
            "fp16_check": fp16.checks["fp16"],
            "fp16_vs_fp32_top1_agreement": float((a == b).mean()),
            "test_images": len(a),
            "fp32_accuracy": float((a == data.test_y).mean()),
            "fp16_accuracy": float((b == data.test_y).mean()),
        },
    )


if __name__ == "__main__":
    main()

"""INT8 ONNX by static quantization (onnxruntime.quantization), in the QDQ format TensorRT 10/11 also reads.

    onnx_int8 = quantize_int8(fp32_onnx, target, calibration_images, method="minmax")

What is quantized and why:
- Weights per output channel (symmetric int8), activations per tensor (asymmetric uint8): onnxruntime's
  recommended U8S8 form for x86 CPUs.
- Conv, MatMul, MaxPool and Add. CELU and BatchNormalization have no integer kernels and stay fp32 between
  dequantize/quantize pairs.
- The first convolution (the fixed PCA-whitening layer, under 1% of the FLOPs) stays fp32: its filters scale
  whitened directions by 1/sqrt(eigenvalue) and span too wide a range for 8 bits; quantizing it cost 20 points
  of accuracy on the JPEG copy of CIFAR-10 (3-epoch width-0.5 model), keeping it fp32 costs 0.2.
- Calibration on training images only, never test images: ``count`` class-balanced images run through the fp32
  graph, ranges set by ``method`` (minmax: observed min/max; percentile: 99.999th percentile; entropy: KL).
The input stays uint8 NHWC and the output float32 logits, so every caller sees the same contract.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
QUANTIZED_OPS = ("Conv", "MatMul", "MaxPool", "Add")
_QUANT_OP_PREFIXES = ("QuantizeLinear", "DequantizeLinear", "QLinear", "ConvInteger", "MatMulInteger")


def check_not_quantized(path: str | Path) -> None:
    """Refuse a graph that already holds quantization nodes: quantizing twice compounds the rounding."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    found = sorted({n.op_type for n in model.graph.node if n.op_type.startswith(_QUANT_OP_PREFIXES)})
    if found:
        raise DawnpipeError(
            f"{path} is already quantized (it holds {', '.join(found)})", "quantize the fp32 export instead"
        )


def check_calibration(count: int, method: str, available: int | None = None) -> None:
    """The calibration options, checked before any export work (against the data once it is known)."""
    if method not in CALIBRATION_METHODS:
        raise DawnpipeError(f"unknown calibration method {method!r}", f"use one of {', '.join(CALIBRATION_METHODS)}")
    if count < 1:
        raise DawnpipeError(f"--calibration-images {count} leaves nothing to calibrate on", "pass 64 or more")
    if available is not None and count > available:
        raise DawnpipeError(
            f"--calibration-images {count} is more than the {available} training images available",
            f"pass at most {available}",
        )


def quantize_int8(
    fp32_path: Path, target: Path, images: np.ndarray, *, method: str = "minmax", batch: int = 64
) -> dict[str, Any]:
    """Write the QDQ int8 version of ``fp32_path`` to ``target`` (a temporary path the caller renames).

    ``images``: uint8 [N, 32, 32, 3] training images. Returns what the metadata records about the calibration.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    check_not_quantized(fp32_path)
    chunks = [np.ascontiguousarray(images[i : i + batch]) for i in range(0, len(images), batch)]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(chunks)

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = next(self._it, None)
            return None if chunk is None else {"images": chunk}

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    with tempfile.TemporaryDirectory(prefix="dawnpipe-int8-") as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))  # shape inference + graph optimisation, as ORT advises
        first_conv = next(n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv")
        quantize_static(
            str(prepared),
            str(target),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=[first_conv],
            calibrate_method=methods[method],
        )
    return {
        "format": "QDQ",
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, asymmetric, per tensor",
        "ops": list(QUANTIZED_OPS),
        "kept_fp32": ["first convolution (whitening)", "Celu", "BatchNormalization"],
        "calibration_method": method,
        "calibration_images": int(len(images)),
        "calibration_source": "training images (class-balanced, never test images)",
    }

"""INT8 ONNX by static quantization (onnxruntime.quantization) in the QDQ format, in two schemes.

    onnx_int8 = quantize_int8(fp32_onnx, target, calibration_images, method="minmax", scheme="symmetric")
    export_int8(module, target, ...)  # export's composition: fp32 to a scratch file, quantized, stamped, checked

Schemes (INT8_SCHEMES):
- ``symmetric`` (precision ``int8``, the default and the one TensorRT builds): signed int8 activations and weights,
  every zero point 0, weights per output channel, activations per tensor, biases left in float. TensorRT 10/11
  reads Q/DQ only in this form (onnx-tensorrt's operator list: QuantizeLinear "y_zero_point must be 0",
  DequantizeLinear INT8/FP8/INT4 only, UINT8 only at the network's edges), so ``--trt`` and Triton's ``_trt``
  model always take this graph; export/trt_rules.py holds every export to those rules.
- ``asymmetric`` (precision ``int8-asym``): uint8 activations with per-tensor zero points, the U8S8 form
  onnxruntime's x86 kernels were written for. Kept beside the symmetric graph only for onnxruntime on CPUs where
  it measures faster (README "INT8"); TensorRT refuses it.

What is quantized and why:
- Conv, MatMul, MaxPool and Add. CELU has no integer kernel and stays fp32 between dequantize/quantize pairs.
  BatchNormalization is folded into the convolutions at export (export/fold.py), so none is left to dequantize.
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
from typing import TYPE_CHECKING, Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError

if TYPE_CHECKING:
    from dawnpipe.export.config import Int8Spec

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
INT8_SCHEMES = {"int8": "symmetric", "int8-asym": "asymmetric"}  # export precision -> quantization scheme
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
    fp32_path: Path,
    target: Path,
    images: np.ndarray,
    *,
    method: str = "minmax",
    scheme: str = "symmetric",
    batch: int = 64,
) -> dict[str, Any]:
    """Write the QDQ int8 version of ``fp32_path`` to ``target`` (a temporary path the caller renames).

    ``images``: uint8 [N, 32, 32, 3] training images; ``scheme``: symmetric | asymmetric (module docstring).
    Returns what the metadata records about the quantization.
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

    if scheme not in INT8_SCHEMES.values():
        raise DawnpipeError(f"unknown int8 scheme {scheme!r}", f"use one of {', '.join(INT8_SCHEMES.values())}")
    symmetric = scheme == "symmetric"
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
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=[first_conv],
            calibrate_method=methods[method],
            extra_options={
                "ActivationSymmetric": symmetric,
                "WeightSymmetric": True,
                # TensorRT dequantizes only int8/fp8/int4: an int32 bias DQ would stop it; it fuses a float bias
                "QuantizeBias": not symmetric,
            },
        )
    return {
        "format": "QDQ",
        "scheme": scheme,
        "weights": "int8, symmetric (zero point 0), per output channel",
        "activations": "int8, symmetric (zero point 0), per tensor"
        if symmetric
        else "uint8, asymmetric (per-tensor zero point), per tensor",
        "bias": "float" if symmetric else "int32",
        "tensorrt": "buildable (signed int8, zero points 0)" if symmetric else "not buildable (uint8 activations)",
        "ops": list(QUANTIZED_OPS),
        "kept_fp32": ["first convolution (whitening)", "Celu"],
        "calibration_method": method,
        "calibration_images": int(len(images)),
        "calibration_source": "training images (class-balanced, never test images)",
    }


def calibration_images(payload: dict[str, Any], spec: Int8Spec) -> np.ndarray:
    """The class-balanced training images int8 ranges are set on; every option checked before any export work."""
    from dawnpipe.train.data import balanced_subset, load_cifar

    check_calibration(spec.calibration_images, spec.calibration_method)  # before the data is read
    own = payload.get("data", {})
    source = spec.calibration_data or own.get("source")
    if not source or not Path(source).expanduser().exists():
        raise DawnpipeError(
            f"int8 calibration needs the model's training images, and its data {source!r} is not here",
            "pass --calibration-data PATH to the CIFAR-10 copy it was trained on",
        )
    data = load_cifar(source, trusted_sha256=own.get("sha256"))
    check_calibration(spec.calibration_images, spec.calibration_method, available=len(data.train_y))
    return data.train_x[balanced_subset(data.train_y, spec.calibration_images)]


def export_int8(
    module, path: Path, opset: int, metadata: dict[str, Any], verify, images, spec: Int8Spec, scheme: str
) -> dict:
    """Export fp32 to a scratch folder, quantize it, stamp the metadata, check it, and rename it into place."""
    import onnx

    from dawnpipe.common.files import atomic_write
    from dawnpipe.export.onnx_export import export_onnx, stamp

    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dawnpipe-export-") as work:
        fp32 = Path(work) / "fp32.onnx"
        fp32_meta = {**metadata, "precision": "fp32"}
        export_onnx(module, fp32, opset=opset, metadata=fp32_meta, verify=lambda tmp: {})

        def write(tmp: Path) -> None:
            quantization = quantize_int8(fp32, tmp, images, method=spec.calibration_method, scheme=scheme)
            model = onnx.load(str(tmp))
            stamp(model, {**metadata, "quantization": quantization})
            onnx.save_model(model, str(tmp), save_as_external_data=False)
            onnx.checker.check_model(str(tmp), full_check=True)
            result.update(verify(tmp))

        atomic_write(path, write)
    return result

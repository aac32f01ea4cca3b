"""The export options as one frozen dataclass (torch-free, so the CLI can show its defaults without torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dawnpipe.export.tensorrt_build import EngineSpec

EXPORT_PRECISIONS = ("fp32", "fp16", "int8", "int8-asym")  # int8: symmetric, TensorRT-ready; int8-asym: uint8 CPU


@dataclass(frozen=True)
class Int8Spec:
    """Static INT8 calibration: how many training images, which range method, from which data."""

    calibration_images: int = 512  # class-balanced training images (never test images)
    calibration_method: str = "minmax"  # minmax | percentile | entropy
    calibration_data: str | None = None  # None = the data the checkpoint was trained on
    min_agreement: float = 0.97  # top-1 agreement with the fp32 reference the int8 graph must reach


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how to check it."""

    source: str  # run folder or checkpoint.pt
    weights: str = "ema"  # ema | raw
    tta: str = "none"  # none | flip | translate | flip-translate, baked into the graph
    shift: int = 1  # pixels, for the translate views
    precision: str = "fp32"  # fp32 | fp16 | int8 | int8-asym (static QDQ, calibrated on training images; quantize.py)
    fold_bn: bool = True  # BatchNorm merged into the convolution before it where exact (export/fold.py)
    opset: int = 17  # ONNX opset; 17 is read by TensorRT 8.6+ and every current onnxruntime
    trt: bool = False  # also build a TensorRT engine
    engine: EngineSpec = field(default_factory=EngineSpec)
    triton: str | None = None  # folder for a Triton model repository
    out: str | None = None  # output folder for artifacts and their manifest; None = the checkpoint's run folder
    check_images: int = 1000  # images (divided by the view count for TTA graphs, at least 128)
    fp32_tolerance: float = 1e-3  # max |logit difference| onnxruntime vs PyTorch for fp32
    fp16_min_agreement: float = 0.99  # top-1 agreement of the fp16 graph with fp32 on the check images
    int8: Int8Spec = field(default_factory=Int8Spec)
    force: bool = False  # replace a different model of the same name in the --triton repository
    allow_foreign: bool = False  # export a checkpoint its run's manifest does not list (marked in the metadata)
    allow_incomplete: bool = False  # export a checkpoint of an interrupted run (marked in the metadata)


def export_config(
    *,
    trt_opt_batch: int = EngineSpec.opt_batch,
    trt_max_batch: int = EngineSpec.max_batch,
    calibration_images: int = Int8Spec.calibration_images,
    calibration_method: str = Int8Spec.calibration_method,
    calibration_data: str | Path | None = None,
    **options: Any,
) -> ExportConfig:
    """ExportConfig from the command line's flat options: ``trt_*`` make the engine's profile (its tuned batch no
    larger than its largest), ``calibration_*`` the int8 calibration; paths are kept as strings (JSON)."""
    return ExportConfig(
        engine=EngineSpec(opt_batch=min(trt_opt_batch, trt_max_batch), max_batch=trt_max_batch),
        int8=Int8Spec(calibration_images, calibration_method, _text(calibration_data)),
        **{key: _text(value) if isinstance(value, Path) else value for key, value in options.items()},
    )


def _text(path: str | Path | None) -> str | None:
    return None if path is None else str(path)

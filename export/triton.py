"""A Triton Inference Server model repository for the exported artifacts.

    <repo>/resnet9_<weights>_<tta>_<precision>_onnx/config.pbtxt + labels.txt + 1/model.onnx
    <repo>/resnet9_<weights>_<tta>_<precision>_trt/config.pbtxt  + labels.txt + 1/model.plan (with an engine)

Inputs and outputs come from the model's contract: ``images`` UINT8 [32, 32, 3] (batch dimension implicit),
``logits`` FP32 [num_classes]; dynamic batching is on, with preferred sizes below max_batch_size.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import atomic_write, atomic_write_text, sha256_file


def config_pbtxt(name: str, platform: str, max_batch: int, num_classes: int) -> str:
    """The config.pbtxt text of one model."""
    preferred = ", ".join(str(b) for b in (8, 32, 128, 256) if b < max_batch)
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch}
input [
  {{
    name: "images"
    data_type: TYPE_UINT8
    dims: [ 32, 32, 3 ]
  }}
]
output [
  {{
    name: "logits"
    data_type: TYPE_FP32
    dims: [ {num_classes} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: 500
}}
instance_group [ {{ kind: {"KIND_GPU" if platform == "tensorrt_plan" else "KIND_AUTO"} }} ]
"""


def model_name(meta: dict[str, Any], kind: str) -> str:
    """Repository name that keeps exports apart: weights, TTA and precision, then the runtime."""
    return f"resnet9_{meta.get('weights', 'ema')}_{meta.get('tta_mode', 'none')}_{meta['precision']}_{kind}".replace(
        "-", "_"
    )


def write_repository(
    repo: Path, onnx_path: Path, engine_path: Path | None, meta: dict[str, Any], max_batch: int, *, force: bool = False
) -> list[Path]:
    """Lay out one model per runtime; refuse to replace a model of the same name made from another file."""
    written = []
    models = [(model_name(meta, "onnx"), "onnxruntime_onnx", onnx_path, "model.onnx")]
    if engine_path is not None:
        models.append((model_name(meta, "trt"), "tensorrt_plan", engine_path, "model.plan"))
    for name, platform, source, filename in models:
        folder = repo / name
        target = folder / "1" / filename
        if target.exists() and not force and sha256_file(target) != sha256_file(source):
            raise DawnpipeError(
                f"the Triton repository already holds a different model named {name} ({target})",
                "pass --force to replace it, or export into another --triton folder",
            )
        atomic_write(target, lambda tmp, s=source: shutil.copyfile(s, tmp))
        atomic_write_text(folder / "labels.txt", "\n".join(meta["classes"]) + "\n")
        config = folder / "config.pbtxt"
        atomic_write_text(config, config_pbtxt(name, platform, max_batch, len(meta["classes"])))
        written.append(config)
    return written

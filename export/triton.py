"""A Triton Inference Server model repository for the exported artifacts.

    <repo>/<name>_onnx/config.pbtxt + 1/model.onnx         platform onnxruntime_onnx
    <repo>/<name>_trt/config.pbtxt  + 1/model.plan         platform tensorrt_plan (when an engine was built)

Inputs and outputs come from the model's contract: ``images`` UINT8 [32, 32, 3] (batch dimension implicit),
``logits`` FP32 [num_classes]; dynamic batching is on, with preferred sizes below max_batch_size.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dawnpipe.common.files import atomic_write, atomic_write_text


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
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: 500
}}
instance_group [ {{ kind: {"KIND_GPU" if platform == "tensorrt_plan" else "KIND_AUTO"} }} ]
"""


def write_repository(
    repo: Path, name: str, onnx_path: Path, engine_path: Path | None, num_classes: int, max_batch: int
) -> list[Path]:
    """Lay out the repository; returns the config files written."""
    written = []
    models = [(f"{name}_onnx", "onnxruntime_onnx", onnx_path, "model.onnx")]
    if engine_path is not None:
        models.append((f"{name}_trt", "tensorrt_plan", engine_path, "model.plan"))
    for model_name, platform, source, filename in models:
        folder = repo / model_name
        atomic_write(folder / "1" / filename, lambda tmp, s=source: shutil.copyfile(s, tmp))
        config = folder / "config.pbtxt"
        atomic_write_text(config, config_pbtxt(model_name, platform, max_batch, num_classes))
        written.append(config)
    return written

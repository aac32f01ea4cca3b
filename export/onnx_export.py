"""ONNX export of a deployable module, with the checks every export must pass before it is kept.

The file is written under a temporary name, checked (onnx.checker full check, then onnxruntime against the
PyTorch reference on real-looking images), and only then renamed into place: a failed export never replaces
a good one.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import atomic_write

META_PREFIX = "dawnpipe."
MIN_OPSET = 13  # Celu and dynamic Gather as used here need 12+; 13 keeps Split/ReduceMax forms TensorRT likes


def max_opset() -> int:
    """Highest opset the installed TorchScript-based exporter can write."""
    from torch.onnx import _constants  # torch only where an export happens: the runtime path stays torch-free

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))


def check_opset(opset: int) -> int:
    """Return ``opset`` or raise the one-line error naming the range this torch can produce."""
    import torch

    top = max_opset()
    if not MIN_OPSET <= opset <= top:
        raise DawnpipeError(
            f"opset {opset} is not one the installed exporter (torch {torch.__version__}) can produce for this model",
            f"use --opset between {MIN_OPSET} and {top} (default 17)",
        )
    return opset


def export_onnx(
    module: Any,
    path: str | Path,
    *,
    opset: int,
    metadata: dict[str, Any],
    verify: Callable[[Path], dict[str, Any]],
) -> dict[str, Any]:
    """Export ``module`` (a torch.nn.Module: uint8 NHWC ``images`` -> ``logits``, dynamic batch) to one
    self-contained file. ``verify(tmp_path)`` runs the numeric checks and raises to reject the export; its result
    is returned.
    """
    import onnx

    results: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        model = onnx_graph(module, opset)
        stamp(model, metadata)
        onnx.save_model(model, str(tmp), save_as_external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)
        results.update(verify(tmp))

    try:
        atomic_write(path, write)
    except DawnpipeError:
        raise
    except onnx.checker.ValidationError as err:
        raise DawnpipeError(
            f"the exported graph fails onnx.checker ({str(err).splitlines()[0]})",
            "report this with the checkpoint; try another --opset",
        ) from None
    return results


def onnx_graph(module: Any, opset: int = 17) -> Any:
    """The ONNX graph (an in-memory ModelProto) of a deployable module: uint8 NHWC ``images`` -> ``logits``, dynamic
    batch. The one place dawnpipe turns a module into ONNX: every export writes it, and the FLOPs of a checkpoint
    are counted on it."""
    import io

    import onnx
    import torch

    check_opset(opset)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice; the checks decide
        # The TorchScript exporter: 10x faster here than the dynamo one and writes any opset from 13 up.
        torch.onnx.export(
            module,
            (torch.zeros(2, 32, 32, 3, dtype=torch.uint8),),
            buffer,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def stamp(model: Any, metadata: dict[str, Any]) -> None:
    """Make an ONNX model describe itself: dawnpipe metadata (replacing any), producer, doc string, and the
    static class dimension the exporter leaves symbolic after a TTA reduction."""
    from dawnpipe import __version__

    keep = [p for p in model.metadata_props if not p.key.startswith(META_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value if isinstance(value, str) else json.dumps(value)
    model.producer_name, model.producer_version = "dawnpipe", __version__
    model.model_version = 1  # the dawnpipe-onnx format version (see the "format" metadata)
    model.doc_string = (
        f"dawnpipe ResNet-9: uint8 NHWC RGB images -> float32 logits over {metadata.get('classes')}; "
        f"TTA {metadata.get('tta_mode', 'none')}, precision {metadata.get('precision', 'fp32')}"
    )
    classes = metadata.get("classes")
    if classes:
        dim = model.graph.output[0].type.tensor_type.shape.dim
        if len(dim) == 2:
            dim[1].Clear()
            dim[1].dim_value = len(classes)


def restamp(path: str | Path, updates: dict[str, Any]) -> None:
    """Rewrite an ONNX file's dawnpipe metadata with ``updates`` (the graph untouched), atomically."""
    import onnx

    meta = {**read_metadata(path), **updates}
    model = onnx.load(str(path))
    stamp(model, meta)
    atomic_write(path, lambda tmp: onnx.save_model(model, str(tmp), save_as_external_data=False))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """dawnpipe's metadata of an ONNX file (JSON values decoded), without loading the weights."""
    from dawnpipe.export.trt_rules import load_onnx

    model = load_onnx(path)  # one-line errors for a missing, empty, truncated or foreign file
    meta = {}
    for prop in model.metadata_props:
        if prop.key.startswith(META_PREFIX):
            key = prop.key[len(META_PREFIX) :]
            try:
                meta[key] = json.loads(prop.value)
            except json.JSONDecodeError:
                meta[key] = prop.value
    return meta


def onnxruntime_module():
    """``import onnxruntime``, or the one-line error naming the two ways to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise DawnpipeError(
            "onnxruntime is not installed",
            "pip install 'dawnpipe[cpu]' (CPU) or 'dawnpipe[gpu]' (CUDA/TensorRT providers), never both",
        ) from None
    return onnxruntime


def run_onnxruntime(path: str | Path, images: np.ndarray, batch: int = 250) -> np.ndarray:
    """Logits of an ONNX file on CPU onnxruntime (the reference runtime for every export check)."""
    ort = onnxruntime_module()

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [session.run(["logits"], {"images": images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    )


def compare_logits(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """Maximum absolute logit difference and top-1 agreement."""
    return {
        "max_abs_diff": float(np.abs(got - want).max()),
        "top1_agreement": float((got.argmax(1) == want.argmax(1)).mean()),
        "images": int(len(got)),
    }

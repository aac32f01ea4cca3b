"""An exported ONNX file in OpenVINO on the CPU: the runtime users pick on Intel CPUs, and a second, independent
consumer of the explicit Q/DQ int8 graph (the one TensorRT takes).

Settings, stated in every row (``describe``): the OpenVINO version, the CPU plugin's device name, the performance
hint (LATENCY: one stream, one synchronous request at a time, as onnxruntime's session runs), the thread count
(set exactly as onnxruntime rows set theirs), and the inference precision (f32: OpenVINO would otherwise run an fp32
graph in bf16 on CPUs that have it). For an int8 graph the runtime model says which convolutions and fully
connected layers really run in int8; their count is recorded with the row.

The compiled model is cached beside the artifact (``openvino-cache/<file>.blob`` and a JSON sidecar). The sidecar
records the artifact's sha256, the blob's sha256, the OpenVINO version, the device and the settings; a cache whose
record does not match all of them (another artifact of the same name, another version, a damaged blob) is rebuilt,
never used. The cache is a start-up saving only: a folder that cannot be written simply gets none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import BackendRefused, DawnpipeError
from dawnpipe.infer.backend import Backend
from dawnpipe.infer.metadata import onnx_metadata

HINT = "LATENCY"
CACHE_DIR = "openvino-cache"
INSTALL = "pip install 'dawnpipe[openvino]' (or pip install -e '.[openvino]' in a checkout)"


def openvino_module() -> Any:
    """``import openvino``, or the one-line error naming the extra that installs it."""
    try:
        import openvino
    except ImportError:
        raise DawnpipeError("OpenVINO is not installed", INSTALL) from None
    return openvino


class OpenVinoBackend(Backend):
    """A dawnpipe ONNX file compiled by OpenVINO for this CPU (fp32, fp16 or symmetric int8; TTA inside or not)."""

    name = "openvino"

    def __init__(self, path: Path, threads: int = 0) -> None:
        ov = openvino_module()
        super().__init__(path, onnx_metadata(path), threads)
        self.version = ov.__version__.split("-")[0]
        self.settings = {"PERFORMANCE_HINT": HINT, "INFERENCE_NUM_THREADS": self.threads,
                         "INFERENCE_PRECISION_HINT": "f32"}  # fmt: skip
        core = ov.Core()
        self.cpu = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
        self._compiled, self.cache = self._compile(core)
        self._request = self._compiled.create_infer_request()
        self.int8_layers = int8_layers(self._compiled.get_runtime_model())

    def _compile(self, core: Any) -> tuple[Any, str]:
        """The compiled model, from the checked cache when it matches this artifact, else compiled afresh."""
        blob, record = _cache_paths(self.path)
        wanted = self._cache_record()
        cached = _read_cache(blob, record, wanted)
        if cached is not None:
            try:
                return core.import_model(cached, "CPU", self.settings), "used (checked)"
            except Exception:  # a blob this OpenVINO cannot import after all: rebuilt below
                pass
        try:
            compiled = core.compile_model(core.read_model(str(self.path)), "CPU", self.settings)
        except Exception as err:  # OpenVINO raises its own types for ops it lacks and broken graphs
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise BackendRefused(
                f"OpenVINO {self.version} cannot compile {self.path.name} ({first})",
                "run it with --backend onnxruntime, or re-export it with `dawnpipe export`",
            ) from None
        return compiled, _write_cache(compiled, blob, record, wanted)

    def _cache_record(self) -> dict[str, Any]:
        return {"artifact_sha256": self.sha256, "openvino": self.version, "device": self.cpu, "settings": self.settings}

    def _run(self, images: np.ndarray) -> np.ndarray:
        self._request.infer({0: images})
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "openvino": {
                "version": self.version,
                "device": self.cpu,
                "performance_hint": HINT,
                "inference_precision": "f32",
                "threads": self.threads,
                "compiled_model_cache": self.cache,
                "int8_layers": self.int8_layers,
            },
        }


def int8_layers(runtime_model: Any) -> dict[str, int]:
    """How many convolutions and fully connected layers the compiled model runs in int8, of how many."""
    counts = {"convolutions": 0, "convolutions_int8": 0, "fully_connected": 0, "fully_connected_int8": 0}
    for op in runtime_model.get_ordered_ops():
        info = op.get_rt_info()  # values are OVAny: astype(str) reads them
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        precision = info["runtimePrecision"].astype(str).lower() if "runtimePrecision" in info else ""
        key = {"Convolution": "convolutions", "FullyConnected": "fully_connected"}.get(kind)
        if key:
            counts[key] += 1
            counts[f"{key}_int8"] += precision in ("i8", "u8")
    return counts


def _cache_paths(path: Path) -> tuple[Path, Path]:
    folder = path.parent / CACHE_DIR
    return folder / f"{path.name}.blob", folder / f"{path.name}.json"


def _read_cache(blob: Path, record: Path, wanted: dict[str, Any]) -> bytes | None:
    """The cached blob's bytes when its record matches ``wanted`` and its own sha256, else None (untrusted files:
    any doubt means a rebuild)."""
    import hashlib

    try:
        saved = json.loads(record.read_text())
        data = blob.read_bytes()
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(saved, dict) or {k: saved.get(k) for k in wanted} != wanted:
        return None
    return data if saved.get("blob_sha256") == hashlib.sha256(data).hexdigest() else None


def _write_cache(compiled: Any, blob: Path, record: Path, wanted: dict[str, Any]) -> str:
    import hashlib

    from dawnpipe.common.files import atomic_write, atomic_write_json

    try:
        exported = compiled.export_model()  # bytes in some releases, a BytesIO in others (2026.4)
        data = exported.getvalue() if hasattr(exported, "getvalue") else bytes(exported)
        atomic_write(blob, lambda tmp: tmp.write_bytes(data))
        atomic_write_json(record, {**wanted, "blob_sha256": hashlib.sha256(data).hexdigest()})
    except (OSError, RuntimeError, DawnpipeError):  # read-only or full: the cache is only a start-up saving
        return "none (the folder cannot be written)"
    return "written"


def agreement_with_onnxruntime(backend: OpenVinoBackend, images: np.ndarray, logits: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement of OpenVINO's plain-view ``logits`` with onnxruntime fp32 on the same ``images``: the run's
    fp32 export of the same TTA (found through the folder's manifest, its sha256 checked) where there is one, else
    this very file on onnxruntime. A second runtime reading the same graph checks it independently."""
    from dawnpipe.export.onnx_export import run_onnxruntime

    reference = _fp32_reference(backend)
    want = run_onnxruntime(reference, images)
    return {
        "reference": f"onnxruntime CPUExecutionProvider, {reference.name}",
        "top1": float((want.argmax(1) == np.asarray(logits).argmax(1)).mean()),
        "images": int(len(images)),
    }


def _fp32_reference(backend: OpenVinoBackend) -> Path:
    from dawnpipe.common.files import sha256_file
    from dawnpipe.common.manifest import read_manifest

    try:
        artifacts = read_manifest(backend.path.parent).get("artifacts", {})
    except DawnpipeError:
        return backend.path
    for entry in artifacts.values():
        same = (entry.get("kind"), entry.get("precision"), entry.get("tta_mode"), entry.get("run_id")) == (
            "onnx", "fp32", backend.graph_tta, backend.meta.get("run_id")
        )  # fmt: skip
        path = backend.path.parent / str(entry.get("path", ""))
        if same and path.is_file() and sha256_file(path) == entry.get("sha256"):
            return path
    return backend.path

"""An exported ONNX file in OpenVINO on the CPU: the runtime users pick on Intel CPUs, and a second, independent
consumer of the explicit Q/DQ int8 graph (the one TensorRT takes).

Settings. Asked for: the LATENCY hint (one stream, one synchronous request at a time, as onnxruntime's session
runs), the thread count onnxruntime rows get, hyper-threading allowed and thread pinning off (onnxruntime with an
explicit thread count pins nothing, so both leave the same cores to the OS), and the inference precision: f32 by
default (OpenVINO would otherwise run an fp32 graph in bf16 on CPUs that have it), or bf16 when asked for on a CPU
with native bf16 (refused elsewhere). What every row records (``describe``) is read back from the compiled model, not
echoed from the request: its inference precision, threads, streams, hyper-threading and pinning, and the precision
its convolutions really run in (the runtime model's layers). An fp16 artifact compiled at f32 says so: its
``compute_precision`` is f32. For an int8 graph the runtime model says which convolutions and fully connected layers
run in int8; their count is recorded with the row.

The compiled model is cached beside the artifact (``openvino-cache/<file>.blob`` and a JSON sidecar; a bf16
compilation of the file beside it as ``<file>.bf16.blob``). The sidecar
records the artifact's sha256, the blob's sha256, the OpenVINO version, the CPU's model and instruction-set flags (a
blob holds kernels for the instruction sets it was compiled on, and a VM can hide AVX-512 or AMX under the same
model name) and the settings. A cache whose record does not match (another artifact of the same name, another
version or CPU, a damaged blob) is rebuilt, and the row says why; a blob this OpenVINO writes but cannot import
again disables the cache for that file (recorded in the sidecar and the row) rather than being rewritten on every
run. The cache is a start-up saving only: a folder that cannot be written simply gets none.

Loading OpenVINO itself (missing, an install whose import fails, a ``Core`` that cannot start) is a BackendRefused
naming the install command, so ``eval`` says it in one line and a family records the backend as skipped.
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
INFERENCE_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # what an fp32 artifact may be compiled at
_ELEMENT = {"float32": "f32", "f32": "f32", "bfloat16": "bf16", "bf16": "bf16", "float16": "f16", "f16": "f16"}


def openvino_module() -> Any:
    """``import openvino``, or a BackendRefused naming the install command: missing, or installed but failing to
    import (a broken wheel, a missing shared library raise anything from ImportError to OSError)."""
    try:
        import openvino
    except ImportError:
        raise BackendRefused("OpenVINO is not installed", INSTALL) from None
    except Exception as err:  # a broken install: refused like a missing one, with what went wrong
        raise BackendRefused(f"OpenVINO is installed but fails to import ({_first_line(err)})", INSTALL) from None
    return openvino


def openvino_core() -> Any:
    """``openvino.Core()``, refused in one line when the runtime cannot start (no CPU plugin, a broken install)."""
    ov = openvino_module()
    try:
        return ov, ov.Core()
    except Exception as err:
        raise BackendRefused(f"OpenVINO fails to start its runtime ({_first_line(err)})", INSTALL) from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200] or type(err).__name__


class OpenVinoBackend(Backend):
    """A dawnpipe ONNX file compiled by OpenVINO for this CPU (fp32, fp16 or symmetric int8; TTA inside or not)."""

    name = "openvino"

    def __init__(self, path: Path, threads: int = 0, precision: str = "auto") -> None:
        meta = onnx_metadata(path)
        hint = _inference_precision(precision, meta.get("precision", "fp32"), path)
        ov, core = openvino_core()
        super().__init__(path, meta, threads)
        if hint == "bf16":
            self.precision = "bf16"  # an fp32 graph computed in bf16: its rows are bf16 rows of this artifact
        self.version = ov.__version__.split("-")[0]
        self.settings = {"PERFORMANCE_HINT": HINT, "INFERENCE_NUM_THREADS": self.threads,
                         "INFERENCE_PRECISION_HINT": hint, "ENABLE_HYPER_THREADING": True,
                         "ENABLE_CPU_PINNING": False}  # fmt: skip
        self.cpu = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
        self._compiled, self.cache = self._compile(core)
        self._request = self._compiled.create_infer_request()
        runtime = self._compiled.get_runtime_model()
        self.int8_layers = int8_layers(runtime)
        self.compiled = compiled_settings(self._compiled, runtime)
        # every figure names the threads OpenVINO really runs (read back); the request stays in describe()["asked"]
        self.threads = self.compiled["threads"] if isinstance(self.compiled["threads"], int) else self.threads

    def _compile(self, core: Any) -> tuple[Any, str]:
        """The compiled model, from the checked cache when it matches this artifact, else compiled afresh."""
        blob, record = _cache_paths(self.path, self.settings["INFERENCE_PRECISION_HINT"])
        wanted = self._cache_record()
        cached, why = _read_cache(blob, record, wanted)
        if cached is not None:
            try:
                return core.import_model(cached, "CPU", self.settings), "used (checked)"
            except Exception as err:  # a blob of this very OpenVINO and CPU that it cannot import: never again
                why = f"disabled: OpenVINO {self.version} could not import its own blob ({_first_line(err)})"
                _disable_cache(record, wanted, why)
        try:
            compiled = core.compile_model(core.read_model(str(self.path)), "CPU", self.settings)
        except Exception as err:  # OpenVINO raises its own types for ops it lacks and broken graphs
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise BackendRefused(
                f"OpenVINO {self.version} cannot compile {self.path.name} ({first})",
                "run it with --backend onnxruntime, or re-export it with `dawnpipe export`",
            ) from None
        if why.startswith("disabled"):
            return compiled, why
        return compiled, _write_cache(compiled, blob, record, wanted, why)

    def _cache_record(self) -> dict[str, Any]:
        from dawnpipe.common.machine import cpu_features

        features = cpu_features()
        return {"artifact_sha256": self.sha256, "openvino": self.version, "device": self.cpu,
                "cpu_flags": features.get("flags"), "settings": self.settings}  # fmt: skip

    def _run(self, images: np.ndarray) -> np.ndarray:
        self._request.infer({0: images})
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "openvino": {
                "version": self.version,
                "device": self.cpu,
                "asked": {k: v for k, v in self.settings.items()},
                **self.compiled,
                "compiled_model_cache": self.cache,
                "int8_layers": self.int8_layers,
            },
        }


def compiled_settings(compiled: Any, runtime_model: Any) -> dict[str, Any]:
    """What the compiled model runs with, read back from it (never the request echoed): inference precision,
    threads, streams, hyper-threading, pinning, the performance hint, and the precision its convolutions and fully
    connected layers run in (the most common one is the row's ``compute_precision``)."""

    def read(name: str) -> Any:
        try:
            return compiled.get_property(name)
        except Exception:  # a property this release does not report: recorded as unknown
            return None

    precision = read("INFERENCE_PRECISION_HINT")
    layers: dict[str, int] = {}
    for op in runtime_model.get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in ("Convolution", "FullyConnected"):
            ran = info["runtimePrecision"].astype(str).lower() if "runtimePrecision" in info else "unknown"
            layers[ran] = layers.get(ran, 0) + 1
    return {
        "inference_precision": _ELEMENT.get(_element_name(precision), _element_name(precision)),
        "compute_precision": max(layers, key=layers.get) if layers else None,
        "layer_precisions": layers,
        "threads": _plain(read("INFERENCE_NUM_THREADS")),
        "streams": _plain(read("NUM_STREAMS")),
        "hyper_threading": _plain(read("ENABLE_HYPER_THREADING")),
        "cpu_pinning": _plain(read("ENABLE_CPU_PINNING")),
        "performance_hint": str(read("PERFORMANCE_HINT")),
    }


def _element_name(value: Any) -> str:
    """'float32' from an OpenVINO element type (its str is "<Type: 'float32'>"; get_type_name gives 'f32')."""
    if value is None:
        return "unknown"
    name = getattr(value, "get_type_name", None)
    return str(name()) if callable(name) else str(value)


def _plain(value: Any) -> Any:
    """A property value as JSON takes it (OpenVINO returns ints, bools and its own enum-like objects)."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


def _inference_precision(asked: str, artifact: str, path: Path) -> str:
    """The INFERENCE_PRECISION_HINT for an artifact: f32 (auto, fp32), bf16 for an fp32 graph where the CPU has native
    bf16; a one-line refusal otherwise. A reduced-precision artifact (fp16, int8) is compiled as exported (f32 hint:
    its own types decide, and its row reads back what ran)."""
    from dawnpipe.common.machine import cpu_features, cpu_summary

    if asked in ("auto", "fp32") or asked == artifact == "fp16":
        return "f32"
    if asked != "bf16" or artifact != "fp32":
        raise DawnpipeError(
            f"OpenVINO compiles {path.name} ({artifact}) as exported; --precision {asked} is not a choice for it",
            "drop --precision, or pass bf16 with an fp32 export (OpenVINO then computes it in bf16)",
        )
    if not cpu_features().get("bf16_native"):
        raise DawnpipeError(
            f"--precision bf16 on OpenVINO needs a CPU with native bf16 (AVX-512 BF16 or AMX); this one is "
            f"{cpu_summary()}",
            "drop --precision (f32), or run on a CPU with AVX-512 BF16 or AMX",
        )
    return "bf16"


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


def _cache_paths(path: Path, hint: str) -> tuple[Path, Path]:
    """One blob per artifact and inference precision: the f32 and bf16 compilations of one file would otherwise
    replace each other on every run."""
    folder = path.parent / CACHE_DIR
    stem = path.name if hint == "f32" else f"{path.name}.{hint}"
    return folder / f"{stem}.blob", folder / f"{stem}.json"


def _read_cache(blob: Path, record: Path, wanted: dict[str, Any]) -> tuple[bytes | None, str]:
    """(the cached blob's bytes, "") when its record matches ``wanted`` and its own sha256, else (None, why not):
    untrusted files, so any doubt means a rebuild, and the row says which doubt."""
    import hashlib

    try:
        saved = json.loads(record.read_text())
    except FileNotFoundError:
        return None, "none yet"
    except (OSError, ValueError, UnicodeDecodeError):
        return None, "its record was unreadable"
    if not isinstance(saved, dict):
        return None, "its record was unreadable"
    differ = [k for k in wanted if saved.get(k) != wanted[k]]
    if differ:
        return None, f"it was made for another {', '.join(differ)}"
    if isinstance(saved.get("disabled"), str):
        return None, saved["disabled"]
    try:
        data = blob.read_bytes()
    except OSError:
        return None, "its blob was missing"
    if saved.get("blob_sha256") != hashlib.sha256(data).hexdigest():
        return None, "its blob was damaged"
    return data, ""


def _write_cache(compiled: Any, blob: Path, record: Path, wanted: dict[str, Any], why: str) -> str:
    import hashlib

    from dawnpipe.common.files import atomic_write, atomic_write_json

    try:
        exported = compiled.export_model()  # bytes in some releases, a BytesIO in others (2026.4)
        data = exported.getvalue() if hasattr(exported, "getvalue") else bytes(exported)
        atomic_write(blob, lambda tmp: tmp.write_bytes(data))
        atomic_write_json(record, {**wanted, "blob_sha256": hashlib.sha256(data).hexdigest()})
    except (OSError, RuntimeError, DawnpipeError):  # read-only or full: the cache is only a start-up saving
        return "none (the folder cannot be written)"
    return "written" if why == "none yet" else f"rewritten ({why})"


def _disable_cache(record: Path, wanted: dict[str, Any], why: str) -> None:
    """Mark the cache of this artifact, OpenVINO and CPU as unusable, so later runs compile without rewriting it."""
    from dawnpipe.common.files import atomic_write_json

    try:
        atomic_write_json(record, {**wanted, "disabled": why})
    except (OSError, DawnpipeError):
        pass


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

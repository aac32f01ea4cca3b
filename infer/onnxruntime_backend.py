"""An exported ONNX file in onnxruntime, with the execution provider chosen (CPU, CUDA, TensorRT EP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.infer.backend import Backend
from dawnpipe.infer.metadata import onnx_metadata

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class OnnxRuntimeBackend(Backend):
    """An exported ONNX file in onnxruntime with the chosen execution provider."""

    name = "onnxruntime"

    def __init__(self, path: Path, provider: str = "auto", threads: int = 0) -> None:
        from dawnpipe.export.onnx_export import onnxruntime_module

        ort = onnxruntime_module()
        super().__init__(path, onnx_metadata(path), threads)
        chosen = choose_providers(provider, ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        settings = provider_options(chosen, self.precision, path.parent / "ort-trt-cache", self.max_batch)
        try:
            self._session = ort.InferenceSession(str(path), options, providers=list(zip(chosen, settings, strict=True)))
        except Exception as err:  # onnxruntime raises its own exception types for broken graphs
            raise DawnpipeError(
                f"onnxruntime could not load {path} ({str(err).splitlines()[0][:200]})", "re-export the model"
            ) from None
        _check_graph_io(self._session, self.meta, path)
        # get_available_providers() lists CUDA/TensorRT even when their libraries are missing; what the session
        # really runs on is get_providers() after creation
        self.provider = self._session.get_providers()[0]
        self.device = "cuda" if self.provider != "CPUExecutionProvider" else "cpu"
        if provider not in ("auto", "cpu") and self.provider == "CPUExecutionProvider":
            raise DawnpipeError(
                f"onnxruntime fell back to the CPU: {PROVIDERS[provider]} is listed but could not start",
                "install the CUDA/cuDNN libraries onnxruntime-gpu needs, or use --provider cpu",
            )

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(["logits"], {"images": images})[0]

    def describe(self) -> dict[str, Any]:
        # an explicit intra-op thread count leaves the threads unpinned (onnxruntime pins only when the count is left
        # to it), the arrangement OpenVINO rows ask for too, so a comparison runs both on the same cores
        return {**super().describe(), "provider": self.provider, "cpu_pinning": False}


def _check_graph_io(session: Any, meta: dict[str, Any], path: Path) -> None:
    """The real graph must take what the metadata promises: one uint8 [N, 32, 32, 3] input ``images`` and
    float32 ``logits`` with one column per class. A graph edited after export fails here, not mid-evaluation."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = list(meta["input_contract"].get("shape", [None, 32, 32, 3]))[1:]
    problem = None
    if len(inputs) != 1 or inputs[0].name != "images" or inputs[0].type != "tensor(uint8)":
        got = ", ".join(f"{i.name}: {i.type}" for i in inputs)
        problem = f"its graph takes ({got}), not the one uint8 input 'images' its metadata describes"
    elif len(inputs[0].shape) != 4 or list(inputs[0].shape[1:]) != shape:
        problem = f"its graph input has shape {inputs[0].shape}, not [N, {', '.join(map(str, shape))}]"
    elif not any(o.name == "logits" and o.type == "tensor(float)" for o in outputs):
        problem = "its graph has no float32 output 'logits'"
    else:
        width = next(o for o in outputs if o.name == "logits").shape[-1]
        if isinstance(width, int) and width != len(meta["classes"]):
            problem = f"its graph outputs {width} logits but its metadata names {len(meta['classes'])} classes"
    if problem:
        raise DawnpipeError(f"{path}: {problem}", "re-export it with `dawnpipe export`")


def choose_providers(provider: str, available: list[str]) -> list[str]:
    """The session's provider list: the named one, then the faster GPU fallbacks, then the CPU.

    ``auto`` = TensorRT EP > CUDA EP > CPU among those installed; CUDA stays between TensorRT and the CPU so the
    nodes TensorRT rejects still run on the GPU.
    """
    order = ["tensorrt", "cuda", "cpu"]
    if provider != "auto" and provider not in PROVIDERS:
        raise DawnpipeError(f"unknown provider {provider!r}", f"use one of auto, {', '.join(PROVIDERS)}")
    if provider != "auto" and PROVIDERS[provider] not in available:
        raise DawnpipeError(
            f"onnxruntime provider {PROVIDERS[provider]} is not installed (installed: {', '.join(available)})",
            "pick an installed one with --provider, or install onnxruntime-gpu for cuda/tensorrt",
        )
    start = 0 if provider == "auto" else order.index(provider)
    chosen = [PROVIDERS[name] for name in order[start:] if PROVIDERS[name] in available or name == "cpu"]
    return chosen


def provider_options(providers: list[str], precision: str, cache_dir: Path, max_batch: int) -> list[dict[str, Any]]:
    """Options per provider. The TensorRT EP builds fp16 kernels for an fp16 artifact, caches its engines beside
    the artifact (so a session does not rebuild them) and gets a profile covering every batch eval sends."""
    settings: list[dict[str, Any]] = []
    for name in providers:
        if name == PROVIDERS["tensorrt"]:
            settings.append(
                {
                    "trt_fp16_enable": precision == "fp16",
                    "trt_int8_enable": precision == "int8",  # explicit Q/DQ: no calibration table needed
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache_dir),
                    "trt_timing_cache_enable": True,
                    "trt_profile_min_shapes": "images:1x32x32x3",
                    "trt_profile_opt_shapes": "images:256x32x32x3",
                    "trt_profile_max_shapes": f"images:{max_batch}x32x32x3",
                }
            )
        else:
            settings.append({})
    return settings

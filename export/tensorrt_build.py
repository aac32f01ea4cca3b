"""TensorRT engine from an ONNX file through the TensorRT Python API (versions 10 and 11).

TensorRT 10 builds fp16 engines from the fp32 ONNX with ``BuilderFlag.FP16`` (weak typing); TensorRT 11
removed that flag and weak typing, so there the fp16 ONNX is parsed into a strongly typed network and the
precision comes from the graph itself. The timing cache is loaded, extended and saved, so rebuilding on the
same GPU takes seconds. An engine only runs on the GPU model and TensorRT version that built it, so both go
into the file name and the manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import atomic_write


@dataclass(frozen=True)
class EngineSpec:
    """Optimisation profile and build limits."""

    min_batch: int = 1  # images; smallest batch the engine accepts
    opt_batch: int = 256  # images; the batch TensorRT tunes kernels for
    max_batch: int = 1024  # images; largest batch the engine accepts
    workspace_gib: float = 2.0  # GiB of scratch memory the builder may use


def tensorrt_status() -> tuple[Any, dict[str, Any]]:
    """(tensorrt module, GPU facts), or a one-line error saying which of TensorRT and the GPU is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise DawnpipeError(
            "TensorRT is not installed (import tensorrt failed), so no engine was built",
            "pip install tensorrt (NVIDIA's index) on a machine with an NVIDIA GPU",
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise DawnpipeError(
            f"TensorRT {trt.__version__} is installed but no CUDA GPU is visible, so no engine was built",
            "run the export with --trt on a machine with an NVIDIA GPU",
        )
    props = torch.cuda.get_device_properties(0)
    return trt, {"tensorrt": trt.__version__, "gpu": props.name, "compute_capability": f"{props.major}.{props.minor}"}


def engine_name(stem: str, precision: str, gpu: dict[str, Any]) -> str:
    """File name that says what it holds: model, precision, GPU, compute capability, TensorRT major version."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", gpu["gpu"]).strip("_")
    major = gpu["tensorrt"].split(".")[0]
    return f"{stem}-{precision}-{slug}-sm{gpu['compute_capability'].replace('.', '')}-trt{major}.engine"


def build_engine(
    onnx_fp32: Path | None,
    onnx_fp16: Path | None,
    out_dir: Path,
    stem: str,
    precision: str,
    spec: EngineSpec = EngineSpec(),
) -> tuple[Path, dict[str, Any]]:
    """Build and save the engine; returns its path and what the manifest records (source, versions, GPU)."""
    trt, gpu = tensorrt_status()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak_fp16 = precision == "fp16" and hasattr(trt.BuilderFlag, "FP16")  # TensorRT 10
    source = onnx_fp32 if (precision == "fp32" or weak_fp16) else onnx_fp16
    if source is None:
        raise DawnpipeError(f"no {precision} ONNX to build the engine from", "export without --trt first")
    flags = 0
    if not weak_fp16 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # required on 10.x, default on 11.x
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DawnpipeError(f"TensorRT could not parse {source.name} ({errors[:300]})", "try another --opset")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_gib * (1 << 30)))
    if weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (spec.min_batch, 32, 32, 3), (spec.opt_batch, 32, 32, 3), (spec.max_batch, 32, 32, 3))
    config.add_optimization_profile(profile)
    cache_path = out_dir / f"timing-{_slug(gpu)}.cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DawnpipeError(
            "TensorRT failed to build the engine (see its log above)", "lower --trt-max-batch or free GPU memory"
        )
    path = out_dir / engine_name(stem, precision, gpu)
    atomic_write(path, lambda tmp: tmp.write_bytes(bytes(serialized)))
    atomic_write(cache_path, lambda tmp: tmp.write_bytes(bytes(config.get_timing_cache().serialize())))
    record = {
        **gpu,
        "precision": precision,
        "typing": "weak+FP16 flag" if weak_fp16 else "strong",
        "profile": {"min": spec.min_batch, "opt": spec.opt_batch, "max": spec.max_batch},
        "timing_cache": cache_path.name,
        "source_onnx": source.name,
    }
    return path, record


def _slug(gpu: dict[str, Any]) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{gpu['gpu']}-trt{gpu['tensorrt']}").strip("_")

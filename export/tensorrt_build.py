"""TensorRT engine from an ONNX file through the TensorRT Python API (versions 10 and 11).

The ONNX is parsed into a strongly typed network on TensorRT 10 and 11 alike (11 removed ``BuilderFlag.FP16``
and weak typing), so the precision comes from the graph: the fp16 ONNX gives an fp16 engine. The timing cache
is loaded, extended and saved, so rebuilding on the same GPU takes seconds. An engine only runs on the GPU
model and TensorRT version that built it, so both go into the file name, the sidecar and the manifest.
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


def engine_name(stem: str, gpu: dict[str, Any]) -> str:
    """File name that says what it holds: model (weights, TTA, precision), GPU, compute capability and the exact
    TensorRT version (an engine runs only on the GPU model and TensorRT version that built it)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", gpu["gpu"]).strip("_")
    version = re.sub(r"[^0-9.]+", "", gpu["tensorrt"])
    return f"{stem}-{slug}-sm{gpu['compute_capability'].replace('.', '')}-trt{version}.engine"


def build_engine(
    onnx_path: Path, out_dir: Path, stem: str, precision: str, spec: EngineSpec = EngineSpec()
) -> tuple[Path, dict[str, Any]]:
    """Build and save the engine from one ONNX file; returns its path and the build facts (GPU, versions).

    The network is strongly typed on both TensorRT 10 and 11: the ONNX's own types decide the precision (an fp16
    ONNX gives an fp16 engine), so no builder precision flag is needed (TensorRT 11 removed them).
    """
    trt, gpu = tensorrt_status()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # 10.x: opt in; 11.x: the only mode
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DawnpipeError(f"TensorRT could not parse {onnx_path.name} ({errors[:300]})", "try another --opset")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_gib * (1 << 30)))
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
    path = out_dir / engine_name(stem, gpu)
    atomic_write(path, lambda tmp: tmp.write_bytes(bytes(serialized)))
    atomic_write(cache_path, lambda tmp: tmp.write_bytes(bytes(config.get_timing_cache().serialize())))
    build = {
        **gpu,
        "precision": precision,
        "typing": "strong",
        "profile": {"min": spec.min_batch, "opt": spec.opt_batch, "max": spec.max_batch},
        "timing_cache": cache_path.name,
    }
    return path, build


def engine_record(onnx_meta: dict[str, Any], build: dict[str, Any], onnx_name: str, onnx_sha: str) -> dict[str, Any]:
    """What the manifest and the sidecar say about an engine: the ONNX's own description (contract, classes,
    TTA, threshold, lineage) plus the build facts. Pure, so it is tested without TensorRT."""
    keep = ("format", "dawnpipe_version", "run_id", "classes", "input_contract", "data", "model_config")
    record = {k: onnx_meta.get(k) for k in keep}
    record.update(
        {k: onnx_meta.get(k) for k in ("selective", "complete", "weights", "tta_mode", "tta_views", "tta_shift")}
    )
    record.update(build)  # precision, typing, profile, GPU, TensorRT version, timing cache
    record["format"] = "dawnpipe-engine/1"
    record["made_from"] = {"onnx": onnx_name, "sha256": onnx_sha}
    return record


def sidecar_path(engine: Path) -> Path:
    """``x.engine`` -> ``x.engine.json``."""
    return engine.with_name(engine.name + ".json")


def write_sidecar(engine: Path, record: dict[str, Any]) -> Path:
    """The engine's self-description, with the engine's own sha256 so a swapped engine is caught."""
    from dawnpipe.common.files import atomic_write_json, sha256_file

    return atomic_write_json(sidecar_path(engine), {**record, "engine_sha256": sha256_file(engine)})


def read_sidecar(engine: Path) -> dict[str, Any]:
    """Load and check an engine's sidecar; one-line errors for a missing, damaged or mismatched one."""
    import json

    from dawnpipe.common.files import sha256_file

    side = sidecar_path(engine)
    if not side.exists():
        raise DawnpipeError(
            f"{engine.name} has no sidecar {side.name}, so its input contract is unknown",
            "copy the .engine.json written beside it by `dawnpipe export --trt`, or rebuild the engine",
        )
    try:
        record = json.loads(side.read_text())
        required = ("input_contract", "classes", "profile", "precision", "engine_sha256")
        missing = [k for k in required if k not in record]
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        missing, record = ["(not JSON)"], {}
    if missing or record.get("format") != "dawnpipe-engine/1":
        raise DawnpipeError(f"{side} is not a dawnpipe engine sidecar (missing {missing})", "rebuild the engine")
    if record["engine_sha256"] != sha256_file(engine):
        raise DawnpipeError(
            f"{engine.name} does not match its sidecar {side.name} (sha256 differs): the engine was replaced",
            "rebuild it with `dawnpipe export --trt`, or restore the engine the sidecar describes",
        )
    return record


def _slug(gpu: dict[str, Any]) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{gpu['gpu']}-trt{gpu['tensorrt']}").strip("_")

"""Backends behind one interface: load once, ``infer(uint8 NHWC) -> float32 logits``, context-managed.

    with load("runs/x/resnet9-ema-none-fp32.onnx") as model:   # picks onnxruntime from the file
        logits = model.infer(images)                           # images: uint8 [N, 32, 32, 3] RGB

``load`` picks the backend from the artifact (checkpoint or run folder -> torch, .onnx -> onnxruntime,
.engine/.plan -> tensorrt) and reads the input contract, classes and any TTA already in the graph from the
artifact's metadata or its run's manifest, never from constants here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.infer.metadata import check_metadata

BACKENDS = ("auto", "torch", "torch-graphs", "onnxruntime", "tensorrt")  # torch-graphs: graph-captured torch
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class Backend:
    """Common part: what the artifact says about itself, input checks, and the context-manager protocol.

    ``meta`` is the artifact's own description (checkpoint payload, ONNX metadata or engine sidecar): input
    contract, classes, TTA in the graph, precision, calibrated selective threshold, data and run lineage.
    """

    name = "backend"
    max_batch = 1024  # images per runtime call; larger inputs are split so memory stays bounded

    def __init__(self, path: Path, meta: dict[str, Any], threads: int = 0) -> None:
        self.path = path
        self.meta = meta
        self.contract: dict[str, Any] = meta["input_contract"]
        self.classes: list[str] = list(meta["classes"])
        self.graph_tta: str = meta.get("tta_mode", "none")
        self.graph_views: int = int(meta.get("tta_views", 1))
        self.precision: str = meta.get("precision", "fp32")
        self.selective: dict[str, Any] | None = meta.get("selective")
        self.threads = threads or default_threads()
        self.device = "cpu"
        self.lineage = "unchecked"  # set by load(): manifest | self-described | override
        self._sha256: str | None = None

    @property
    def sha256(self) -> str | None:
        """The artifact file's sha256, hashed once (lineage checks and every eval row use it)."""
        if self._sha256 is None and self.path.is_file():
            from dawnpipe.common.files import sha256_file

            self._sha256 = sha256_file(self.path)
        return self._sha256

    def check_input(self, images: Any) -> np.ndarray:
        """The uint8 [N, 32, 32, 3] contract, enforced with a one-line error before any runtime sees the data."""
        shape = list(self.contract.get("shape", [None, 32, 32, 3]))[1:]
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            got = getattr(images, "dtype", type(images).__name__)
            raise DawnpipeError(
                f"model input must be uint8 pixels, got {got}",
                "pass raw RGB pixels 0-255 as a uint8 array; normalisation happens inside the model",
            )
        if images.ndim != 4 or list(images.shape[1:]) != shape:
            raise DawnpipeError(
                f"model input must have shape [N, {', '.join(map(str, shape))}] (NHWC RGB), got {list(images.shape)}",
                "convert images with infer.predict.to_model_input first",
            )
        return np.ascontiguousarray(images)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """float32 logits [N, classes] for uint8 images [N, 32, 32, 3] (any N; split into max_batch calls)."""
        images = self.check_input(images)
        if len(images) <= self.max_batch:
            return self._run(images)
        return np.concatenate(
            [self._run(images[i : i + self.max_batch]) for i in range(0, len(images), self.max_batch)]
        )

    def _run(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work (nothing to wait for on CPU backends)."""

    def close(self) -> None:
        """Release sessions and device memory."""

    def describe(self) -> dict[str, Any]:
        """Backend, device, precision, artifact and the CPU: what a report row needs to say what was measured."""
        from dawnpipe.common.machine import cpu_features, runs_natively

        return {
            "cpu": cpu_features(),  # the host's CPU, also for GPU rows (it prepares every batch)
            "native_instructions": runs_natively(self.device, self.precision),
            "backend": self.name,
            "device": self.device,
            "precision": self.precision,
            "artifact": str(self.path),
            "graph_tta": self.graph_tta,
            "graph_views": self.graph_views,
            "threads": self.threads,
            "run_id": self.meta.get("run_id"),
            "lineage": self.lineage,
            "complete": bool(self.meta.get("complete", True)),
        }

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OnnxRuntimeBackend(Backend):
    """An exported ONNX file in onnxruntime with the chosen execution provider."""

    name = "onnxruntime"

    def __init__(self, path: Path, provider: str = "auto", threads: int = 0) -> None:
        from dawnpipe.export.onnx_export import onnxruntime_module, read_metadata

        ort = onnxruntime_module()

        meta = read_metadata(path)
        if meta.get("format") != "dawnpipe-onnx/1":
            raise DawnpipeError(
                f"{path} was not exported by dawnpipe (no dawnpipe metadata)",
                "export it with `dawnpipe export`, which records the input contract",
            )
        check_metadata(meta, path)
        super().__init__(path, meta, threads)
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
        _check_graph_io(self._session, meta, path)
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
        return {**super().describe(), "provider": self.provider}


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


def default_threads() -> int:
    """Threads a backend uses unless told: the cores this process may run on (recorded with every timing)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class TensorRTBackend(Backend):
    """A serialized TensorRT engine and its JSON sidecar: CUDA buffers (torch-allocated), one stream,
    execute_async_v3. The sidecar (written beside the engine at build time) carries the contract, classes, TTA,
    precision, optimisation profile and the GPU/TensorRT that built it, so a copied engine still loads."""

    name = "tensorrt"

    def __init__(self, path: Path) -> None:
        from dawnpipe.export.tensorrt_build import read_sidecar, tensorrt_status

        meta = read_sidecar(path)
        check_metadata(meta, path)
        trt, gpu = tensorrt_status()
        super().__init__(path, meta)
        self.max_batch = int(meta["profile"]["max"])  # the engine refuses larger batches; infer() splits to this
        import torch

        self._torch, self.device = torch, "cuda"
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self._engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise DawnpipeError(
                f"{path.name} was built for {meta.get('gpu')} with TensorRT {meta.get('tensorrt')}; "
                f"this machine has {gpu['gpu']} with TensorRT {gpu['tensorrt']}, and engines do not "
                "move between GPUs or versions",
                "rebuild it here with `dawnpipe export --trt`",
            )
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()

    def _run(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(images).cuda(non_blocking=True)
        out = torch.empty((len(images), len(self.classes)), dtype=torch.float32, device="cuda")
        if not self._context.set_input_shape("images", tuple(x.shape)):
            profile = self.meta["profile"]
            raise DawnpipeError(
                f"the engine refused a batch of {len(images)} (its profile takes {profile['min']}-{profile['max']})",
                "rebuild with a larger --trt-max-batch, or send smaller batches",
            )
        self._context.set_tensor_address("images", x.data_ptr())
        self._context.set_tensor_address("logits", out.data_ptr())
        self._stream.wait_stream(torch.cuda.current_stream())
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise DawnpipeError("TensorRT refused to run the batch", "check the batch size against the engine profile")
        self._stream.synchronize()
        return out.cpu().numpy()

    def synchronize(self) -> None:
        self._stream.synchronize()


def load(
    path: str | Path,
    backend: str = "auto",
    *,
    provider: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    threads: int = 0,
    allow_foreign: bool = False,
    allow_incomplete: bool = False,
    graphs: bool = False,
) -> Backend:
    """Open an artifact with the backend its kind calls for (or the one asked for, if it can read it).

    The artifact must be the one its folder's manifest recorded (``common.lineage``) and come from a finished
    training run, unless ``allow_foreign`` / ``allow_incomplete``; ``backend.lineage`` says which check held.
    ``graphs``: a checkpoint runs graph-captured (infer.torch_backend: CUDA graphs, or torch.compile on a CPU).
    """
    path = Path(path).expanduser()
    if backend not in BACKENDS:
        raise DawnpipeError(f"unknown backend {backend!r}", f"use one of {', '.join(BACKENDS)}")
    if backend == "torch-graphs":
        backend, graphs = "torch", True
    if not path.exists():
        raise DawnpipeError(f"artifact {path} does not exist", "pass a run folder, checkpoint.pt, .onnx or .engine")
    kind = artifact_kind(path)
    wanted = {"checkpoint": "torch", "onnx": "onnxruntime", "engine": "tensorrt"}[kind]
    if backend not in ("auto", wanted):
        raise DawnpipeError(
            f"{path.name} is a {kind}, which the {backend} backend cannot run",
            f"use --backend {wanted} or auto, or pass the matching artifact",
        )
    if not (path.is_dir() or path.is_file()):
        raise DawnpipeError(
            f"artifact {path} is not a regular file", "pass a run folder, checkpoint.pt, .onnx or .engine"
        )
    if kind == "checkpoint":
        from dawnpipe.infer.torch_backend import TorchBackend

        opened: Backend = TorchBackend(path, device=device, precision=precision, threads=threads, graphs=graphs)
    elif kind == "onnx":
        opened = OnnxRuntimeBackend(path, provider=provider, threads=threads)
    else:
        opened = TensorRTBackend(path)
    try:
        from dawnpipe.common.lineage import check_complete, check_lineage

        opened.lineage = check_lineage(
            opened.path, opened.meta.get("run_id"), allow_foreign=allow_foreign, sha256=opened.sha256
        )
        check_complete(opened.path, bool(opened.meta.get("complete", True)), allow_incomplete=allow_incomplete)
    except DawnpipeError:
        opened.close()
        raise
    return opened


def artifact_kind(path: Path) -> str:
    """checkpoint | onnx | engine, from the name (and folder-ness) of the artifact."""
    if path.is_dir() or path.suffix in (".pt", ".pth"):
        return "checkpoint"
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix in (".engine", ".plan", ".trt"):
        return "engine"
    raise DawnpipeError(
        f"{path.name}: unknown artifact type", "pass a run folder, checkpoint.pt, .onnx or .engine file"
    )

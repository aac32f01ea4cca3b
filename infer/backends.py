"""Which backend opens an artifact: ``load`` picks the runtime from the artifact (or the one asked for).

    with load("runs/x/resnet9-ema-none-fp32.onnx") as model:   # picks onnxruntime from the file
        logits = model.infer(images)                           # images: uint8 [N, 32, 32, 3] RGB

``load`` picks the backend from the artifact (checkpoint or run folder -> torch, .onnx -> onnxruntime, or
openvino when asked, .engine/.plan -> tensorrt) and reads the input contract, classes and any TTA already in the
graph from the artifact's metadata or its run's manifest, never from constants here. The runtimes themselves are
imported only when an artifact is opened, so ``--help`` and the CPU tests work without them.
"""

from __future__ import annotations

from pathlib import Path

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.infer.backend import Backend, default_threads
from dawnpipe.infer.onnxruntime_backend import PROVIDERS, OnnxRuntimeBackend, choose_providers, provider_options
from dawnpipe.infer.tensorrt_backend import TensorRTBackend

BACKENDS = ("auto", "torch", "torch-graphs", "onnxruntime", "openvino", "tensorrt")  # torch-graphs: graph-captured


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
    path = _imported_model(path)
    kind = artifact_kind(path)
    wanted = {"checkpoint": ("torch",), "onnx": ("onnxruntime", "openvino"), "engine": ("tensorrt",)}[kind]
    if backend not in ("auto", *wanted):
        raise DawnpipeError(
            f"{path.name} is a {kind}, which the {backend} backend cannot run",
            f"use --backend {' or '.join(wanted)} or auto, or pass the matching artifact",
        )
    if not (path.is_dir() or path.is_file()):
        raise DawnpipeError(
            f"artifact {path} is not a regular file", "pass a run folder, checkpoint.pt, .onnx or .engine"
        )
    if kind == "checkpoint":
        from dawnpipe.infer.torch_backend import TorchBackend

        opened: Backend = TorchBackend(path, device=device, precision=precision, threads=threads, graphs=graphs)
    elif kind == "onnx" and backend == "openvino":
        from dawnpipe.infer.openvino_backend import OpenVinoBackend

        _check_onnx_lineage(path, allow_foreign)  # before OpenVINO compiles it and caches the result beside it
        opened = OpenVinoBackend(path, threads=threads, precision=precision)
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


def _imported_model(path: Path) -> Path:
    """An imported entrant's run folder stands for its adapted file (it has no checkpoint)."""
    if not path.is_dir():
        return path
    from dawnpipe.export.entrant import imported_file, imported_run

    return imported_file(path) if imported_run(path) is not None else path


def _check_onnx_lineage(path: Path, allow_foreign: bool) -> None:
    from dawnpipe.common.files import sha256_file
    from dawnpipe.common.lineage import check_lineage
    from dawnpipe.export.onnx_export import read_metadata

    check_lineage(path, read_metadata(path).get("run_id"), allow_foreign=allow_foreign, sha256=sha256_file(path))


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


__all__ = [
    "BACKENDS",
    "PROVIDERS",
    "Backend",
    "OnnxRuntimeBackend",
    "TensorRTBackend",
    "artifact_kind",
    "choose_providers",
    "default_threads",
    "load",
    "provider_options",
]

"""The one interface every runtime implements: load once, ``infer(uint8 NHWC) -> float32 logits``, context-managed.

A backend holds what its artifact says about itself (input contract, classes, TTA already in the graph,
precision, calibrated selective threshold, lineage), checks every input against that contract before any runtime
sees it, and describes itself for every eval row. Concrete runtimes live in their own modules
(``torch_backend``, ``onnxruntime_backend``, ``openvino_backend``, ``tensorrt_backend``); ``backends.load`` picks one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError


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
            "cores": allowed_cores(),  # the logical CPUs this process may run on (shared by a session's backends)
            "run_id": self.meta.get("run_id"),
            "lineage": self.lineage,
            "complete": bool(self.meta.get("complete", True)),
        }

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def allowed_cores() -> list[int] | None:
    """The logical CPUs this process may run on (its affinity mask), or None where the OS does not say."""
    import os

    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def default_threads() -> int:
    """Threads a backend uses unless told: the cores this process may run on (recorded with every timing)."""
    import os

    cores = allowed_cores()
    return len(cores) if cores else (os.cpu_count() or 1)

"""The checkpoint in PyTorch: eager (``torch``) or graph-captured (``torch-graphs``), with TTA built on the device.

TTA on the device: a call copies its uint8 images to the device once (through a reused pinned buffer on CUDA),
builds every view there with ``common.tta.apply_view`` (the same index maps the exported graphs and the host path
use), runs them stacked, and combines the logits there; selective TTA decides per image on the device and runs
the extra views on the selected images without a round trip. Only the final logits come back. On a GPU, building
views in numpy and copying each one through pageable memory would make TTA cost what numpy costs, not what the
GPU does, and the accounting this project exists for would be wrong on the hardware it is meant for.

Graph-captured (``graphs=True``): on CUDA, one CUDA graph per batch size (captured on first use, replayed after;
sizes above 8 are padded up to the next power of two so selective passes reuse a handful of graphs). At batch 1
a ResNet-9 on a big GPU is bound by kernel launches, which a graph replays as one; TensorRT cannot be installed on
this project's machines, so this is the fastest GPU path that can be measured. On a CPU there are no graphs: the
model runs through ``torch.compile`` (dynamic batch), or falls back to eager with a one-line notice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.infer.backend import Backend
from dawnpipe.infer.metadata import check_metadata

_EXACT_SIZES = 8  # batch sizes up to this are captured as they come; larger ones padded to a power of two


class TorchBackend(Backend):
    """The checkpoint in PyTorch, channels_last. Precision (common.device.choose_device) ``auto``: fp16 on CUDA,
    bf16 autocast on a CPU with native bf16, else fp32; ``fp32`` gives the exact reference the export checks use."""

    name = "torch"

    def __init__(
        self,
        path: Path,
        device: str = "auto",
        weights: str = "ema",
        precision: str = "auto",
        threads: int = 0,
        graphs: bool = False,
    ) -> None:
        import torch

        from dawnpipe.common.device import choose_device
        from dawnpipe.export.graph import build_deploy_model
        from dawnpipe.train.checkpoint import checkpoint_meta, load_checkpoint, resolve_checkpoint

        ckpt = resolve_checkpoint(path)
        payload = load_checkpoint(ckpt)
        choice = choose_device(device, precision)  # refuses what cannot run here (fp16 on a CPU, ...)
        precision = choice.precision
        if precision == "fp32":
            use_ieee_fp32()
        meta = {**checkpoint_meta(payload), "precision": precision}
        check_metadata(meta, ckpt)
        super().__init__(ckpt, meta, threads)
        if choice.device.type == "cpu":
            torch.set_num_threads(self.threads)
        else:
            # Inference sees a new batch size on almost every selective call; autotuning (switched on by training
            # in the same process) would land inside timed calls, so it is off for every inference backend.
            torch.backends.cudnn.benchmark = False
        self.device = choice.device.type
        self._torch = torch
        graph_precision = "fp16" if precision == "fp16" else "fp32"
        self._model = build_deploy_model(payload, weights=weights, precision=graph_precision).to(self.device)
        self._model.classifier.to(memory_format=torch.channels_last)
        self._autocast = precision == "bf16"
        self._stager = _PinnedStager(torch) if self.device == "cuda" else None
        self.graphs = graphs
        self.graph_notice: str | None = None
        if graphs:
            self.name = "torch-graphs"
            self._forward: Any = _CudaGraphs(self._model, torch) if self.device == "cuda" else self._compiled_cpu()
        else:
            self._forward = self._model

    def _compiled_cpu(self) -> Any:
        """torch.compile without graphs on a CPU; eager with a one-line notice when compiling fails."""
        from dawnpipe.train.compiled import CompiledOrEager

        compiled = CompiledOrEager(self._model, what="torch-graphs on CPU", dynamic=True)
        self.graph_notice = compiled.notice
        return compiled

    def _on_device(self, images: np.ndarray) -> Any:
        """One host-to-device copy of a call's uint8 images (through pinned memory on CUDA)."""
        if self._stager is not None:
            return self._stager.to_device(images)
        return self._torch.from_numpy(images)

    def _logits(self, x: Any) -> Any:
        torch = self._torch
        with torch.inference_mode(), torch.autocast(self.device, torch.bfloat16, enabled=self._autocast):
            out = self._forward(x).float()
        self.graph_notice = self.graph_notice or getattr(self._forward, "notice", None)  # a fallback at first call
        return out

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self._logits(self._on_device(images)).cpu().numpy()

    def run_tta(self, images: np.ndarray, tta_views: tuple, threshold: float | None = None) -> tuple[Any, Any]:
        """(logits, selected) for uint8 images with every view built on the device (module docstring).

        ``threshold`` None: the full weighted average over ``tta_views``; else selective TTA with that per-image
        threshold, decided on the device exactly as ``common.tta.selective_logits`` decides on the host.
        """
        from dawnpipe.common.tta import combine, view_logits

        images = self.check_input(images)
        x = self._on_device(images)
        run = self._logits
        if threshold is None:
            logits = combine(view_logits(run, x, tta_views, self.max_batch), tta_views)
            return logits.cpu().numpy(), np.full(len(images), len(tta_views) > 1)
        identity = next(k for k, v in enumerate(tta_views) if v.is_identity())
        (plain,) = view_logits(run, x, (tta_views[identity],), self.max_batch)
        chosen = device_confidence(plain) < float(threshold)
        logits = plain.clone()
        index = chosen.nonzero().squeeze(1)  # one sync: the size of the second pass
        extra = tuple(v for k, v in enumerate(tta_views) if k != identity)
        if len(index) and extra:
            others = iter(view_logits(run, x.index_select(0, index), extra, self.max_batch))
            per_view = [plain.index_select(0, index) if k == identity else next(others) for k in range(len(tta_views))]
            logits.index_copy_(0, index, combine(per_view, tta_views))
        return logits.cpu().numpy(), chosen.cpu().numpy()

    def synchronize(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.synchronize()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.graphs:
            info["graphs"] = (
                "CUDA graphs per batch size"
                if self.device == "cuda"
                else ("eager (torch.compile failed)" if self.graph_notice else "torch.compile, no graphs (CPU)")
            )
        return info


def device_confidence(logits: Any) -> Any:
    """Top-1 softmax probability per row on the logits' device, in the precision of
    ``common.tta.softmax_confidence`` (float64, then rounded to float32), so a device decides as the host does."""
    import torch

    return torch.softmax(logits.to(torch.float64), dim=1).amax(dim=1).to(torch.float32)


def use_ieee_fp32() -> None:
    """fp32 means IEEE fp32: PyTorch runs cuDNN convolutions (and may run matmuls) in TF32 on Ampere and later
    by default, which breaks the exact-reference comparisons; turn that off for the process."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


class _PinnedStager:
    """A reused page-locked host buffer: each call's images are copied into it, then to the GPU asynchronously."""

    def __init__(self, torch: Any) -> None:
        self._torch = torch
        self._buffer = None

    def to_device(self, images: np.ndarray) -> Any:
        torch = self._torch
        if self._buffer is None or self._buffer.shape[0] < len(images):
            self._buffer = torch.empty((max(len(images), 256), *images.shape[1:]), dtype=torch.uint8).pin_memory()
        host = self._buffer[: len(images)]
        torch.cuda.current_stream().synchronize()  # the previous call's copy out of the buffer has finished
        host.numpy()[...] = images
        return host.to("cuda", non_blocking=True)


def bucket(n: int) -> int:
    """The captured batch size a call of ``n`` images runs at: ``n`` up to 8, else the next power of two."""
    return n if n <= _EXACT_SIZES else 1 << (n - 1).bit_length()


class _CudaGraphs:
    """One CUDA graph per (bucketed) batch size: captured at first use after a warm-up, then replayed."""

    def __init__(self, model: Any, torch: Any, max_graphs: int = 32) -> None:
        self._model, self._torch, self._max = model, torch, max_graphs
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}

    def __call__(self, x: Any) -> Any:
        n, size = x.shape[0], bucket(x.shape[0])
        entry = self._graphs.get(size)
        if entry is None:
            if len(self._graphs) >= self._max:
                return self._model(x)  # an unusual size past the cache: eager, never an unbounded capture
            entry = self._graphs[size] = self._capture(size, x)
        static_in, graph, static_out = entry
        static_in[:n].copy_(x)
        if size > n:
            static_in[n:].zero_()
        graph.replay()
        return static_out[:n].clone()

    def _capture(self, size: int, like: Any) -> tuple[Any, Any, Any]:
        torch = self._torch
        static_in = torch.zeros((size, *like.shape[1:]), dtype=like.dtype, device=like.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the graph: lazy allocations and kernel selection
                self._model(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._model(static_in)
        return static_in, graph, static_out


__all__ = ["TorchBackend", "bucket", "device_confidence", "use_ieee_fp32"]

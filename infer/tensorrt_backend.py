"""A serialized TensorRT engine and its JSON sidecar, run with execute_async_v3 (TensorRT 10 and 11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.infer.backend import Backend
from dawnpipe.infer.metadata import check_metadata


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

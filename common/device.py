"""Which device and which precision a run uses: chosen once from the caller's ``--device`` and ``--precision``,
checked before any work, and recorded.

``auto`` precision is fp16 autocast on CUDA and, on a CPU, ``common.precision.auto_cpu_precision`` (bf16 where the
CPU has it natively, else fp32, unless pinned by the environment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.machine import cpu_features
from dawnpipe.common.precision import auto_cpu_precision, check_precision

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # precision name -> autocast dtype


@dataclass(frozen=True)
class DeviceChoice:
    """The torch device, the autocast dtype (None = fp32) and the memory format for conv inputs."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    asked: str = "auto"  # the precision the caller asked for (auto, fp32, bf16, fp16), recorded beside the result

    @property
    def precision(self) -> str:
        """fp32 | bf16 | fp16: what runs."""
        return dtype_name(self.autocast_dtype)

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the device."""
        info: dict[str, Any] = {
            "type": self.device.type,
            "precision": self.precision,
            "precision_asked": self.asked,
            "channels_last": self.channels_last,
            "cpu": cpu_features(),
            "threads": torch.get_num_threads(),
        }
        if self.device.type == "cpu" and self.precision == "bf16":
            info["bf16_native"] = bool(cpu_features().get("bf16_native"))  # False: emulated, slow, same numbers
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}")
        return info


def dtype_name(dtype: torch.dtype | None) -> str:
    """fp32 | fp16 | bf16: how manifests and checkpoints name an autocast dtype (None = fp32)."""
    return {dtype_: name for name, dtype_ in AUTOCAST_DTYPES.items()}[dtype]


def choose_device(name: str = "auto", precision: str = "auto") -> DeviceChoice:
    """Resolve ``--device auto|cpu|cuda`` and ``--precision auto|fp32|bf16|fp16`` to what runs, or refuse in one
    line what cannot run here: fp16 on a CPU (no fp16 compute kernels there), bf16 on a GPU without bf16."""
    if name not in ("auto", "cpu", "cuda"):
        raise DawnpipeError(f"unknown device {name!r}", "use --device auto, cpu or cuda")
    asked = check_precision(precision)
    if name == "cuda" and not torch.cuda.is_available():
        raise DawnpipeError(
            "--device cuda was asked for but no CUDA GPU is visible to PyTorch",
            "use --device cpu (or auto), or run on a machine with a GPU and a CUDA build of torch",
        )
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        chosen = "fp16" if asked == "auto" else asked
        if chosen == "bf16" and not torch.cuda.is_bf16_supported():
            raise DawnpipeError(
                f"--precision bf16 was asked for but {torch.cuda.get_device_name()} has no bf16 support",
                "use --precision fp16 (or auto) or fp32",
            )
        return DeviceChoice(torch.device("cuda"), AUTOCAST_DTYPES[chosen], channels_last=True, asked=asked)
    if asked == "fp16":
        raise DawnpipeError(
            "--precision fp16 cannot run on a CPU (PyTorch has no fp16 compute kernels there; it is a GPU precision)",
            "use --precision bf16 (native on AVX-512 BF16 and AMX CPUs, emulated elsewhere), fp32 or auto",
        )
    chosen = auto_cpu_precision() if asked == "auto" else asked
    return DeviceChoice(torch.device("cpu"), AUTOCAST_DTYPES[chosen], channels_last=True, asked=asked)

"""Which device and which autocast precision a run uses, chosen once and recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.machine import cpu_features


@dataclass(frozen=True)
class DeviceChoice:
    """The torch device, the autocast dtype (None = fp32) and the memory format for conv inputs."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the device."""
        info: dict[str, Any] = {
            "type": self.device.type,
            "precision": dtype_name(self.autocast_dtype),
            "channels_last": self.channels_last,
            "cpu": cpu_features(),
            "threads": torch.get_num_threads(),
        }
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}")
        return info


def dtype_name(dtype: torch.dtype | None) -> str:
    """fp32 | fp16 | bf16: how manifests and checkpoints name an autocast dtype (None = fp32)."""
    return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    return bool(cpu_features().get("bf16_native"))


def choose_device(name: str = "auto") -> DeviceChoice:
    """Resolve ``auto|cpu|cuda`` to a device and precision: fp16 on CUDA, bf16 on a bf16 CPU, else fp32."""
    if name not in ("auto", "cpu", "cuda"):
        raise DawnpipeError(f"unknown device {name!r}", "use --device auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise DawnpipeError(
            "--device cuda was asked for but no CUDA GPU is visible to PyTorch",
            "use --device cpu (or auto), or run on a machine with a GPU and a CUDA build of torch",
        )
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return DeviceChoice(torch.device("cuda"), torch.float16, channels_last=True)
    return DeviceChoice(torch.device("cpu"), torch.bfloat16 if cpu_supports_bf16() else None, channels_last=True)

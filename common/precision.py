"""The compute precisions a caller may ask for, and what ``auto`` means on this CPU. Torch-free, so the command
line can offer the choices without importing torch.

``auto`` on a CPU is bf16 where the CPU has native bf16 dot products (AVX-512 BF16 or AMX: a width-1 training step
measured 1.96x faster than fp32 on a Zen 4; docs/usage.md has the figures per CPU) and fp32 elsewhere. It can be
pinned with the environment variable ``AUTO_CPU_PRECISION_ENV`` (``fp32`` or ``bf16``): the test suite pins fp32,
so no test's figure depends on the CPU it runs on, and the same variable set to bf16 shows on any CPU what a bf16
CPU will see (emulated where bf16 is not native). GPUs are decided in ``common.device.choose_device``.
"""

from __future__ import annotations

import os

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.machine import cpu_features

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # training and torch-inference compute precisions (autocast dtype)
AUTO_CPU_PRECISION_ENV = "DAWNPIPE_AUTO_CPU_PRECISION"  # fp32 | bf16: what `auto` means on a CPU (tests pin fp32)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    return bool(cpu_features().get("bf16_native"))


def auto_cpu_precision() -> str:
    """What ``auto`` precision means on this CPU: the pinned value of AUTO_CPU_PRECISION_ENV, else bf16 where the
    CPU has native bf16 and fp32 elsewhere."""
    pinned = os.environ.get(AUTO_CPU_PRECISION_ENV, "").strip().lower()
    if pinned:
        if pinned not in ("fp32", "bf16"):
            raise DawnpipeError(
                f"{AUTO_CPU_PRECISION_ENV}={pinned!r} is not a CPU precision", "set it to fp32 or bf16, or unset it"
            )
        return pinned
    return "bf16" if cpu_supports_bf16() else "fp32"


def check_precision(precision: str) -> str:
    """``precision`` if it names one of PRECISIONS (lower-cased), else a one-line refusal."""
    if not isinstance(precision, str) or precision.lower() not in PRECISIONS:
        raise DawnpipeError(f"unknown precision {precision!r}", f"use {', '.join(PRECISIONS)}")
    return precision.lower()

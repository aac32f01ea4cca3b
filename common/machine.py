"""The machine a figure was measured on: CPU model, the instruction-set flags that decide int8 and bf16 speed,
and whether those ran natively. Torch-free, so backends and reports can record it without importing torch."""

from __future__ import annotations

import functools
import platform
from typing import Any

# The instruction-set flags that decide how fast int8 and bf16 run here; every figure records them, because the
# machines differ from day to day (one has AVX2 only, the next AVX-512 with VNNI and BF16).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
INT8_NATIVE_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products in one instruction
BF16_NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")  # bf16 dot products in hardware; otherwise torch emulates them


@functools.lru_cache(maxsize=1)
def cpu_features() -> dict[str, Any]:
    """The CPU model, which of CPU_FLAGS it has, and whether int8 and bf16 run on native instructions.

    Read from /proc/cpuinfo (Linux); elsewhere the model from platform and the flags reported as unknown.
    """
    try:
        with open("/proc/cpuinfo") as handle:
            text = handle.read()
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.processor() or platform.machine())


def parse_cpuinfo(text: str, fallback_model: str = "unknown") -> dict[str, Any]:
    """cpu_features from the text of /proc/cpuinfo (the first processor's model name and flags)."""
    model, flags = fallback_model, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip() and model == fallback_model:
            model = value.strip()
        elif key.strip() == "flags" and flags is None:
            flags = set(value.split())
    if flags is None:
        return {"model": model, "flags": "unknown", "int8_native": None, "bf16_native": None}
    return {
        "model": model,
        "flags": {name: name in flags for name in CPU_FLAGS},
        "int8_native": any(f in flags for f in INT8_NATIVE_FLAGS),
        "bf16_native": any(f in flags for f in BF16_NATIVE_FLAGS),
    }


def cpu_summary(features: dict[str, Any] | None = None) -> str:
    """``AMD EPYC (avx2; no VNNI, no BF16)``: the CPU line every table of figures carries."""
    features = features or cpu_features()
    flags = features.get("flags")
    if not isinstance(flags, dict):
        return f"{features.get('model')} (flags unknown)"
    have = [name for name, present in flags.items() if present]
    native = [
        "int8 native (VNNI)" if features.get("int8_native") else "no VNNI (int8 not native)",
        "bf16 native" if features.get("bf16_native") else "no BF16 (bf16 emulated)",
    ]
    return f"{features.get('model')} ({', '.join(have) or 'none of ' + '/'.join(CPU_FLAGS)}; {'; '.join(native)})"


def runs_natively(device: str, precision: str, features: dict[str, Any] | None = None) -> bool | None:
    """Whether ``precision`` arithmetic ran on native instructions of this CPU (None on a GPU, where the question
    is the GPU's): int8 needs VNNI or AMX-INT8 (else it is widened in software), bf16 needs AVX-512 BF16 or AMX,
    fp16 on a CPU is emulated here, fp32 is always native."""
    if device != "cpu":
        return None
    features = features or cpu_features()
    if precision.startswith("int8"):
        return features.get("int8_native")
    if precision == "bf16":
        return features.get("bf16_native")
    return precision != "fp16"

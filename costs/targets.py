"""The backends a pipeline evaluates (``pipeline --backends``): what each runs, on which artifact, and whether it is
available here. An absent one is recorded as "skipped: reason" in eval.json and the report, never dropped.

Names and what they measure:
- ``torch``: the checkpoint in PyTorch eager (fp32 on a CPU without bf16, bf16 autocast with it, fp16 on CUDA);
- ``torch-graphs``: the same graph-captured (CUDA graphs; torch.compile on a CPU);
- ``onnxruntime``, ``onnxruntime-int8``, ``onnxruntime-int8-asym``: the fp32, symmetric int8 and uint8 ONNX
  files on onnxruntime's CPU provider;
- ``openvino``, ``openvino-int8``: the fp32 and symmetric int8 ONNX files in OpenVINO on the CPU (the ``openvino``
  extra; the same int8 graph TensorRT takes); ``openvino-bf16``: the fp32 file computed in bf16 (CPUs with native
  bf16 only; asked for by name);
- ``onnxruntime-cuda``: the fp16 ONNX on onnxruntime's CUDA provider (onnxruntime-gpu);
- ``tensorrt``: an engine built from the fp16 ONNX (TensorRT and a GPU).
``auto`` picks by machine: on a GPU the GPU backends (CPU rows there would measure the host, not the GPU, and cost
minutes per run); on a CPU the torch and onnxruntime CPU rows (torch-graphs only when asked: it compiles for
minutes per run on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from dawnpipe.common.errors import DawnpipeError


@dataclass(frozen=True)
class Target:
    """One evaluated backend: its name, the artifact it runs, and how it is opened."""

    name: str
    artifact: str  # "checkpoint", or the export precision of the ONNX it runs ("fp32", "int8", ...), or "engine"
    backend: str  # the infer.backends backend that opens it
    provider: str = "auto"  # onnxruntime execution provider
    graphs: bool = False  # torch: graph-captured
    precision: str = "auto"  # compute precision asked of the backend (OpenVINO bf16: an fp32 graph computed in bf16)


TARGETS = {
    t.name: t
    for t in (
        Target("torch", "checkpoint", "torch"),
        Target("torch-graphs", "checkpoint", "torch", graphs=True),
        Target("onnxruntime", "fp32", "onnxruntime", "cpu"),
        Target("onnxruntime-int8", "int8", "onnxruntime", "cpu"),
        Target("onnxruntime-int8-asym", "int8-asym", "onnxruntime", "cpu"),
        Target("openvino", "fp32", "openvino"),
        Target("openvino-int8", "int8", "openvino"),
        Target("openvino-bf16", "fp32", "openvino", precision="bf16"),
        Target("onnxruntime-cuda", "fp16", "onnxruntime", "cuda"),
        Target("tensorrt", "engine", "tensorrt"),
    )
}
CPU_DEFAULT = ("torch", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8")
GPU_DEFAULT = ("torch", "torch-graphs", "onnxruntime-cuda", "tensorrt")


def unavailable(name: str) -> str | None:
    """Why the target cannot run on this machine, or None when it can."""
    import importlib.util

    import torch

    if name.startswith("openvino"):
        from dawnpipe.infer.openvino_backend import INSTALL, openvino_core

        if importlib.util.find_spec("openvino") is None:
            return f"OpenVINO is not installed ({INSTALL})"
        try:
            openvino_core()  # an install that fails to import or start is skipped like a missing one
        except DawnpipeError as err:
            return str(err)
        if TARGETS[name].precision == "bf16":
            from dawnpipe.common.machine import cpu_features

            if not cpu_features().get("bf16_native"):
                return "this CPU has no native bf16 (AVX-512 BF16 or AMX), which OpenVINO's bf16 needs"
    if name in ("onnxruntime-cuda", "tensorrt") and not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    if name == "onnxruntime-cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return (
                f"onnxruntime has no CUDA provider here (installed: {', '.join(onnxruntime.get_available_providers())})"
            )
    if name == "tensorrt":
        from dawnpipe.export.tensorrt_build import tensorrt_status

        try:
            tensorrt_status()
        except DawnpipeError as err:
            return str(err).split(";")[0]
    return None


def choose_targets(names: tuple[str, ...]) -> tuple[list[Target], list[dict[str, str]]]:
    """(targets to evaluate, skipped entries {"backend", "reason"}), checked before any work.

    ``auto`` takes the machine's default set and records every other target that cannot run here as skipped. An
    explicit list records the targets that cannot run here as not asked for, with the reason. A name that is
    unknown, or asked for explicitly but unavailable, is refused in one line naming those available.
    """
    import torch

    unknown = [n for n in names if n != "auto" and n not in TARGETS]
    if unknown or not names:
        raise DawnpipeError(
            f"unknown backend(s) {unknown or '(none given)'}", f"use auto or any of {', '.join(TARGETS)}"
        )
    reasons = {name: unavailable(name) for name in TARGETS}
    available = [n for n, why in reasons.items() if why is None]
    if "auto" in names:
        machine = "GPU" if torch.cuda.is_available() else "CPU"
        default = GPU_DEFAULT if machine == "GPU" else CPU_DEFAULT
        wanted = list(dict.fromkeys([*default, *(n for n in names if n != "auto")]))
        chosen = [TARGETS[n] for n in wanted if reasons[n] is None]
        skipped = [
            {"backend": n, "reason": reasons[n] or f"not in the {machine} default set; ask with --backends auto,{n}"}
            for n in TARGETS
            if TARGETS[n] not in chosen
        ]
        return chosen, skipped
    missing = [n for n in names if reasons[n] is not None]
    if missing:
        raise DawnpipeError(
            f"backend(s) {', '.join(f'{n} ({reasons[n]})' for n in missing)} cannot run here",
            f"choose from those available: {', '.join(available)}",
        )
    # an explicit list skips nothing it asked for; what else cannot run here is still said, as not asked for
    asked = ",".join(dict.fromkeys(names))
    skipped = [
        {"backend": n, "reason": f"not asked for (--backends {asked}); {why}"}
        for n, why in reasons.items()
        if why is not None
    ]
    return [TARGETS[n] for n in dict.fromkeys(names)], skipped

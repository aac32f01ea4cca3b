"""Running a TTA mode on a backend: plain, full TTA, or selective TTA with the artifact's per-image threshold.

``run_mode`` is what evaluation's latency rows, ``predict``, ``Predictor`` and a server call, so every consumer
makes the same per-image decision. Views are applied through ``dawnpipe.common.tta``: on the host for onnxruntime
and TensorRT, on the device for torch (``TorchBackend.run_tta``, one copy in, the same index maps and the same
float64 confidence); a graph that already holds TTA is recognised and run once under its own mode (views are never
applied twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.tta import DEFAULT_SHIFT, parse_mode, selective_logits, tta_logits, views


@dataclass(frozen=True)
class ModeResult:
    """Logits of a mode, which images took the extra views, and what the pass cost in views per image."""

    logits: np.ndarray
    selected: np.ndarray  # bool per image: took the mode's extra views (all True for full TTA, False for none)
    views_per_image: float


def resolve_threshold(backend: Any, override: float | None = None, mode: str = "selective-flip") -> tuple[float, str]:
    """The threshold of selective ``mode`` and where it came from: an explicit override, else the artifact's own
    (fitted per mode through the artifact, or, for artifacts made before that, one threshold from training)."""
    from dawnpipe.train.calibration import mode_threshold

    if override is not None:
        return float(override), "given on the command line"
    found = mode_threshold(getattr(backend, "selective", None), mode)
    if found is None:
        raise DawnpipeError(
            f"{backend.path.name} carries no calibrated selective-TTA threshold (trained without a hold-out, or by an "
            "older dawnpipe)",
            "pass --selective-threshold T, or retrain with --holdout N so the run calibrates one",
        )
    return found


def run_mode(
    backend: Any,
    images: np.ndarray,
    mode: str,
    *,
    threshold: float | None = None,
    shift: int = DEFAULT_SHIFT,
    batch: int = 500,
) -> ModeResult:
    """Logits of ``backend`` on uint8 images under ``mode`` (``none``, ``flip``, ..., ``selective-flip``, ...).

    Selective modes use ``threshold`` if given, else the artifact's calibrated one.
    """
    base, selective = parse_mode(mode)
    if backend.graph_tta != "none":
        if selective or base != backend.graph_tta:
            raise DawnpipeError(
                f"this model has {backend.graph_tta} TTA inside its graph, so it cannot be run with --tta {mode}",
                f"use --tta {backend.graph_tta}, or export without --tta to choose TTA at run time",
            )
        logits = tta_logits(backend.infer, images, views("none"), batch)
        return ModeResult(logits, np.ones(len(images), bool), float(backend.graph_views))
    tta_views = views(base, shift)
    on_device = getattr(backend, "run_tta", None)  # torch builds the views on its device (infer.torch_backend)
    if not selective:
        if on_device is not None:
            logits, _ = on_device(images, tta_views)
        else:
            logits = tta_logits(backend.infer, images, tta_views, batch)
        return ModeResult(logits, np.full(len(images), len(tta_views) > 1), _views_taken(len(tta_views), None))
    value, _ = resolve_threshold(backend, threshold, mode)
    if on_device is not None:
        logits, chosen = on_device(images, tta_views, value)
    else:
        logits, chosen = selective_logits(backend.infer, images, tta_views, value, batch)
    return ModeResult(logits, chosen, _views_taken(len(tta_views), chosen))


def views_per_image(backend: Any, mode: str, chosen: np.ndarray | None, shift: int = DEFAULT_SHIFT) -> float:
    """What ``mode`` costs on ``backend`` in views per image, as eval rows state it: the graph's own views when TTA
    is baked in, else ``_views_taken`` over the mode's views (the formula run_mode's results use too)."""
    if backend.graph_tta != "none":
        return float(backend.graph_views)
    base, _ = parse_mode(mode)
    return _views_taken(len(views(base, shift)), chosen)


def _views_taken(n: int, chosen: np.ndarray | None) -> float:
    """Views per image of a mode of ``n`` views: all ``n`` for full TTA (``chosen`` None), else one view plus the
    extra views on the ``chosen`` fraction of images (selective TTA). run_mode calls it inside timed calls, with the
    views it already holds, so nothing is rebuilt there."""
    if chosen is None:
        return float(n)
    return 1.0 + (n - 1) * float(np.mean(chosen)) if len(chosen) else 1.0

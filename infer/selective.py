"""Selective TTA: extra views only for the images the plain view is least sure of.

Every image gets the plain view; those whose top softmax probability is below ``threshold`` (or the least
confident ``fraction``) also get the mode's other views, and their logits become the full weighted TTA
average. The cost is reported as the mean number of views per image, so accuracy can be traded against
inference FLOPs at a finer grain than all-or-nothing TTA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.tta import DEFAULT_SHIFT, apply_view, backend_logits, views


@dataclass(frozen=True)
class SelectiveResult:
    """Logits, which images got the extra views, and the mean views per image."""

    logits: np.ndarray
    selected: np.ndarray  # bool per image
    views_per_image: float


def softmax_confidence(logits: np.ndarray) -> np.ndarray:
    """Top-1 softmax probability per row."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    return probs.max(axis=1) / probs.sum(axis=1)


def select(confidence: np.ndarray, *, fraction: float | None = None, threshold: float | None = None) -> np.ndarray:
    """Which images get extra views: below ``threshold`` confidence, or the least confident ``fraction``."""
    if (fraction is None) == (threshold is None):
        raise DawnpipeError(
            "selective TTA needs exactly one of a fraction and a confidence threshold",
            "pass --selective-fraction F or --selective-threshold T",
        )
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise DawnpipeError(f"confidence threshold {threshold} is outside [0, 1]", "use a probability")
        return confidence < threshold
    if not 0.0 <= fraction <= 1.0:  # type: ignore[operator]
        raise DawnpipeError(f"selective fraction {fraction} is outside [0, 1]", "use a fraction such as 0.2")
    chosen = np.zeros(len(confidence), dtype=bool)
    count = int(round(fraction * len(confidence)))  # type: ignore[operator]
    chosen[np.argsort(confidence, kind="stable")[:count]] = True
    return chosen


def combine_selective(
    plain: np.ndarray, full: np.ndarray, n_views: int, *, fraction: float | None = None, threshold: float | None = None
) -> SelectiveResult:
    """Selective TTA from already computed plain and full-TTA logits (evaluation computes each view once)."""
    chosen = select(softmax_confidence(plain), fraction=fraction, threshold=threshold)
    logits = np.where(chosen[:, None], full, plain)
    return SelectiveResult(logits, chosen, 1.0 + (n_views - 1) * float(chosen.mean()) if len(chosen) else 1.0)


def selective_logits(
    backend,
    images: np.ndarray,
    mode: str,
    *,
    fraction: float | None = None,
    threshold: float | None = None,
    shift: int = DEFAULT_SHIFT,
    batch: int = 500,
) -> SelectiveResult:
    """Plain logits for confident images, full ``mode`` TTA logits for the rest."""
    if backend.graph_tta != "none":
        raise DawnpipeError(
            "selective TTA needs a model without TTA in its graph", "evaluate an export made without --tta"
        )
    tta_views = views(mode, shift)
    plain = backend_logits(backend, images, "none", batch=batch)
    chosen = select(softmax_confidence(plain), fraction=fraction, threshold=threshold)
    logits = plain.copy()
    extra = [v for v in tta_views if not v.is_identity()]
    if chosen.any() and extra:
        picked = images[chosen]
        identity_weight = sum(v.weight for v in tta_views if v.is_identity())
        total = plain[chosen] * identity_weight
        step = max(1, batch // len(extra))
        for i in range(0, len(picked), step):
            chunk = picked[i : i + step]
            out = backend.infer(np.concatenate([apply_view(chunk, v) for v in extra])).reshape(
                len(extra), len(chunk), -1
            )
            total[i : i + step] += np.tensordot(np.array([v.weight for v in extra], dtype=np.float32), out, axes=1)
        logits[chosen] = total
    return SelectiveResult(logits, chosen, 1.0 + len(extra) * float(chosen.mean()) if len(chosen) else 1.0)

"""Test-time augmentation views, defined once for every consumer.

A view is an index map over rows and columns of a uint8 NHWC image (flip and reflect-padded translation
are both pure re-indexing), plus the weight of its logits in the average. The same index maps drive the
host-side TTA (numpy or torch) and the views baked into an exported ONNX graph, so the two agree exactly.

Modes (weights follow airbench's mirror/translate TTA): ``none`` 1 view; ``flip`` 2 views of weight 1/2;
``translate`` identity 1/2 plus shifts (+s, +s) and (-s, -s) of 1/4 each; ``flip-translate`` their product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dawnpipe.common.errors import DawnpipeError

TTA_MODES = ("none", "flip", "translate", "flip-translate")
DEFAULT_SHIFT = 1  # pixels; airbench and Myrtle translate by one pixel at test time


@dataclass(frozen=True)
class View:
    """One test-time view: optional horizontal flip, then a (dy, dx) reflect-padded shift; logit weight."""

    flip: bool
    dy: int
    dx: int
    weight: float

    def rows(self, height: int) -> np.ndarray:
        """Source row of each output row."""
        return _reflect(np.arange(height) + self.dy, height)

    def cols(self, width: int) -> np.ndarray:
        """Source column of each output column."""
        shifted = _reflect(np.arange(width) + self.dx, width)
        return (width - 1 - shifted) if self.flip else shifted

    def is_identity(self) -> bool:
        """True for the plain image."""
        return not self.flip and self.dy == 0 and self.dx == 0


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
    index = np.abs(index)
    return np.where(index >= size, 2 * (size - 1) - index, index)


def check_mode(mode: str) -> str:
    """Return ``mode`` or raise the one-line unknown-mode error."""
    if mode not in TTA_MODES:
        raise DawnpipeError(f"unknown TTA mode {mode!r}", f"use one of {', '.join(TTA_MODES)}")
    return mode


def views(mode: str, shift: int = DEFAULT_SHIFT) -> tuple[View, ...]:
    """The views of a TTA mode, weights summing to 1."""
    check_mode(mode)
    if shift < 1 or shift > 8:
        raise DawnpipeError(f"TTA shift {shift} px is out of range", "use a shift from 1 to 8 pixels")
    flips = [(False, 1.0)] if mode in ("none", "translate") else [(False, 0.5), (True, 0.5)]
    shifts = [(0, 0, 1.0)]
    if mode in ("translate", "flip-translate"):
        shifts = [(0, 0, 0.5), (shift, shift, 0.25), (-shift, -shift, 0.25)]
    return tuple(View(f, dy, dx, fw * sw) for f, fw in flips for dy, dx, sw in shifts)


def apply_view(images, view: View):
    """The view of a uint8 NHWC batch; numpy arrays and torch tensors alike (pure indexing, exact)."""
    if view.is_identity():
        return images
    h, w = images.shape[1], images.shape[2]
    rows, cols = view.rows(h), view.cols(w)
    if isinstance(images, np.ndarray):
        return images[:, rows][:, :, cols]
    import torch

    rows_t = torch.as_tensor(rows, device=images.device)
    cols_t = torch.as_tensor(cols, device=images.device)
    return images.index_select(1, rows_t).index_select(2, cols_t)


def tta_logits(run: Callable, images, tta_views: tuple[View, ...]):
    """Weighted average of ``run(view(images))`` over the views (numpy or torch, whatever ``run`` returns)."""
    total = None
    for view in tta_views:
        logits = run(apply_view(images, view)) * view.weight
        total = logits if total is None else total + logits
    return total


def backend_logits(
    backend, images: np.ndarray, mode: str, *, shift: int = DEFAULT_SHIFT, batch: int = 500
) -> np.ndarray:
    """Logits of ``backend`` on uint8 images with ``mode`` TTA, applied on the host or recognised in the graph.

    A graph that already holds TTA is run as is when ``mode`` names its TTA, and refused otherwise, so views
    are never applied twice. Host-side views are stacked into one call per chunk, as the graph does.
    """
    check_mode(mode)
    if backend.graph_tta != "none":
        if mode != backend.graph_tta:
            raise DawnpipeError(
                f"this model has {backend.graph_tta} TTA inside its graph, so it cannot be evaluated with --tta {mode}",
                f"use --tta {backend.graph_tta}, or export without --tta to choose TTA at evaluation time",
            )
        tta_views: tuple[View, ...] = views("none")
    else:
        tta_views = views(mode, shift)
    step = max(1, batch // len(tta_views))
    out = []
    for i in range(0, len(images), step):
        chunk = images[i : i + step]
        stacked = np.concatenate([apply_view(chunk, v) for v in tta_views]) if len(tta_views) > 1 else chunk
        logits = backend.infer(stacked).reshape(len(tta_views), len(chunk), -1)
        out.append(np.tensordot(np.array([v.weight for v in tta_views], dtype=np.float32), logits, axes=1))
    return np.concatenate(out) if out else np.zeros((0, len(backend.classes)), dtype=np.float32)

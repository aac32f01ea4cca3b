"""Test-time augmentation views, defined once for every consumer.

A view is an index map over rows and columns of a uint8 NHWC image (flip and reflect-padded translation
are both pure re-indexing), plus the weight of its logits in the average. The same index maps drive the
host-side TTA (numpy or torch) and the views baked into an exported ONNX graph, so the two agree exactly.

Modes (weights follow airbench's mirror/translate TTA): ``none`` 1 view; ``flip`` 2 views of weight 1/2;
``translate`` identity 1/2 plus shifts (+s, +s) and (-s, -s) of 1/4 each; ``flip-translate`` their product, each
flipped view the flip of the image then shifted; ``airbench94`` the same 6 weights with each flipped view the
shifted image then flipped, as airbench94's ``infer`` (tta_level 2) builds them: two of its six views differ from
``flip-translate``'s (the flipped shifts move the other way along the columns), so its timed policy is judged as
it runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dawnpipe.common.errors import DawnpipeError

TTA_MODES = ("none", "flip", "translate", "flip-translate", "airbench94")
SELECTIVE_MODES = tuple(f"selective-{m}" for m in TTA_MODES if m != "none")  # per-image confidence threshold
ALL_MODES = TTA_MODES + SELECTIVE_MODES
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
    if mode in ("translate", "flip-translate", "airbench94"):
        shifts = [(0, 0, 0.5), (shift, shift, 0.25), (-shift, -shift, 0.25)]
    if mode == "airbench94":
        # airbench94 flips the shifted image (utils.infer: infer_mirror of each reflect-padded crop); a View flips
        # first and then shifts, so its flipped views take the opposite column shift: flip(shift(x, dx)) is
        # shift(flip(x), -dx). Order and weights are airbench's: plain, flip, then (up-left, its flip), (down-right,
        # its flip) at 1/8 each.
        return tuple(
            View(f, dy, -dx if f else dx, fw * sw)
            for dy, dx, sw in ((0, 0, 0.5), (-shift, -shift, 0.25), (shift, shift, 0.25))
            for f, fw in flips
        )
    return tuple(View(f, dy, dx, fw * sw) for f, fw in flips for dy, dx, sw in shifts)


def apply_view(images, view: View):
    """The view of a uint8 NHWC batch; numpy arrays and torch tensors alike (pure indexing, exact)."""
    if view.is_identity():
        return images
    h, w = images.shape[1], images.shape[2]
    rows, cols = view.rows(h), view.cols(w)
    if isinstance(images, np.ndarray):
        return images[:, rows][:, :, cols]
    rows_t, cols_t = _device_index(view, h, w, str(images.device))
    return images.index_select(1, rows_t).index_select(2, cols_t)


@functools.lru_cache(maxsize=256)
def _device_index(view: View, height: int, width: int, device: str):
    """A view's row and column index maps as tensors on ``device``, made once: on a GPU each would otherwise be a
    synchronous host-to-device copy in every call, beside the one copy of the images."""
    import torch

    return (
        torch.as_tensor(view.rows(height), device=device),
        torch.as_tensor(view.cols(width), device=device),
    )


def parse_mode(name: str) -> tuple[str, bool]:
    """``"selective-flip"`` -> ``("flip", True)``; ``"flip"`` -> ``("flip", False)``; unknown names are refused."""
    if name in SELECTIVE_MODES:
        return name.removeprefix("selective-"), True
    return check_mode(name), False


def view_logits(run: Callable, images, tta_views: tuple[View, ...], batch: int | None = None) -> list:
    """Logits of ``run`` on each view of ``images``, in view order: the one place views are run.

    Views of a chunk are stacked into one call (as the exported graph stacks them), chunked so that no call
    holds more than ``batch`` images. Works for numpy arrays and torch tensors alike.
    """
    n_views, total = len(tta_views), len(images)
    step = total if batch is None else max(1, batch // n_views)
    per_view: list[list] = [[] for _ in tta_views]
    for i in range(0, total, max(step, 1)):
        chunk = images[i : i + step]
        if n_views == 1:
            parts = [run(apply_view(chunk, tta_views[0]))]
        else:
            stacked = _cat([apply_view(chunk, v) for v in tta_views])
            out = run(stacked)
            parts = [out[k * len(chunk) : (k + 1) * len(chunk)] for k in range(n_views)]
        for k, part in enumerate(parts):
            per_view[k].append(part)
    return [_cat(parts) if len(parts) != 1 else parts[0] for parts in per_view]


def combine(per_view: list, tta_views: tuple[View, ...]):
    """The weighted average of per-view logits: the one place views are combined."""
    total = None
    for view, logits in zip(tta_views, per_view, strict=True):
        term = logits * view.weight
        total = term if total is None else total + term
    return total


def tta_logits(run: Callable, images, tta_views: tuple[View, ...], batch: int | None = None):
    """Weighted average of ``run(view(images))`` over the views."""
    return combine(view_logits(run, images, tta_views, batch), tta_views)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities per row in float64, the row maximum subtracted first so no exp overflows: the one
    softmax of dawnpipe (selective TTA's confidence, predict's and the server's probabilities)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def softmax_confidence(logits: np.ndarray) -> np.ndarray:
    """Top-1 softmax probability per row (what selective TTA thresholds), computed in float64, kept as float32."""
    return softmax(logits).max(axis=1).astype(np.float32)


def check_threshold(threshold: float) -> float:
    """Return a confidence threshold in [0, 1] or raise the one-line error."""
    if not (isinstance(threshold, int | float) and 0.0 <= float(threshold) <= 1.0):
        raise DawnpipeError(f"confidence threshold {threshold!r} is outside [0, 1]", "use a probability such as 0.9")
    return float(threshold)


def selective_from_views(per_view: list, tta_views: tuple[View, ...], threshold: float):
    """Selective TTA from every view's logits (evaluation's cache): (logits, selected mask).

    An image is selected when its plain-view confidence is below ``threshold``; it then gets the mode's full
    weighted average, otherwise its plain logits. Same per-image decision and arithmetic as selective_logits.
    """
    plain = per_view[_identity_index(tta_views)]
    chosen = softmax_confidence(plain) < check_threshold(threshold)
    full = combine(per_view, tta_views)
    return np.where(chosen[:, None], full, plain), chosen


def selective_logits(run: Callable, images: np.ndarray, tta_views: tuple[View, ...], threshold: float, batch=None):
    """Selective TTA as a deployment runs it, per image: the plain view for all, the other views only for the
    images whose plain confidence is below ``threshold``. Returns (logits, selected mask)."""
    identity = _identity_index(tta_views)
    (plain,) = view_logits(run, images, (tta_views[identity],), batch)
    plain = np.asarray(plain)
    chosen = softmax_confidence(plain) < check_threshold(threshold)
    logits = plain.copy()
    extra = tuple(v for k, v in enumerate(tta_views) if k != identity)
    if chosen.any() and extra:
        others = iter(view_logits(run, images[chosen], extra, batch))
        per_view = [plain[chosen] if k == identity else next(others) for k in range(len(tta_views))]
        logits[chosen] = combine(per_view, tta_views)
    return logits, chosen


def _identity_index(tta_views: tuple[View, ...]) -> int:
    for k, view in enumerate(tta_views):
        if view.is_identity():
            return k
    raise DawnpipeError("selective TTA needs a mode whose views include the plain image", "use flip or translate")


def _cat(parts: list):
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(parts)

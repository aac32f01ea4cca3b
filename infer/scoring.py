"""How an eval row records and summarizes its per-image correctness: a Wilson interval for the accuracy, the packed
per-image bits the costs stage pairs rows with, and the digest naming which test images (in which order) the bits
refer to. Kept apart from evaluate() so the costs stage reads and recomputes rows without the evaluation loop."""

from __future__ import annotations

import base64
import hashlib
import math

import numpy as np

from dawnpipe.common.errors import DawnpipeError


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sane at 0% and 100%, unlike the normal one)."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # the bounds are exactly 0 and 1 at the extremes
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


def test_images_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the test images' pixels and labels in the order they were scored: the per-image bits of every row
    refer to exactly these images, in this order."""
    digest = hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def pack_bits(flags: np.ndarray) -> str:
    """Per-image booleans as base64 of numpy.packbits (10,000 images -> 1.7 kB of JSON)."""
    return base64.b64encode(np.packbits(np.asarray(flags, dtype=bool)).tobytes()).decode()


def unpack_bits(text: str, count: int) -> np.ndarray:
    """Inverse of pack_bits; a one-line error for a damaged field."""
    try:
        raw = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8)
    except (ValueError, TypeError):
        raise DawnpipeError("an eval row's per-image results are damaged", "rerun `dawnpipe eval`") from None
    if raw.size * 8 < count:
        raise DawnpipeError("an eval row's per-image results are shorter than its image count", "rerun eval")
    return np.unpackbits(raw)[:count].astype(bool)

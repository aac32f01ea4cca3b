"""One latency/throughput harness for every backend (used by eval, costs and the benchmarks).

Warm-up first (lazy allocations, kernel selection), then timed calls with the backend's synchronize() so a
GPU's queued work is counted; percentiles are per image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Per-image latency percentiles (ms) and throughput (images/s) of one measured configuration."""

    batch: int
    calls: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return self.__dict__.copy()


def measure(
    run: Callable[[np.ndarray], object],
    images: np.ndarray,
    *,
    batch: int,
    warmup: int = 3,
    iters: int = 20,
    min_seconds: float = 0.0,
    sync: Callable[[], None] = lambda: None,
) -> Timing:
    """Time ``run`` on ``batch`` images (repeating ``images`` if needed) for ``iters`` calls (or min_seconds)."""
    if batch < 1 or iters < 1:
        raise ValueError("batch and iters must be positive")
    reps = -(-batch // len(images))
    x = (
        np.ascontiguousarray(np.concatenate([images] * reps)[:batch])
        if reps > 1
        else np.ascontiguousarray(images[:batch])
    )
    for _ in range(warmup):
        run(x)
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        run(x)
        sync()
        times.append(time.perf_counter() - t0)
    per_image_ms = np.array(times) * 1000.0 / batch
    p50, p90, p99 = np.percentile(per_image_ms, [50, 90, 99])
    return Timing(batch, len(times), float(p50), float(p90), float(p99), float(batch * len(times) / sum(times)))

"""Statistics the report decides with: paired accuracy differences, pooled intervals, latency differences.

Two classifiers scored on the same test images are compared *paired*: only the images where they disagree
(b = A right and B wrong, c = A wrong and B right) carry information. The difference in accuracy is
(b - c) / n. Its 95% interval here is the exact conditional one: a Clopper-Pearson interval for
p = b / (b + c), mapped through (b + c) / n * (2p - 1); the exact McNemar test gives the p-value. Both are
exact for any sample size, need no bootstrap seed, and can be checked by hand (tests do).
Several seeds are pooled by summing b, c and n over the seed pairs (seed k of A against seed k of B).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959964


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B on the same images, pooled over seed pairs."""

    difference: float
    low: float
    high: float
    a_only: int  # images A gets right and B wrong
    b_only: int  # images B gets right and A wrong
    images: int
    p_value: float  # exact two-sided McNemar

    @property
    def significant(self) -> bool:
        """The 95% interval excludes zero."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return {**asdict(self), "significant": self.significant}


def _betainc_inv(a: float, b: float, q: float) -> float:
    """Inverse of the regularised incomplete beta function by bisection on scipy-free log-space sums."""
    low, high = 0.0, 1.0
    for _ in range(100):
        mid = (low + high) / 2
        if _betainc(a, b, mid) < q:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for integer a, b (the binomial tail identity)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    n = int(a + b - 1)
    # I_x(a, n - a + 1) = P(Binomial(n, x) >= a)
    return binomial_tail(int(a), n, x)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (exact enough for n up to millions)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    i = np.arange(k, n + 1)
    logs = (
        np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in i])
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
    )
    top = logs.max()
    return float(min(1.0, math.exp(top) * np.exp(logs - top).sum()))


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for successes / trials."""
    if trials == 0:
        return 0.0, 1.0
    alpha = 1.0 - level
    low = 0.0 if successes == 0 else _betainc_inv(successes, trials - successes + 1, alpha / 2)
    high = 1.0 if successes == trials else _betainc_inv(successes + 1, trials - successes, 1 - alpha / 2)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: 2 * P(Binomial(b + c, 1/2) <= min(b, c)), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * binomial_tail(n - min(b, c), n, 0.5))


def paired_difference(a_correct: list[np.ndarray], b_correct: list[np.ndarray]) -> PairedDifference:
    """Paired difference of two classifiers' per-image correctness, pooled over matched seed pairs."""
    if len(a_correct) != len(b_correct) or not a_correct:
        raise ValueError("paired comparison needs the same number (>= 1) of seed runs on each side")
    b = c = n = 0
    for a, other in zip(a_correct, b_correct, strict=True):
        a, other = np.asarray(a, bool), np.asarray(other, bool)
        if a.shape != other.shape:
            raise ValueError("paired comparison needs the same test images on both sides")
        b += int((a & ~other).sum())
        c += int((~a & other).sum())
        n += a.size
    discordant = b + c
    if discordant == 0:
        return PairedDifference(0.0, 0.0, 0.0, 0, 0, n, 1.0)
    p_low, p_high = clopper_pearson(b, discordant)
    scale = discordant / n
    return PairedDifference(
        (b - c) / n, scale * (2 * p_low - 1), scale * (2 * p_high - 1), b, c, n, mcnemar_exact(b, c)
    )


def mean_difference(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int):
    """Difference of two means with a normal-approximation 95% interval (latency: hundreds of calls per row)."""
    se = math.sqrt(std_a**2 / max(n_a, 1) + std_b**2 / max(n_b, 1))
    diff = mean_a - mean_b
    return diff, diff - Z95 * se, diff + Z95 * se

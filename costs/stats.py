"""Statistics the report decides with, each counting a test image once and a timing round once.

Accuracy margins. Two configurations scored on the same test images are compared image by image. With several
seeds, a side's correctness on an image is the mean over its seeds (seed k of one side paired with seed k of the
other, by seed value), so every test image counts once: seeds add spread, not sample size. The margin is the
mean over the n images of d_i = a_i - b_i, and its 95% interval comes from the images:

- when every d_i is -1, 0 or 1 (one seed, or seeds that agree on every image), the exact conditional interval:
  only the discordant images carry information (b where A alone is right, c where B alone is), Clopper-Pearson
  for p = b / (b + c) mapped through (b + c) / n * (2p - 1), and the exact McNemar p-value;
- otherwise a t interval over the images, mean(d) +- t(0.975, n - 1) sd(d) / sqrt(n), with the one-sample t-test's
  p-value (at 10,000 images t is the normal distribution to three decimals, and d_i is bounded).

Two identical copies of a seed therefore give exactly the one-seed interval. A point's accuracy is the mean over
images of its per-image seed mean, with the Wilson interval when that mean is 0 or 1 on every image, else the t
interval over images; the seed-to-seed spread is reported beside it, never folded into it.

Latency margins. The unit is the timing round (rows are interleaved by round, so drift between rounds moves every
row of a round alike): two rows timed in the same session are compared round by round, a paired t interval over
their per-round differences, so the drift stays inside the interval instead of being mistaken for precision; rows
from different sessions (other runs, other processes) are compared as two samples of rounds (Welch). Special
functions come from scipy.stats.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B on the same images, each image counted once."""

    difference: float
    low: float
    high: float
    a_only: int  # images on which A does better than B (over the paired seeds)
    b_only: int  # images on which B does better than A
    images: int  # test images: the sample size, whatever the number of seeds
    p_value: float
    method: str  # "exact conditional (McNemar)" or "t over images"
    seed_pairs: int = 1  # seed pairs averaged per image

    @property
    def significant(self) -> bool:
        """The 95% interval excludes zero."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return {**asdict(self), "significant": self.significant}


def per_image(correct_by_seed: list[np.ndarray] | tuple[np.ndarray, ...]) -> np.ndarray:
    """Each image's correctness averaged over seeds (float64), the image being the unit."""
    if not len(correct_by_seed):
        raise ValueError("per-image correctness needs at least one seed")
    stacked = np.stack([np.asarray(c, dtype=np.float64) for c in correct_by_seed])
    return stacked.mean(axis=0)


def clopper_pearson(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact binomial interval for successes / trials."""
    from scipy.stats import binomtest

    if trials == 0:
        return 0.0, 1.0
    ci = binomtest(successes, trials).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of b discordant images out of b + c at 1/2."""
    from scipy.stats import binomtest

    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def t_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high) of ``values`` with the t interval over them (a single value: a zero-width interval)."""
    from scipy.stats import t

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if values.size < 2:
        return mean, mean, mean
    half = float(t.ppf(0.5 + level / 2, values.size - 1)) * float(values.std(ddof=1)) / math.sqrt(values.size)
    return mean, mean - half, mean + half


def paired_difference(a_correct: list[np.ndarray], b_correct: list[np.ndarray]) -> PairedDifference:
    """Paired difference of two classifiers' per-image correctness over matched seed pairs, images the unit."""
    if len(a_correct) != len(b_correct) or not a_correct:
        raise ValueError("paired comparison needs the same number (>= 1) of seed runs on each side")
    if any(np.shape(a) != np.shape(b) for a, b in zip(a_correct, b_correct, strict=True)):
        raise ValueError("paired comparison needs the same test images on both sides")
    d = per_image(a_correct) - per_image(b_correct)
    n, better, worse = int(d.size), int((d > 0).sum()), int((d < 0).sum())
    if np.all(np.isin(d, (-1.0, 0.0, 1.0))):
        if better + worse == 0:
            return PairedDifference(0.0, 0.0, 0.0, 0, 0, n, 1.0, "exact conditional (McNemar)", len(a_correct))
        p_low, p_high = clopper_pearson(better, better + worse)
        scale = (better + worse) / n
        return PairedDifference(
            (better - worse) / n, scale * (2 * p_low - 1), scale * (2 * p_high - 1), better, worse, n,
            mcnemar_exact(better, worse), "exact conditional (McNemar)", len(a_correct),
        )  # fmt: skip
    from scipy.stats import ttest_1samp

    mean, low, high = t_interval(d)
    p_value = float(ttest_1samp(d, 0.0).pvalue)
    return PairedDifference(mean, low, high, better, worse, n, p_value, "t over images", len(a_correct))


def accuracy_interval(correct_by_seed: list[np.ndarray] | tuple[np.ndarray, ...]) -> tuple[float, float, float]:
    """(accuracy, low, high): the mean over images of the per-image seed mean, each image counted once."""
    from dawnpipe.infer.scoring import wilson_interval

    p = per_image(correct_by_seed)
    if np.all(np.isin(p, (0.0, 1.0))):
        low, high = wilson_interval(int(p.sum()), int(p.size))
        return float(p.mean()), low, high
    return t_interval(p)


@dataclass(frozen=True)
class RoundDifference:
    """Latency of B minus latency of A (ms per image saved by A), the timing round the unit."""

    difference: float
    low: float
    high: float
    rounds: int  # rounds behind the interval (per side for unpaired rows)
    paired: bool  # the two rows were timed in the same rounds (one session)
    method: str

    @property
    def significant(self) -> bool:
        """The 95% interval excludes zero."""
        return self.low > 0 or self.high < 0


def round_difference(a_rounds: list[float], b_rounds: list[float], paired: bool) -> RoundDifference:
    """B's per-round latency minus A's: paired over rounds timed together, else Welch over the two sets."""
    a, b = np.asarray(a_rounds, dtype=np.float64), np.asarray(b_rounds, dtype=np.float64)
    if paired and a.size == b.size and a.size > 0:
        mean, low, high = t_interval(b - a)
        return RoundDifference(mean, low, high, int(a.size), True, "paired t over rounds")
    from scipy.stats import t

    diff = float(b.mean() - a.mean())
    if a.size < 2 or b.size < 2:
        return RoundDifference(diff, diff, diff, int(min(a.size, b.size)), False, "unpaired, too few rounds")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if se > 0 else a.size + b.size - 2
    half = float(t.ppf(0.5 + LEVEL / 2, dof)) * se
    return RoundDifference(diff, diff - half, diff + half, int(min(a.size, b.size)), False, "Welch t over rounds")

"""Statistics the report decides with, each counting a test image once and a timing round once.

Accuracy margins. Two configurations scored on the same test images are compared image by image. With several
seeds, a side's correctness on an image is the mean over its seeds (seed k of one side paired with seed k of the
other, by seed value), so every test image counts once: seeds add spread, not sample size. The margin is the
mean over the n images of d_i = a_i - b_i, and its 95% interval comes from the images:

- when every d_i is -1, 0 or 1 (one seed, or seeds that agree on every image), Tango's score interval for the
  difference of paired proportions (Tango 1998, Stat Med 17:891): the set of differences a score test at 5% does
  not reject, with the discordant fraction estimated under each candidate difference, so the interval covers 95%
  at any number of discordant images (checked by simulation in tests/costs/test_stats.py), and the exact McNemar
  p-value. (Until issue 44 this was a Clopper-Pearson interval scaled by the observed discordant fraction, which
  ignores that fraction's own variance: 11% too narrow at 150 against 450 of 10,000.)
- otherwise a t interval over the images, mean(d) +- t(0.975, n - 1) sd(d) / sqrt(n), with the one-sample t-test's
  p-value (at 10,000 images t is the normal distribution to three decimals, and d_i is bounded).

Image-level intervals describe the trained weights compared, not the recipe: two trainings of one seed differ by
about one paired half-width. So a margin over several seeds also carries each seed's own margin and whether they
all agree in sign (``seed_spread``): a verdict holds "for these runs" when the image interval excludes zero, and
"across seeds" only when every seed agrees too.

Two identical copies of a seed therefore give exactly the one-seed interval. A point's accuracy is the mean over
images of its per-image seed mean, with the Wilson interval when that mean is 0 or 1 on every image, else the t
interval over images; the seed-to-seed spread is reported beside it, never folded into it.

Latency margins. The unit is the timing round (rows are interleaved by round, so drift between rounds moves every
row of a round alike). A configuration timed for several seeds in one session has several rows in each round; they
are averaged within each (session, round) first, so a round counts once however many seeds it timed. Two
configurations timed in the same session are compared round by round, a paired t interval over their per-round
differences, so the drift stays inside the interval instead of being mistaken for precision; configurations from
different sessions are compared as two samples of rounds (Welch). Fewer than MIN_ROUNDS rounds give no interval:
the margin says "too few rounds" and decides nothing. Special functions come from scipy.stats.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from dawnpipe.infer.latency import MIN_ROUNDS  # rounds a latency interval needs (fewer: "too few rounds")

LEVEL = 0.95
PAIRED_METHOD = "Tango score interval (paired proportions), exact McNemar p-value"


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
    method: str  # PAIRED_METHOD or "t over images"
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
    """(mean, low, high) of ``values`` with the t interval over them; fewer than two values have none (ValueError:
    a zero-width interval would read as certainty)."""
    from scipy.stats import t

    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        raise ValueError(f"a t interval needs at least two values, got {values.size}")
    mean = float(values.mean())
    half = float(t.ppf(0.5 + level / 2, values.size - 1)) * float(values.std(ddof=1)) / math.sqrt(values.size)
    return mean, mean - half, mean + half


def tango_interval(b: int, c: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Tango's score interval for (b - c) / n, the difference of two paired proportions over n pairs of which b
    favour the first and c the second: every difference d whose score statistic
    Z(d) = (b - c - n d) / sqrt(n (2 q(d) + d (1 - d))) lies within the normal quantile, q(d) being the
    maximum-likelihood probability of a pair favouring the second under the constraint that the difference is d.
    """
    from scipy.optimize import brentq
    from scipy.stats import norm

    if n <= 0:
        return -1.0, 1.0
    z = float(norm.ppf(0.5 + level / 2))

    def score(d: float) -> float:
        w = -b - c + (2 * n - b + c) * d
        q = (-w + math.sqrt(max(w * w + 8 * n * c * d * (1 - d), 0.0))) / (4 * n)
        variance, excess = n * (2 * q + d * (1 - d)), b - c - n * d
        if excess == 0 or variance <= 0:
            return 0.0 if excess == 0 else math.copysign(math.inf, excess)
        return excess / math.sqrt(variance)

    centre, edge = (b - c) / n, 1.0 - 1e-12
    low = -1.0 if score(-edge) <= z else brentq(lambda d: score(d) - z, -edge, centre, xtol=1e-12)
    high = 1.0 if score(edge) >= -z else brentq(lambda d: score(d) + z, centre, edge, xtol=1e-12)
    return float(low), float(high)


def paired_difference(a_correct: list[np.ndarray], b_correct: list[np.ndarray]) -> PairedDifference:
    """Paired difference of two classifiers' per-image correctness over matched seed pairs, images the unit."""
    if len(a_correct) != len(b_correct) or not a_correct:
        raise ValueError("paired comparison needs the same number (>= 1) of seed runs on each side")
    if any(np.shape(a) != np.shape(b) for a, b in zip(a_correct, b_correct, strict=True)):
        raise ValueError("paired comparison needs the same test images on both sides")
    d = per_image(a_correct) - per_image(b_correct)
    n, better, worse = int(d.size), int((d > 0).sum()), int((d < 0).sum())
    if np.all(np.isin(d, (-1.0, 0.0, 1.0))):
        low, high = tango_interval(better, worse, n)
        return PairedDifference(
            (better - worse) / n, low, high, better, worse, n, mcnemar_exact(better, worse), PAIRED_METHOD,
            len(a_correct),
        )  # fmt: skip
    from scipy.stats import ttest_1samp

    mean, low, high = t_interval(d)
    p_value = float(ttest_1samp(d, 0.0).pvalue)
    return PairedDifference(mean, low, high, better, worse, n, p_value, "t over images", len(a_correct))


def seed_spread(a_by_seed: dict[int, np.ndarray], b_by_seed: dict[int, np.ndarray], seeds: list[int]) -> dict:
    """Each seed's own margin (A's accuracy minus B's on that seed's pair of runs) and whether every seed's margin
    has the sign of the pooled one: the recipe-level evidence beside the image-level interval."""
    per_seed = {int(s): float(np.mean(a_by_seed[s]) - np.mean(b_by_seed[s])) for s in seeds}
    pooled = float(np.mean(list(per_seed.values())))
    agree = pooled != 0 and all(math.copysign(1, v) == math.copysign(1, pooled) and v != 0 for v in per_seed.values())
    return {"per_seed": {str(s): v for s, v in per_seed.items()}, "seeds_agree_in_sign": bool(agree)}


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
    low: float | None  # None: too few rounds for an interval
    high: float | None
    rounds: int  # independent rounds behind the interval (per side, the fewer, for unpaired rows)
    paired: bool  # the two rows were timed in the same rounds (one session)
    method: str

    @property
    def significant(self) -> bool:
        """The 95% interval excludes zero (never without an interval)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def round_difference(a_rounds: list[float], b_rounds: list[float], paired: bool) -> RoundDifference:
    """B's per-round latency minus A's: paired over rounds timed together, else Welch over the two sets; each value
    one independent round (costs.points averages a configuration's seeds within a round first). Fewer than
    MIN_ROUNDS rounds: no interval (low and high are None) and nothing decided."""
    a, b = np.asarray(a_rounds, dtype=np.float64), np.asarray(b_rounds, dtype=np.float64)
    rounds = int(min(a.size, b.size))
    if rounds < MIN_ROUNDS:
        diff = float(b.mean() - a.mean()) if a.size and b.size else float("nan")
        return RoundDifference(diff, None, None, rounds, paired and a.size == b.size, f"too few rounds ({rounds})")
    if paired and a.size == b.size:
        mean, low, high = t_interval(b - a)
        return RoundDifference(mean, low, high, int(a.size), True, "paired t over rounds")
    from scipy.stats import t

    diff = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if se > 0 else a.size + b.size - 2
    half = float(t.ppf(0.5 + LEVEL / 2, dof)) * se
    return RoundDifference(diff, diff - half, diff + half, rounds, False, "Welch t over rounds")

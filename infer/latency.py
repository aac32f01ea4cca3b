"""One latency protocol for every backend and every TTA mode (used by eval, costs and the benchmarks).

Protocol, per measured configuration ("row"):
1. warm-up calls (lazy allocations, kernel selection) before any timing;
2. the backend runs with a fixed thread count, recorded beside every figure;
3. rows are interleaved in rounds (round 1: row A, row B, ...; round 2: ...), so drift from other work on the
   machine hits every row alike instead of whichever row happened to run during it; each round runs the rows in a
   new order (a permutation drawn from a seed recorded on every row, with each row's position per round), because
   with 70 rows a round lasts 14 s or more, and drift inside a round would otherwise always land on the same rows;
4. in each round a row makes at least ``calls`` calls and runs for at least ``min_seconds``;
5. every call takes the next distinct images (cycling through the given set), so a selective-TTA row pays
   for its extra views on exactly the images that need them, and its mean and tail show it;
6. per row: mean, p50, p90, p99, std, min and max per image, the per-round means and medians, and the spread:
   the range of the per-round medians over the overall median, after each round's common factor is divided out.
   The common factor of a round is the median over rows of (that row's round median / the row's own median): a
   machine that slows down for a round slows every row of it, which is drift, not a row's unreliability. A row
   whose spread still exceeds ``max_spread`` is flagged as untrustworthy (the row is bimodal, or something hit it
   alone) in the table and the report; the drift (the range of the common factors) is recorded once per session.
   With fewer than three rows no common factor is taken (the raw spread is judged).

Every row of one ``measure_rows`` call carries the same ``session`` id: rows of one session were timed in the same
rounds, so their per-round figures pair (costs.stats.round_difference). An interval over rounds needs at least
MIN_ROUNDS of them: fewer are accepted, and every row then says it carries no interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

MIN_ROUNDS = 3  # rounds a latency interval needs (costs.stats); fewer are measured, and the rows say so


@dataclass(frozen=True)
class Protocol:
    """How much to measure. Units in comments."""

    rounds: int = 5  # interleaved rounds over all rows
    calls: int = 20  # calls per row per round, at least
    min_seconds: float = 0.2  # seconds per row per round, at least
    warmup: int = 5  # untimed calls per row before round 1
    max_spread: float = 0.25  # flag a row whose per-round medians range over more than this fraction of its p50


@dataclass(frozen=True)
class Timing:
    """Per-image latency statistics (ms) and throughput (images/s) of one row."""

    batch: int
    calls: int
    rounds: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    round_p50_ms: list[float]
    spread: float  # of the per-round medians, each round's common factor divided out
    flagged: bool
    images_per_s: float
    round_mean_ms: list[float] = field(default_factory=list)  # per-image mean of each round
    spread_raw: float = 0.0  # of the per-round medians as measured
    round_factor: list[float] = field(default_factory=list)  # each round's common factor (1.0: none taken)
    drift: float = 0.0  # range of the session's common factors over their minimum (0: no drift, or too few rows)
    session: str = ""  # rows of one session were timed in the same rounds
    order_seed: int | None = None  # seed of the per-round row order (numpy default_rng), recorded to be rechecked
    round_position: list[int] = field(default_factory=list)  # this row's place (0 = first) in each round
    interval: str = ""  # "" or why the rounds give no interval (fewer than MIN_ROUNDS)

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def summarize(per_call_s: list[list[float]], batch: int, max_spread: float) -> Timing:
    """Statistics of one row from its per-round call times (seconds per call), judged on its own."""
    every = np.concatenate([np.asarray(r, dtype=np.float64) for r in per_call_s]) * 1000.0 / batch
    round_p50 = [float(np.median(np.asarray(r) * 1000.0 / batch)) for r in per_call_s]
    round_mean = [float(np.mean(np.asarray(r) * 1000.0 / batch)) for r in per_call_s]
    p50, p90, p99 = (float(v) for v in np.percentile(every, [50, 90, 99]))
    spread = _spread(round_p50, p50)
    return Timing(
        batch=batch,
        calls=int(every.size),
        rounds=len(per_call_s),
        mean_ms=float(every.mean()),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        std_ms=float(every.std(ddof=1)) if every.size > 1 else 0.0,
        min_ms=float(every.min()),
        max_ms=float(every.max()),
        round_p50_ms=round_p50,
        spread=float(spread),
        flagged=bool(spread > max_spread),
        images_per_s=float(batch * every.size / (every.sum() * batch / 1000.0)),
        round_mean_ms=round_mean,
        spread_raw=float(spread),
        round_factor=[1.0] * len(round_p50),
    )


def _spread(rounds: list[float], centre: float) -> float:
    return (max(rounds) - min(rounds)) / centre if centre > 0 else 0.0


def judge_session(timings: dict[str, Timing], max_spread: float, session: str) -> dict[str, Timing]:
    """Each round's common factor (the median over rows of each row's round median over its own median) divided
    out of every row before its spread is judged; the session's drift and id recorded on every row."""
    names = list(timings)
    rounds = {len(t.round_p50_ms) for t in timings.values()}
    if len(names) < 3 or len(rounds) != 1:
        return {n: replace(t, session=session) for n, t in timings.items()}
    ratios = np.array([np.asarray(t.round_p50_ms) / np.median(t.round_p50_ms) for t in timings.values()])
    factor = np.median(ratios, axis=0)
    drift = float(factor.max() / factor.min() - 1.0) if factor.min() > 0 else 0.0
    out = {}
    for name, t in timings.items():
        steady = list(np.asarray(t.round_p50_ms) / factor)
        spread = _spread(steady, float(np.median(steady)))
        out[name] = replace(t, spread=float(spread), flagged=bool(spread > max_spread), round_factor=factor.tolist(),
                            drift=drift, session=session)  # fmt: skip
    return out


def measure_rows(
    rows: dict[str, Callable[[np.ndarray], object]],
    images: np.ndarray,
    *,
    batch: int,
    protocol: Protocol = Protocol(),
    sync: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time every row under the protocol, interleaved; each call gets the next ``batch`` distinct images."""
    if batch < 1 or protocol.rounds < 1 or protocol.calls < 1:
        raise ValueError("batch, rounds and calls must be positive")
    import uuid

    session = uuid.uuid4().hex[:12]
    order_seed = int(session, 16) % 2**32  # recorded on every row: the orders can be drawn again
    order_rng = np.random.default_rng(order_seed)
    if len(images) < batch:
        images = np.concatenate([images] * (-(-batch // len(images))))
    starts = list(range(0, len(images) - batch + 1, batch))
    cursor = {name: 0 for name in rows}

    def next_input(name: str) -> np.ndarray:
        start = starts[cursor[name] % len(starts)]
        cursor[name] += 1
        return np.ascontiguousarray(images[start : start + batch])

    for name, run in rows.items():
        for _ in range(protocol.warmup):
            run(next_input(name))
        cursor[name] = 0  # timed calls start over the same images for every row
    sync()
    times: dict[str, list[list[float]]] = {name: [] for name in rows}
    positions: dict[str, list[int]] = {name: [] for name in rows}
    names = list(rows)
    for _ in range(protocol.rounds):
        order = [names[i] for i in order_rng.permutation(len(names))]
        for position, name in enumerate(order):
            run = rows[name]
            positions[name].append(position)
            this_round: list[float] = []
            began = clock()
            while len(this_round) < protocol.calls or clock() - began < protocol.min_seconds:
                x = next_input(name)
                t0 = clock()
                run(x)
                sync()
                this_round.append(clock() - t0)
            times[name].append(this_round)
    interval = (
        "" if protocol.rounds >= MIN_ROUNDS else f"too few rounds ({protocol.rounds} < {MIN_ROUNDS}): no interval"
    )
    timings = {
        name: replace(
            summarize(t, batch, protocol.max_spread),
            order_seed=order_seed,
            round_position=positions[name],
            interval=interval,
        )  # fmt: skip
        for name, t in times.items()
    }
    return judge_session(timings, protocol.max_spread, session)

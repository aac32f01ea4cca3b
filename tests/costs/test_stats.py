"""The judge's statistics (issue 44): the one-seed paired interval covers 95%, a timing round counts once, too few
rounds decide nothing, summaries count distinct comparisons with Holm beside them, and recheck can disagree."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.costs.multiplicity import holm, pairing_summary
from dawnpipe.costs.points import Point, compare, scope
from dawnpipe.costs.stats import (
    PAIRED_METHOD,
    clopper_pearson,
    mcnemar_exact,
    paired_difference,
    round_difference,
    t_interval,
    tango_interval,
)


def test_tango_interval_matches_the_published_worked_example():
    # Cavo et al. 2012 as tabulated by Fagerland, Lydersen & Laake (contingencytables' tests): 6 vs 16 of 161
    # pairs; Tango's score interval -0.1240 to -0.0054, the exact McNemar p 0.052479
    low, high = tango_interval(6, 16, 161)
    assert low == pytest.approx(-0.1240, abs=5e-5) and high == pytest.approx(-0.0054, abs=5e-5)
    assert mcnemar_exact(6, 16) == pytest.approx(0.052479, abs=1e-6)


@pytest.mark.parametrize("discordant", [20, 200, 2000])
def test_the_one_seed_paired_interval_covers_95_percent(discordant):
    """2,000 simulated test sets of 10,000 images with `discordant` images expected to differ (60:40 in A's
    favour): the interval must hold the true difference in 93.5-96.5% of them. The old conditional interval
    (Clopper-Pearson scaled by the observed discordant fraction) ignored that fraction's variance."""
    n, rng = 10_000, np.random.default_rng(discordant)
    p_a, p_b = 0.6 * discordant / n, 0.4 * discordant / n
    draws = rng.multinomial(n, [p_a, p_b, 1 - p_a - p_b], size=2000)
    covered = [low <= p_a - p_b <= high for low, high in (tango_interval(int(b), int(c), n) for b, c, _ in draws)]
    assert 0.935 <= np.mean(covered) <= 0.965, np.mean(covered)


def test_the_old_conditional_interval_was_too_narrow_and_the_new_one_is_named():
    low, high = tango_interval(150, 450, 10_000)
    p_low, p_high = clopper_pearson(150, 600)
    old = 0.06 * (2 * p_high - 1) - 0.06 * (2 * p_low - 1)
    assert (high - low) / old > 1.1  # the figure: 11% too narrow at 150 against 450
    a = np.array([1] * 150 + [0] * 450 + [1] * 9000 + [0] * 400, bool)
    b = np.array([0] * 150 + [1] * 450 + [1] * 9000 + [0] * 400, bool)
    result = paired_difference([a], [b])
    assert result.method == PAIRED_METHOD and (result.low, result.high) == (low, high)


def test_no_discordant_image_still_gives_an_interval_of_width():
    low, high = tango_interval(0, 0, 10_000)
    assert low < 0 < high and high - low > 1e-4  # not the zero-width "interval" of the conditional method


def test_fewer_than_two_values_have_no_t_interval_and_fewer_than_three_rounds_decide_nothing():
    with pytest.raises(ValueError):
        t_interval(np.array([1.0]))
    for rounds in (1, 2):
        margin = round_difference([1.0] * rounds, [2.0] * rounds, paired=True)
        assert margin.low is None and margin.high is None and not margin.significant
        assert margin.method == f"too few rounds ({rounds})"
    assert round_difference([1.0, 1.1, 1.0], [2.0, 2.1, 2.0], paired=True).significant


def _timed(label: str, rounds_by_seed: tuple, sessions: tuple, seeds=(0, 1)) -> Point:
    mean = float(np.mean([np.mean(r) for r in rounds_by_seed]))
    return Point(
        label=label, width=1.0, tta="none", backend="torch", precision="fp16", seeds=seeds, accuracy=0.9,
        accuracy_std=0.0, ci95=(0.89, 0.91), views_per_image=1.0, gflops_per_image=0.76, latency_ms=mean,
        latency_p50_ms=mean, latency_p99_ms=mean, latency_rounds_ms=rounds_by_seed, latency_sessions=sessions,
    )  # fmt: skip


def test_a_timing_round_counts_once_however_many_seeds_it_timed():
    # both seeds of each configuration timed in one session of 5 rounds: 5 independent rounds, not 10
    rng = np.random.default_rng(0)
    a0, a1, b0, b1 = (tuple(2.0 + rng.normal(0, 0.05, 5)) for _ in range(4))
    a = _timed("a", (a0, a1), ("s", "s"))
    b = _timed("b", (tuple(x + 0.3 for x in b0), tuple(x + 0.3 for x in b1)), ("s", "s"))
    margin = compare(a, b, "latency")
    assert margin["rounds"] == 5 and margin["paired_rounds"]
    per_round = [(b0[i] + 0.3 + b1[i] + 0.3) / 2 - (a0[i] + a1[i]) / 2 for i in range(5)]
    mean, low, high = t_interval(np.array(per_round))
    assert (margin["difference"], margin["low"], margin["high"]) == pytest.approx((mean, low, high))
    # seeds timed in two sessions: each (session, round) is its own round, 10 of them, still paired
    apart = compare(replace(a, latency_sessions=("s", "t")), replace(b, latency_sessions=("s", "t")), "latency")
    assert apart["rounds"] == 10 and apart["paired_rounds"]
    # different sessions on the two sides: Welch over each side's 5 seed-averaged rounds
    welch = compare(a, replace(b, latency_sessions=("u", "u")), "latency")
    assert welch["rounds"] == 5 and not welch["paired_rounds"] and welch["method"] == "Welch t over rounds"


def test_a_margin_over_seeds_carries_each_seeds_margin_and_the_prose_scopes_it():
    rng = np.random.default_rng(1)
    a0, b0 = rng.random(2000) < 0.9, rng.random(2000) < 0.8
    a1, b1 = a0.copy(), b0.copy()

    def point(label, bits):
        return replace(_timed(label, ((1.0, 1.0, 1.0),) * 2, ("s", "s")), correct=bits)

    agree = compare(point("a", (a0, a1)), point("b", (b0, b1)), "accuracy")
    assert agree["seed_spread"]["seeds_agree_in_sign"] and set(agree["seed_spread"]["per_seed"]) == {"0", "1"}
    assert "across seeds: every seed agrees" in scope(agree)
    # seed 1's B beats its A: the pooled margin may still exclude zero, but only "for these runs"
    disagree = compare(point("a", (a0, b0)), point("b", (b0, a0 | (rng.random(2000) < 0.5))), "accuracy")
    if disagree["significant"]:
        assert "for these runs only" in scope(disagree)
    assert not disagree["seed_spread"]["seeds_agree_in_sign"]
    one = compare(replace(point("a", (a0,)), seeds=(0,)), replace(point("b", (b0,)), seeds=(0,)), "accuracy")
    assert one["significant"] and "one seed" in scope(one)
    assert scope({"significant": False}) == ""


def test_holm_rejects_step_down():
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]  # 0.005<=.0125, .01<=.0167, .03>.025
    assert holm([0.001, 0.001]) == [True, True] and holm([]) == []


def test_summary_counts_rows_that_repeat_a_comparison_bit_for_bit_once():
    rng = np.random.default_rng(2)
    flip, plain = rng.random(4000) < 0.92, rng.random(4000) < 0.88

    def pt(label, backend, views, bits, gflops):
        return Point(label=label, width=1.0, tta="flip" if views > 1 else "none", backend=backend, precision="fp16",
                     seeds=(0,), accuracy=float(bits.mean()), accuracy_std=0.0, ci95=(0, 1), views_per_image=views,
                     gflops_per_image=gflops, correct=(bits,))  # fmt: skip

    points = [pt(f"w1 flip @ {b}", b, 2, flip, 1.5) for b in ("torch", "graphs")] + [
        pt(f"w1.5 none @ {b}", b, 1, plain, 1.7) for b in ("torch", "graphs")
    ]
    rows = [
        {"tta": t, "network": n, "network_costs_at_least_as_much": True,
         "margin": compare(next(p for p in points if p.label == t), next(p for p in points if p.label == n),
                           "accuracy")}
        for t, n in (("w1 flip @ torch", "w1.5 none @ torch"), ("w1 flip @ graphs", "w1.5 none @ graphs"))
    ]  # fmt: skip
    summary = pairing_summary(rows, points)
    assert summary["real_rows"] == 2 and summary["distinct_comparisons"] == 1
    assert summary["repeated_rows"] == [{"row": "w1 flip @ graphs vs w1.5 none @ graphs",
                                         "repeats": "w1 flip @ torch vs w1.5 none @ torch"}]  # fmt: skip
    assert summary["ahead"] == summary["ahead_after_holm"] == 1 and summary["behind"] == 0


@pytest.fixture
def family_report(tmp_path):
    from dawnpipe.costs.report import ReportConfig, build_report
    from tests.costs.test_rules_report import make_family

    family = make_family(tmp_path / "family")
    out = tmp_path / "report"
    build_report(ReportConfig(runs=tuple(map(str, family)), out=str(out), budget_ms=2.5, accuracy_threshold=85))
    return out / "report.json"


def test_recheck_names_a_flipped_flag_and_a_changed_winner_and_exits_non_zero(tmp_path, family_report):
    path = family_report
    report = json.loads(path.read_text())
    row = report["views_vs_width"][0]
    row["margin"]["significant"] = not row["margin"]["significant"]
    decision = next(d for d in report["decisions"] if d["winner"] and d["runner_up"])
    decision["winner"], decision["runner_up"] = decision["runner_up"], decision["winner"]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(report))
    result = CliRunner().invoke(main, ["recheck", str(edited)])
    assert result.exit_code == 1
    said = result.stderr
    assert f"{row['tta']} vs {row['network']} (accuracy): significant stated" in said
    assert f"decision {decision['rule']} ({decision['backend']}): winner stated {decision['winner']}" in said
    assert said.strip().splitlines()[-1].startswith("error: ")
    # a margin whose point is gone is a disagreement, not a skip
    report = json.loads(path.read_text())
    report["views_vs_width"][0]["network"] = "w9 none @ nowhere"
    edited.write_text(json.dumps(report))
    gone = CliRunner().invoke(main, ["recheck", str(edited)])
    assert gone.exit_code == 1 and "the report holds no point w9 none @ nowhere" in gone.stderr
    assert CliRunner().invoke(main, ["recheck", str(path)]).exit_code == 0

"""Rules, decisions, paired statistics and the family report, on small synthetic points and run folders."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import atomic_write_json
from dawnpipe.common.machine import parse_cpuinfo
from dawnpipe.common.manifest import artifact_entry, update_manifest
from dawnpipe.costs.points import Point, pareto_front
from dawnpipe.costs.report import ReportConfig, build_report
from dawnpipe.costs.rules import decide, make_rules, verdict
from dawnpipe.costs.stats import PAIRED_METHOD, mcnemar_exact, paired_difference, tango_interval
from dawnpipe.infer.scoring import pack_bits

IMAGES = 400


def _point(gflops=0.76, latency=3.0, accuracy=0.9, views=1.0, label="p", correct=()):
    return Point(
        label=label,
        width=1.0,
        tta="none" if views == 1 else "flip",
        backend="onnxruntime/CPU",
        precision="fp32",
        seeds=(0,),
        accuracy=accuracy,
        accuracy_std=0.0,
        ci95=(accuracy - 0.01, accuracy + 0.01),
        views_per_image=views,
        gflops_per_image=gflops,
        latency_ms=latency,
        latency_p50_ms=latency,
        latency_p99_ms=latency,
        latency_std_ms=0.1,
        latency_calls=100,
        correct=correct,
    )


@pytest.mark.parametrize("gflops, passed", [(1.0, True), (1.1108, True), (1.2, False)])
def test_total_flops_at_under_over(gflops, passed):
    (rule,) = make_rules(["total-flops"], reference_gflops=1.1108)
    assert verdict(rule, _point(gflops=gflops)).passed is passed


@pytest.mark.parametrize("latency, passed", [(4.0, True), (5.0, True), (5.01, False)])
def test_latency_at_under_over(latency, passed):
    (rule,) = make_rules(["latency"], budget_ms=5.0)
    assert verdict(rule, _point(latency=latency)).passed is passed


def test_dawnbench_needs_the_accuracy_threshold():
    (rule,) = make_rules(["dawnbench"], accuracy_threshold=94)
    assert not verdict(rule, _point(accuracy=0.37)).passed  # the old rule let a 37% model through
    assert verdict(rule, _point(accuracy=0.941)).passed
    assert not verdict(rule, _point(accuracy=0.95, latency=None)).passed  # cannot be ranked without latency
    (low,) = make_rules(["dawnbench"], accuracy_threshold=90)
    assert verdict(low, _point(accuracy=0.905)).passed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"budget_gflops": 0}, "not a positive finite budget"),
        ({"budget_ms": -1}, "not a positive finite budget"),
        ({"budget_gflops": float("inf")}, "not a positive finite budget"),
        ({"accuracy_threshold": "ninety"}, "not a percentage"),
        ({"accuracy_threshold": 101}, "not a percentage"),
    ],
)
def test_bad_rule_options(kwargs, message):
    with pytest.raises(DawnpipeError, match=message):
        make_rules(["total-flops", "dawnbench"], reference_gflops=1.0, **kwargs)


def test_unknown_rule_and_latency_without_budget():
    with pytest.raises(DawnpipeError, match="unknown rule"):
        make_rules(["imagenet"])
    with pytest.raises(DawnpipeError, match="--budget-ms"):
        make_rules(["latency"])


def test_paired_interval_against_a_hand_computed_case():
    # 100 images: A right & B wrong on 10, A wrong & B right on 2, both right on 80, both wrong on 8
    a = np.array([1] * 10 + [0] * 2 + [1] * 80 + [0] * 8, bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 80 + [0] * 8, bool)
    result = paired_difference([a], [b])
    assert result.difference == pytest.approx(0.08) and (result.a_only, result.b_only) == (10, 2)
    # exact McNemar: 2 * P(Bin(12, 1/2) <= 2) = 2 * (1 + 12 + 66) / 4096
    assert result.p_value == pytest.approx(2 * 79 / 4096)
    # Tango's score interval (costs.stats.tango_interval, checked against a published example in test_stats.py)
    low, high = tango_interval(10, 2, 100)
    assert (result.low, result.high) == (low, high) and low < 0.08 < high
    # the score test's own bounds: at each limit the score statistic sits at the normal quantile
    assert 0.01 < low < 0.04 and 0.12 < high < 0.16
    assert result.significant
    assert mcnemar_exact(3, 3) == 1.0 and not paired_difference([a], [a]).significant
    # each test image counts once: two identical copies of a seed give exactly the one-seed interval (pooling the
    # copies as 200 independent pairs, as reports once did, would narrow it by a factor of about sqrt(2))
    twice = paired_difference([a, a], [b, b])
    assert (twice.difference, twice.low, twice.high, twice.p_value) == (
        result.difference,
        result.low,
        result.high,
        result.p_value,
    )
    assert twice.images == 100 and twice.method == result.method == PAIRED_METHOD


def test_seeds_that_disagree_average_per_image_and_the_interval_comes_from_the_images():
    rng = np.random.default_rng(3)
    a0, b0 = rng.random(400) < 0.7, rng.random(400) < 0.6
    # seed 1 agrees with seed 0 on most images (hard images are hard for every seed), as real seeds do
    a1, b1 = a0 ^ (rng.random(400) < 0.1), b0 ^ (rng.random(400) < 0.1)
    two = paired_difference([a0, a1], [b0, b1])
    d = (a0.astype(float) + a1) / 2 - (b0.astype(float) + b1) / 2  # per image: the mean over its seeds
    half = 1.9659 * d.std(ddof=1) / np.sqrt(400)  # t(0.975, 399)
    assert two.method == "t over images" and two.images == 400 and two.seed_pairs == 2
    assert two.difference == pytest.approx(d.mean()) and two.low == pytest.approx(d.mean() - half, abs=2e-5)
    # pooling the seeds as 800 independent pairs would make the interval about sqrt(2) narrower than the images allow
    pooled = np.concatenate([a0.astype(float) - b0, a1.astype(float) - b1])
    pooled_half = 1.9629 * pooled.std(ddof=1) / np.sqrt(800)
    assert two.high - two.low > 1.25 * 2 * pooled_half


def test_a_point_interval_counts_each_image_once():
    from dawnpipe.costs.stats import accuracy_interval
    from dawnpipe.infer.scoring import wilson_interval

    a = np.array([1] * 90 + [0] * 10, bool)
    assert accuracy_interval([a]) == (0.9, *wilson_interval(90, 100))
    assert accuracy_interval([a, a]) == accuracy_interval([a])  # a second identical seed adds no images


def test_margins_pair_seeds_by_value_and_name_a_partial_pairing():
    from dawnpipe.costs.points import compare
    from dawnpipe.costs.report_markdown import interval_text as _interval

    good = np.array([1] * 60 + [0] * 40, bool)  # 60%
    bad = np.array([1] * 40 + [0] * 60, bool)  # 40%
    # a family stopped part-way: width A holds seeds (0, 1), width B only seed 1, and B's seed 1 matches A's seed 1
    a = replace(_point(label="a"), seeds=(0, 1), correct=(bad, good))
    b = replace(_point(label="b"), seeds=(1,), correct=(good,))
    m = compare(a, b, "accuracy")
    # by position A's seed 0 (40%) would be set against B's seed 1 (60%): -20 points; by seed value it is 0
    assert m["seeds"] == [1] and m["partial_seeds"] and m["difference"] == pytest.approx(0.0)
    assert _interval(m).endswith("[seed 1]")
    whole = compare(replace(a, seeds=(0, 1)), replace(b, seeds=(0, 1), correct=(bad, good)), "accuracy")
    assert whole["seeds"] == [0, 1] and not whole["partial_seeds"] and "[seed" not in _interval(whole)
    # no seed in common: an unpaired difference, said as such
    apart = compare(a, replace(b, seeds=(2,)), "accuracy")
    assert apart["low"] is None and _interval(apart).endswith("(unpaired)")


def _bits(rng, accuracy, base=None, flip=0.0):
    """Per-image correctness with the given accuracy; optionally correlated with ``base``."""
    if base is None:
        return rng.random(IMAGES) < accuracy
    out = base.copy()
    change = rng.random(IMAGES) < flip
    out[change] = rng.random(change.sum()) < accuracy
    return out


def test_decisions_pick_winner_runner_up_and_answer_the_tta_question():
    rng = np.random.default_rng(0)
    small = _bits(rng, 0.80)
    small_flip = small | (rng.random(IMAGES) < 0.3)  # strictly better than plain on the same images
    big = _bits(rng, 0.86)
    points = [
        _point(0.19, 1.0, small.mean(), 1, "w0.5 none", (small,)),
        _point(0.38, 2.0, small_flip.mean(), 2, "w0.5 flip", (small_flip,)),
        _point(0.76, 3.0, big.mean(), 1, "w1 none", (big,)),
    ]
    assert [p.label for p in pareto_front(points, "gflops")][0] == "w0.5 none"
    flops, nott, dawn = make_rules(["total-flops", "no-tta", "dawnbench"], budget_gflops=0.5, accuracy_threshold=75)
    under_flops = decide(flops, points)
    assert under_flops.winner.label == "w0.5 flip" and under_flops.runner_up.label == "w0.5 none"
    assert under_flops.margin["significant"] and under_flops.tta_answer.startswith("Yes")
    assert decide(nott, points).winner.label == "w1 none" and "does not arise" in decide(nott, points).tta_answer
    fastest = decide(dawn, points)
    assert fastest.winner.label == "w0.5 none" and fastest.rule.ranks_by == "latency"
    assert fastest.margin["difference"] == pytest.approx(1.0)
    # rows without timing rounds have no latency interval, so the means alone decide nothing
    assert fastest.tta_answer.startswith("Not shown:") and "no interval" in fastest.tta_answer
    (strict,) = make_rules(["dawnbench"], accuracy_threshold=99)
    assert decide(strict, points).winner is None and "Nothing reaches 99%" in decide(strict, points).tta_answer


# ------------------------------------------------------------------------------------- synthetic run folders


def _run(
    root: Path, width: float, seed: int, rows: list[dict], *, data_sha="d" * 64, epochs=3, holdout="h" * 64
) -> Path:
    """A run folder as training and eval leave it: checkpoint, manifest with the training config, eval.json."""
    run = root / f"w{width}-s{seed}"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(f"weights {width} {seed}".encode())
    config = {"epochs": epochs, "batch_size": 512, "seed": seed, "data": "cifar", "model": {"width": width}}
    data = {"sha256": data_sha, "classes": ["a", "b"]}
    ckpt = artifact_entry(run, run / "checkpoint.pt", kind="checkpoint")
    record = {"config": config, "data": data, "holdout": {"images": 1000, "indices_sha256": holdout}}
    update_manifest(run, run=("train", record), artifacts={"checkpoint": ckpt})
    write_eval(run, rows, ckpt["sha256"])
    return run


def write_eval(run: Path, rows: list[dict], artifact_sha256: str) -> None:
    """``rows`` as `dawnpipe eval` leaves them for the artifact with ``artifact_sha256``: eval.json, listed in the
    run's manifest."""
    for row in rows:
        row["artifact_sha256"] = artifact_sha256
    atomic_write_json(run / "eval.json", {"format": "dawnpipe-eval/2", "rows": rows})
    update_manifest(run, artifacts={"eval.json": artifact_entry(run, run / "eval.json", kind="eval")})


def _eval_row(tta, views, gflops, correct, mean_ms, flagged=False, rounds=None, session="", images="t" * 64):
    return {
        "test_images_sha256": images,
        "backend": "onnxruntime",
        "provider": "CPUExecutionProvider",
        "precision": "fp32",
        "tta": tta,
        "accuracy": float(correct.mean()),
        "correct": int(correct.sum()),
        "images": IMAGES,
        "correct_bits": pack_bits(correct),
        "views_per_image": views,
        "gflops_per_image": gflops,
        "latency": {
            "batch1": {
                "mean_ms": mean_ms,
                "p50_ms": mean_ms,
                "p99_ms": 2 * mean_ms,
                "std_ms": 0.1 * mean_ms,
                "calls": 100,
                "flagged": flagged,
                "round_mean_ms": rounds or [],
                "session": session,
                "drift": 0.1 if rounds else 0.0,
            }
        },
        "flops_unknown_ops": [],
        "device": "cpu",
        "cpu": parse_cpuinfo("model name\t: Test CPU\nflags\t: avx2 avx512f avx512_vnni\n"),
        "native_instructions": True,
    }


@pytest.fixture
def family(tmp_path):
    return make_family(tmp_path)


def make_family(tmp_path: Path) -> list[Path]:
    """Two widths x two seeds of synthetic run folders (shared with tests/costs/test_stats.py)."""
    rng = np.random.default_rng(1)
    runs = []
    for seed in (0, 1):
        small = _bits(rng, 0.80)
        small_flip = small | (rng.random(IMAGES) < 0.15)
        big = _bits(rng, 0.88)
        runs.append(
            _run(
                tmp_path,
                0.5,
                seed,
                [
                    _eval_row("none", 1.0, 0.19, small, 1.0),
                    _eval_row("flip", 2.0, 0.38, small_flip, 2.0),
                    _eval_row("selective-flip", 1.3, 0.247, small_flip, 1.4, flagged=True),
                ],
            )
        )
        runs.append(
            _run(tmp_path, 1.0, seed, [_eval_row("none", 1.0, 0.76, big, 3.0), _eval_row("flip", 2.0, 1.52, big, 6.0)])
        )
    return runs


def test_family_report_decides_and_draws(family, tmp_path):
    out = tmp_path / "report"
    written = build_report(
        ReportConfig(runs=tuple(map(str, family)), out=str(out), budget_ms=2.5, accuracy_threshold=85)
    )
    assert {p.name for p in written.values()} == {
        "report.json",
        "report.csv",
        "report.md",
        "accuracy_vs_gflops.png",
        "accuracy_vs_latency.png",
    }
    for png in ("accuracy_vs_gflops.png", "accuracy_vs_latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 5000
    data = json.loads((out / "report.json").read_text())
    points = {p["label"]: p for p in data["points"]}
    assert points["w0.5 none @ onnxruntime/CPU fp32"]["seeds"] == [0, 1]
    assert len(data["points"]) == 5 and all(p["ci95"][0] <= p["accuracy"] <= p["ci95"][1] for p in data["points"])
    decisions = {d["rule"]: d for d in data["decisions"]}
    assert decisions["no-tta"]["winner"] == "w1 none @ onnxruntime/CPU fp32"
    # within 2.5 ms the two flip rows tie on accuracy (same bits); the tie goes to the cheaper, selective one
    assert decisions["latency"]["winner"] == "w0.5 selective-flip @ onnxruntime/CPU fp32"
    assert decisions["latency"]["runner_up"] == "w0.5 flip @ onnxruntime/CPU fp32"
    assert decisions["dawnbench"]["winner"] == "w1 none @ onnxruntime/CPU fp32"  # only it reaches 85%
    assert decisions["total-flops"]["margin"]["statistic"].startswith("accuracy (paired")
    versus = {v["tta"]: v for v in data["views_vs_width"]}
    flip_small = versus["w0.5 flip @ onnxruntime/CPU fp32"]
    assert flip_small["network"] == "w1 none @ onnxruntime/CPU fp32" and flip_small["network_costs_at_least_as_much"]
    assert flip_small["margin"]["difference"] < 0 and flip_small["margin"]["images"] == IMAGES  # each image once
    assert flip_small["margin"]["seeds"] == [0, 1]
    text = (out / "report.md").read_text()
    assert text.index("## Decisions") < text.index("## Extra views") < text.index("## Points")
    assert "0.76" in text and "selective-flip" in text and "spread: w0.5 selective-flip" in text
    machine = text[text.index("## Machine") :]
    assert "onnxruntime/CPU fp32 on cpu: host CPU Test CPU (avx2, avx512f, avx512_vnni; int8 native (VNNI)" in machine
    assert data["machines"][0]["native_instructions"] is True
    assert "## Runs" in text and [t["run"] for t in data["trainings"]] and data["trainings"][0]["cpu"]
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 5 and {r["seeds"] for r in rows} == {"2"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["runs"]) == {"costs"} and "report.md" in manifest["artifacts"]


def test_family_bad_inputs(family, tmp_path):
    def report(runs, **kwargs):
        return build_report(ReportConfig(runs=tuple(map(str, runs)), **kwargs))

    with pytest.raises(DawnpipeError, match="needs a folder of its own"):
        report(family)
    other = _run(tmp_path / "o", 0.75, 0, [_eval_row("none", 1, 0.43, np.ones(IMAGES, bool), 2.0)], data_sha="e" * 64)
    with pytest.raises(DawnpipeError, match="other data or classes") as info:
        report([family[0], other], out=str(tmp_path / "r"))
    assert str(family[0]) in str(info.value) and str(other) in str(info.value)
    recipe = _run(tmp_path / "p", 0.75, 0, [_eval_row("none", 1, 0.43, np.ones(IMAGES, bool), 2.0)], epochs=9)
    with pytest.raises(DawnpipeError, match="different recipes"):
        report([family[0], recipe], out=str(tmp_path / "r"))
    with pytest.raises(DawnpipeError, match="same configuration"):
        report([family[0], family[0]], out=str(tmp_path / "r"))
    # an eval.json copied in from another run is refused
    (family[1] / "eval.json").write_bytes((family[0] / "eval.json").read_bytes())
    with pytest.raises(DawnpipeError, match="not the eval.json that"):
        report([family[1]])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda row: row.pop("accuracy"), "accuracy"),
        (lambda row: row.update(accuracy="high"), "accuracy"),
        (lambda row: row["latency"]["batch1"].update(p50_ms=-3.0), "p50_ms"),
        (lambda row: row.update(images=-1), "images"),
    ],
)
def test_damaged_eval_rows_are_named(tmp_path, mutate, message):
    row = _eval_row("none", 1, 0.76, np.ones(IMAGES, bool), 3.0)
    mutate(row)
    run = _run(tmp_path, 1.0, 0, [row])
    with pytest.raises(DawnpipeError, match=message):
        build_report(ReportConfig(runs=(str(run),)))


def test_empty_eval_file_is_refused(tmp_path):
    run = _run(tmp_path, 1.0, 0, [])
    with pytest.raises(DawnpipeError, match="no eval rows"):
        build_report(ReportConfig(runs=(str(run),)))


def test_costs_cli_without_eval_names_the_command(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    update_manifest(tmp_path, run=("train", {"config": {"seed": 0}}))
    result = CliRunner().invoke(main, ["costs", str(tmp_path)])
    assert result.exit_code == 1 and "no eval results" in result.output and "dawnpipe eval" in result.output


def test_costs_cli_bad_options_are_one_line(family):
    for args in (["--rule", "fastest"], ["--budget-gflops", "0"], ["--accuracy-threshold", "abc"]):
        result = CliRunner().invoke(main, ["costs", str(family[0]), *args])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    result = CliRunner().invoke(main, ["costs", str(family[0]), "--rule", "latency"])
    assert result.exit_code == 1 and "needs a budget" in result.output


def test_dawnbench_says_whether_tta_lifts_a_width_over_the_bar(tmp_path):
    rng = np.random.default_rng(3)
    small = _bits(rng, 0.80)
    small_flip = small | (rng.random(IMAGES) < 0.4)  # flip lifts width 0.5 over an 85% bar
    big = _bits(rng, 0.88)
    runs = [
        _run(
            tmp_path, 0.5, 0, [_eval_row("none", 1.0, 0.19, small, 1.0), _eval_row("flip", 2.0, 0.38, small_flip, 2.0)]
        ),
        _run(tmp_path, 1.0, 0, [_eval_row("none", 1.0, 0.76, big, 3.0), _eval_row("flip", 2.0, 1.52, big, 6.0)]),
    ]
    note = "the published 94% recipe scores 90.57% on this JPEG copy"
    out = tmp_path / "report"
    build_report(ReportConfig(runs=tuple(map(str, runs)), out=str(out), accuracy_threshold=85, threshold_note=note))
    data = json.loads((out / "report.json").read_text())
    lift = next(d for d in data["decisions"] if d["rule"] == "dawnbench")["tta_lifts_over_the_bar"]
    assert lift.startswith("Over the bar only with TTA: w0.5 (") and "over with flip" in lift
    assert "The fastest configuration over the bar, w0.5 flip @ onnxruntime/CPU fp32, gets there by TTA." in lift
    text = (out / "report.md").read_text()
    assert f"Why the dawnbench bar is where it is: {note}" in text and data["threshold_note"] == note
    assert "## Extra views or a bigger network, at equal measured latency?" in text
    by_latency = {r["tta"]: r for r in data["views_vs_width_latency"]}
    assert by_latency["w0.5 flip @ onnxruntime/CPU fp32"]["network"] == "w1 none @ onnxruntime/CPU fp32"


def test_log_axes_read_as_plain_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dawnpipe.costs.plots import _log_axis

    fig, ax = plt.subplots()
    ax.plot([0.05, 0.2, 1.5, 4.0], [1, 2, 3, 4])
    _log_axis(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    plt.close(fig)
    assert labels and all("10^" not in t and "$" not in t for t in labels), labels
    assert {"0.1", "0.2", "0.5", "1", "2"} <= set(labels), labels


def test_runs_table_names_a_resumed_runs_processes(trained_run, tmp_path):
    from dawnpipe.costs.report import _wall
    from dawnpipe.costs.report_markdown import training_lines
    from dawnpipe.train.checkpoint import load_checkpoint, save_checkpoint

    # a run trained before the trainer recorded its wall over processes: derived from the checkpoint's history
    # (elapsed_s restarts at 30 s: a second process, whose wall is the manifest's 50 s)
    payload = load_checkpoint(trained_run / "checkpoint.pt")
    payload["metrics"]["epochs"] = [{"elapsed_s": 100.0}, {"elapsed_s": 200.0}, {"elapsed_s": 30.0}]
    save_checkpoint(tmp_path / "checkpoint.pt", payload)
    assert _wall(tmp_path, {"wall_seconds": 50.0}) == {"wall_seconds": 250.0, "processes": 2}
    assert _wall(tmp_path, {"wall_seconds": 50.0, "wall_seconds_all_processes": 80.0, "processes": 3}) == {
        "wall_seconds": 80.0,
        "processes": 3,
    }
    assert _wall(tmp_path / "missing", {"wall_seconds": 50.0}) == {"wall_seconds": 50.0, "processes": None}
    base = {"width": 1.0, "seed": 0, "epochs": 10, "train_seconds": 240.0, "precision": "fp32", "device": "cpu"}
    rows = [
        {**base, "run": "a", "wall_seconds": 250.0, "processes": 2, "cpu": "X"},
        {**base, "run": "b", "wall_seconds": 50.0, "processes": None, "cpu": "X"},
        {**base, "run": "c", "wall_seconds": 60.0, "processes": 1, "cpu": "X"},
    ]
    text = "\n".join(training_lines(rows))
    assert "| 250 (2 processes) |" in text and "| 50 (last process only) |" in text and "| 60 |" in text
    assert "work an interruption threw away is not counted" in text


def test_the_latency_panels_share_one_unnamed_scaling_curve_entry():
    # each latency panel draws its own backend's no-TTA curve, so the shared legend must not name one backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dawnpipe.costs.plots import _scaling_curves

    points = [replace(_point(label="a", latency=2.0, accuracy=0.88), width=0.5), _point(label="b", latency=4.0)]
    fig, ax = plt.subplots()
    named = _scaling_curves(ax, points, lambda p: p.latency_ms, plt)
    unnamed = _scaling_curves(ax, points, lambda p: p.latency_ms, plt, named=False)
    plt.close(fig)
    assert [h.get_label() for h in named] == ["no TTA across widths: onnxruntime/CPU fp32"]
    assert [h.get_label() for h in unnamed] == ["no TTA across widths"]


def test_report_json_carries_the_bits_and_every_margin_rechecks(family, tmp_path):
    from dawnpipe.costs.recheck import read_report, recheck

    out = tmp_path / "report"
    build_report(ReportConfig(runs=tuple(map(str, family)), out=str(out), budget_ms=2.5, accuracy_threshold=85))
    path = out / "report.json"
    data = read_report(path)
    assert data["test_images"]["count"] == IMAGES and data["test_images"]["sha256"] == "t" * 64
    point = data["points"][0]
    assert len(point["correct_bits_by_seed"]) == len(point["seeds"]) == 2
    found = recheck(path)
    assert found.margins >= 5 and not found.disagreements and found.largest_accuracy_gap < 1e-12
    result = CliRunner().invoke(main, ["recheck", str(path)])
    assert result.exit_code == 0 and "margins recomputed" in result.output
    # a margin edited in the file no longer matches its own bits
    edited = json.loads(path.read_text())
    edited["views_vs_width"][0]["margin"]["difference"] += 0.01
    path.write_text(json.dumps(edited))
    failed = CliRunner().invoke(main, ["recheck", str(path)])
    assert failed.exit_code == 1 and "disagree" in failed.stderr and failed.stderr.count("\n") == 2
    # bits that disagree with the counts are refused when read back
    edited["points"][0]["correct_by_seed"][0] += 1
    path.write_text(json.dumps(edited))
    with pytest.raises(DawnpipeError, match="its bits hold"):
        read_report(path)


def test_runs_scored_on_other_test_images_or_fitted_on_another_holdout_are_refused(family, tmp_path):
    ones = np.ones(IMAGES, bool)
    moved = _run(tmp_path / "m", 0.75, 0, [_eval_row("none", 1, 0.43, ones, 2.0, images="u" * 64)])
    with pytest.raises(DawnpipeError, match="different test images") as info:
        build_report(ReportConfig(runs=(str(family[0]), str(moved)), out=str(tmp_path / "r")))
    assert str(family[0]) in str(info.value) and str(moved) in str(info.value)
    other = _run(tmp_path / "h", 0.75, 0, [_eval_row("none", 1, 0.43, ones, 2.0)], holdout="g" * 64)
    with pytest.raises(DawnpipeError, match="different hold-outs") as info:
        build_report(ReportConfig(runs=(str(family[0]), str(other)), out=str(tmp_path / "r")))
    assert str(family[0]) in str(info.value) and str(other) in str(info.value)
    assert not (tmp_path / "r" / "report.json").exists()


def test_latency_margins_pair_rounds_timed_together_so_drift_stays_inside():
    from dawnpipe.costs.points import compare

    # the machine slows by half in round 3; A is always 1 ms faster than B in the same round
    a_rounds, b_rounds = (2.0, 2.0, 3.0, 2.0, 2.0), (3.0, 3.0, 4.5, 3.0, 3.0)
    a = replace(_point(label="a", latency=2.2), latency_rounds_ms=(a_rounds,), latency_sessions=("s1",), seeds=(0,))
    b = replace(_point(label="b", latency=3.3), latency_rounds_ms=(b_rounds,), latency_sessions=("s1",), seeds=(0,))
    paired = compare(a, b, "latency")
    assert paired["paired_rounds"] and paired["rounds"] == 5 and paired["significant"]
    assert paired["difference"] == pytest.approx(1.1)
    # timed in different sessions: the rounds cannot be paired, and the drift widens the interval
    apart = compare(a, replace(b, latency_sessions=("s2",)), "latency")
    assert not apart["paired_rounds"] and apart["method"] == "Welch t over rounds"
    assert apart["high"] - apart["low"] > paired["high"] - paired["low"]


def test_dawnbench_answers_tta_against_no_tta_with_the_interval_over_rounds():
    rng = np.random.default_rng(1)
    plain, flip = _bits(rng, 0.86), _bits(rng, 0.88)
    (rule,) = make_rules(["dawnbench"], accuracy_threshold=80)

    def timed(label, views, bits, rounds):
        point = _point(0.76 * views, sum(rounds) / len(rounds), bits.mean(), views, label, (bits,))
        return replace(point, latency_rounds_ms=(rounds,), latency_sessions=("s",), seeds=(0,))

    # the TTA row is slower in every round, by about 1 ms: a decided "No", with its interval
    clear = decide(rule, [timed("w1 none", 1, plain, (2.0, 2.1, 2.0, 2.2, 2.0)),
                          timed("w1 flip", 2, flip, (3.0, 3.1, 3.1, 3.2, 3.0))])  # fmt: skip
    assert clear.tta_answer.startswith("No: a single-view model (w1 none)") and "95% CI" in clear.tta_answer
    # within noise: the single-view row is faster on average but not in every round
    noisy = decide(rule, [timed("w1 none", 1, plain, (2.0, 2.6, 1.9, 2.5, 2.0)),
                          timed("w1 flip", 2, flip, (2.4, 2.0, 2.5, 2.0, 2.3))])  # fmt: skip
    assert noisy.winner.label == "w1 none" and noisy.tta_answer.startswith("Not shown:")
    assert "within noise" in noisy.tta_answer and "95% CI" in noisy.tta_answer
    # the TTA row fastest over the bar, clearly: "Yes", with the interval
    lifted = decide(rule, [timed("w1 none", 1, _bits(rng, 0.70), (1.0, 1.0, 1.0, 1.0, 1.0)),
                           timed("w1 flip", 2, flip, (2.0, 2.1, 2.0, 2.1, 2.0)),
                           timed("w2 none", 1, plain, (4.0, 4.1, 4.0, 4.2, 4.1))])  # fmt: skip
    assert (
        lifted.winner.label == "w1 flip"
        and lifted.tta_answer.startswith("Yes: with TTA")
        and "95% CI" in (lifted.tta_answer)
    )

"""Verdicts at, just under and just over each budget; the report files and plots of a fixture run."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.costs.report import build_report
from dawnpipe.costs.rules import Point, make_rules, pareto_front, verdict


def _point(gflops=1.0, latency=5.0, views=1.0, accuracy=0.9, label="p"):
    return Point(label, accuracy, gflops, views, latency)


@pytest.mark.parametrize("gflops, passed", [(2.0, True), (2.0 - 1e-9, True), (2.0 + 1e-9, False)])
def test_total_flops_at_under_over(gflops, passed):
    rule = make_rules(["total-flops"], budget_gflops=2.0)[0]
    result = verdict(rule, _point(gflops=gflops))
    assert result.passed is passed and ("<=" if passed else ">") in result.reason and "budget 2.0000" in result.reason


@pytest.mark.parametrize("latency, passed", [(4.0, True), (3.999, True), (4.001, False)])
def test_latency_at_under_over(latency, passed):
    rule = make_rules(["latency"], budget_ms=4.0)[0]
    assert verdict(rule, _point(latency=latency)).passed is passed


@pytest.mark.parametrize("views, passed", [(1.0, True), (1.2, False), (2.0, False)])
def test_no_tta(views, passed):
    assert verdict(make_rules(["no-tta"])[0], _point(views=views)).passed is passed


def test_dawnbench_allows_tta_and_scores_latency():
    result = verdict(make_rules(["dawnbench"])[0], _point(views=6, latency=3.25))
    assert result.passed and "3.250 ms" in result.reason


def test_default_total_flops_budget_is_resnet18():
    from dawnpipe.costs.reference import resnet18_flops

    assert make_rules(["total-flops"])[0].budget == pytest.approx(resnet18_flops() / 1e9)


@pytest.mark.parametrize(
    "kwargs, message", [({"budget_gflops": 0}, "not a positive budget"), ({"budget_ms": -1.0}, "not a positive budget")]
)
def test_bad_budgets(kwargs, message):
    with pytest.raises(DawnpipeError, match=message):
        make_rules(["total-flops"], **kwargs)


def test_unknown_rule_and_latency_without_budget():
    with pytest.raises(DawnpipeError, match="unknown rule"):
        make_rules(["imagenet"])
    with pytest.raises(DawnpipeError, match="--budget-ms"):
        make_rules(["latency"])


def test_pareto_front():
    points = [
        _point(1.0, 5, accuracy=0.90, label="a"),
        _point(2.0, 9, accuracy=0.92, label="b"),
        _point(3.0, 7, accuracy=0.91, label="c"),
        _point(0.5, 2, accuracy=0.80, label="d"),
    ]
    assert [p.label for p in pareto_front(points, "gflops")] == ["d", "a", "b"]
    assert [p.label for p in pareto_front(points, "latency")] == ["d", "a", "c", "b"]


def _row(tta, accuracy, views, gflops, p50):
    return {
        "backend": "onnxruntime",
        "provider": "CPUExecutionProvider",
        "precision": "fp32",
        "tta": tta,
        "accuracy": accuracy,
        "views_per_image": views,
        "gflops_per_image": gflops,
        "latency": {"batch1": {"p50_ms": p50}},
        "flops_unknown_ops": [],
    }


@pytest.fixture
def fixture_run(tmp_path):
    rows = [
        _row("none", 0.9061, 1, 0.76, 3.5),
        _row("flip", 0.9142, 2, 1.52, 6.8),
        _row("selective-flip", 0.9139, 1.2, 0.912, 3.9),
    ]
    (tmp_path / "eval.json").write_text(json.dumps({"format": "dawnpipe-eval/1", "rows": rows}))
    return tmp_path


def test_report_files_hold_the_numbers(fixture_run):
    written = build_report(fixture_run, budget_ms=5.0)
    assert {p.name for p in written.values()} == {
        "report.json",
        "report.csv",
        "report.md",
        "accuracy_vs_gflops.png",
        "accuracy_vs_latency.png",
    }
    for png in ("accuracy_vs_gflops.png", "accuracy_vs_latency.png"):
        assert (fixture_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (
            fixture_run / png
        ).stat().st_size > 5000
    data = json.loads((fixture_run / "report.json").read_text())
    flip = {v["rule"]: v for v in data["verdicts"] if v["label"].startswith("flip @")}
    assert flip["total-flops"]["passed"] is False and flip["no-tta"]["passed"] is False
    assert flip["latency"]["passed"] is False and "6.800 ms/image > budget 5 ms" in flip["latency"]["reason"]
    selective = {v["rule"]: v for v in data["verdicts"] if v["label"].startswith("selective-flip")}
    assert selective["total-flops"]["passed"] and selective["latency"]["passed"]
    rows = list(csv.DictReader((fixture_run / "report.csv").open()))
    assert [r["accuracy"] for r in rows] == ["0.906100", "0.914200", "0.913900"]
    assert "91.42" in (fixture_run / "report.md").read_text()
    assert data["pareto"]["gflops"] == [
        "none @ onnxruntime/CPU fp32",
        "selective-flip @ onnxruntime/CPU fp32",
        "flip @ onnxruntime/CPU fp32",
    ]


def test_costs_cli_without_eval_names_the_command(tmp_path):
    result = CliRunner().invoke(main, ["costs", str(tmp_path)])
    assert result.exit_code == 1 and "no eval results" in result.output and "cli.py eval" in result.output


def test_costs_cli_bad_rule_and_budget(fixture_run):
    result = CliRunner().invoke(main, ["costs", str(fixture_run), "--rule", "fastest"])
    assert result.exit_code == 1 and "unknown rule 'fastest'" in result.output
    result = CliRunner().invoke(main, ["costs", str(fixture_run), "--budget-gflops", "0"])
    assert result.exit_code == 1 and "not a positive budget" in result.output

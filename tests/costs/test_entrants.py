"""Entrants beside a family in the cost report: pooled over their seeds, what their views buy and what a bigger
network buys, each margin rechecked from the file's bits; on synthetic run folders (accuracy margins, no precision
involved)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.manifest import artifact_entry, update_manifest
from dawnpipe.costs.recheck import recheck
from dawnpipe.costs.report import ReportConfig, build_report
from dawnpipe.costs.stats import paired_difference
from tests.costs.test_rules_report import IMAGES, _bits, _eval_row, make_family, write_eval


def _entrant(root: Path, name: str, seed: int, rows: list[dict], folder: str | None = None) -> Path:
    """An entrant's run folder as `dawnpipe import` and `dawnpipe eval` leave it."""
    run = root / (folder or f"{name}-s{seed}")
    run.mkdir(parents=True)
    (run / "model-fp32.onnx").write_bytes(f"adapted {name} {seed}".encode())
    entry = artifact_entry(run, run / "model-fp32.onnx", kind="onnx", lineage="imported")
    record = {
        "run_id": f"r{seed}",
        "entrant": {"name": run.name, "entrant": name, "seed": seed, "foreign_sha256": "f" * 64},
        "data": {"sha256": "d" * 64, "classes": ["a", "b"]},
    }
    update_manifest(run, run=("import", record), artifacts={"model-fp32.onnx": entry})
    write_eval(run, rows, entry["sha256"])
    return run


def _two_seeds(root: Path, images: str = "t" * 64) -> tuple[list[Path], dict[int, tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(7)
    paths, bits = [], {}
    for seed in (0, 1):
        plain = _bits(rng, 0.84)
        six = plain | (rng.random(IMAGES) < 0.2)  # the views help
        bits[seed] = (plain, six)
        rows = [
            _eval_row("none", 1.0, 0.236, plain, 1.5, images=images),
            _eval_row("airbench94", 6.0, 1.418, six, 9.0, images=images),
        ]
        paths.append(_entrant(root, "airbench94", seed, rows))
    return paths, bits


def test_entrants_are_pooled_and_judged_beside_the_family_and_every_margin_rechecks(tmp_path):
    family = make_family(tmp_path / "family")
    entrants, bits = _two_seeds(tmp_path / "entrants")
    out = tmp_path / "report"
    build_report(ReportConfig(runs=tuple(map(str, [*family, *entrants])), out=str(out)))
    data = json.loads((out / "report.json").read_text())
    labels = [p["label"] for p in data["entrant_points"]]
    assert labels == ["airbench94 airbench94 @ onnxruntime/CPU fp32", "airbench94 none @ onnxruntime/CPU fp32"]
    assert all(p["seeds"] == [0, 1] for p in data["entrant_points"])
    assert {p["label"] for p in data["points"]}.isdisjoint(labels)  # the family's decisions never see entrants
    views = next(r for r in data["entrant_margins"] if r["configuration"] == labels[0])
    want = paired_difference([bits[s][1] for s in (0, 1)], [bits[s][0] for s in (0, 1)])
    assert views["plain"] == labels[1] and views["views_margin"]["difference"] == pytest.approx(want.difference)
    assert views["views_margin"]["significant"] and views["views_margin"]["seeds"] == [0, 1]
    # 1.418 GFLOP: the family's biggest single view (w1, 0.76) costs less, so it is paired and flagged cheaper
    assert views["network"] == "w1 none @ onnxruntime/CPU fp32" and not views["network_costs_at_least_as_much"]
    plain = next(r for r in data["entrant_margins"] if r["configuration"] == labels[1])
    assert plain["network"] == "w1 none @ onnxruntime/CPU fp32" and plain["network_costs_at_least_as_much"]
    assert plain["views_margin"] is None  # a single view buys no views
    markdown = (out / "report.md").read_text()
    assert "## Entrants (models dawnpipe did not train)" in markdown and "airbench94 airbench94 @" in markdown
    found = recheck(out / "report.json")
    assert not found.disagreements and found.margins >= 3 + 5
    data["entrant_margins"][0]["network_margin"]["difference"] += 0.01
    (out / "report.json").write_text(json.dumps(data))
    failed = CliRunner().invoke(main, ["recheck", str(out / "report.json")])
    assert failed.exit_code == 1 and "airbench94" in failed.stderr


def test_entrants_on_other_images_alone_or_twice_are_refused(tmp_path):
    family = make_family(tmp_path / "family")
    moved, _ = _two_seeds(tmp_path / "moved", images="u" * 64)
    with pytest.raises(DawnpipeError, match="other test images than the family"):
        build_report(ReportConfig(runs=tuple(map(str, [*family, moved[0]])), out=str(tmp_path / "r1")))
    entrants, _ = _two_seeds(tmp_path / "entrants")
    with pytest.raises(DawnpipeError, match="beside a family"):
        build_report(ReportConfig(runs=tuple(map(str, entrants)), out=str(tmp_path / "r2")))
    again = _entrant(tmp_path / "again", "airbench94", 0, [_eval_row("none", 1.0, 0.236, np.ones(IMAGES, bool), 1.0)])
    with pytest.raises(DawnpipeError, match="same entrant and seed"):
        build_report(ReportConfig(runs=tuple(map(str, [*family, entrants[0], again])), out=str(tmp_path / "r3")))
    copied = entrants[1] / "eval.json"
    copied.write_text(copied.read_text().replace('"none"', '"flip"', 1))  # no longer the file its manifest recorded
    with pytest.raises(DawnpipeError, match="is not the eval.json"):
        build_report(ReportConfig(runs=tuple(map(str, [*family, entrants[1]])), out=str(tmp_path / "r4")))
    named = _entrant(tmp_path / "named", "w1", 0, [_eval_row("none", 1.0, 0.236, np.ones(IMAGES, bool), 1.0)])
    with pytest.raises(DawnpipeError, match="'w1', the name of the family's width-1 network"):
        build_report(ReportConfig(runs=tuple(map(str, [*family, named])), out=str(tmp_path / "r5")))
    assert not any((tmp_path / f"r{k}" / "report.json").exists() for k in range(1, 6))


def test_latency_pairs_an_entrant_only_with_networks_timed_in_its_session(tmp_path):
    from tests.costs.test_rules_report import _run

    rng = np.random.default_rng(3)
    rounds = [1.0, 1.1, 0.9, 1.0, 1.05]

    def timed(tta, views, gflops, correct, ms, session):
        return _eval_row(tta, views, gflops, correct, ms, rounds=[ms * r for r in rounds], session=session)

    family = [
        _run(tmp_path / "f", w, 0, [timed("none", 1.0, g, _bits(rng, a), ms, "S")])
        for w, g, a, ms in ((0.5, 0.19, 0.8, 1.0), (1.0, 0.76, 0.88, 3.0), (1.5, 1.7, 0.9, 9.5))
    ]
    six = _bits(rng, 0.9)
    together = _entrant(
        tmp_path / "e", "ab", 0, [timed("none", 1, 0.236, six, 1.5, "S"), timed("flip", 2, 0.47, six, 3.1, "S")]
    )
    apart = _entrant(
        tmp_path / "e", "cd", 0, [timed("none", 1, 0.236, six, 1.5, "T"), timed("flip", 2, 0.47, six, 3.1, "T")]
    )
    out = tmp_path / "report"
    build_report(ReportConfig(runs=tuple(map(str, [*family, together, apart])), out=str(out), budget_ms=3.2))
    data = json.loads((out / "report.json").read_text())
    rows = {r["configuration"]: r for r in data["entrant_margins"]}
    paired = rows["ab flip @ onnxruntime/CPU fp32"]
    assert (
        paired["latency_network"] == "w1.5 none @ onnxruntime/CPU fp32" and paired["latency_network_at_least_as_slow"]
    )
    assert rows["cd flip @ onnxruntime/CPU fp32"]["latency_network"] is None  # timed in another session
    # the latency rule over every entry: the family's rows and the entrant timed with them; the other named as left out
    latency = next(d for d in data["entry_decisions"] if d["rule"] == "latency")
    assert latency["scope"] == "rows timed in one session on onnxruntime/CPU fp32"
    assert {label.split(" ")[0] for label in latency["entries"]} == {"w0.5", "w1", "w1.5", "ab"}
    assert latency["left_out"] == ["cd: not timed in one session with the family on onnxruntime/CPU fp32"]
    assert latency["eligible"] == 4  # within 3.2 ms: w0.5 (1.0), w1 (3.0), ab none (1.5) and flip (3.1); not w1.5
    alone = tmp_path / "family-alone"
    build_report(ReportConfig(runs=tuple(map(str, family)), out=str(alone), budget_ms=3.2))
    png = "accuracy_vs_latency.png"  # the entrant timed with the family is drawn in the family's panel
    assert (out / png).read_bytes() != (alone / png).read_bytes()
    assert not recheck(out / "report.json").disagreements


def test_every_rule_ranks_the_entrants_with_the_family_where_they_were_measured_alike(tmp_path):
    """A benchmark ranks every entry: an entrant more accurate than every network at a fraction of their FLOPs wins
    the clock-free rules over the family and the entrants together (the family's own decisions still rank the family
    alone); the latency rule ranks nobody it did not time with the family, and says so. Rechecked, and a changed
    winner is caught."""
    family = make_family(tmp_path / "family")
    rng = np.random.default_rng(11)
    entrant = []
    for seed in (0, 1):
        plain = _bits(rng, 0.97)  # the family's best single view is about 0.88
        rows = [_eval_row("none", 1.0, 0.236, plain, 1.5), _eval_row("flip", 2.0, 0.473, plain, 3.0)]
        entrant.append(_entrant(tmp_path / "entrants", "strong", seed, rows))
    out = tmp_path / "report"
    build_report(ReportConfig(runs=tuple(map(str, [*family, *entrant])), out=str(out), accuracy_threshold=85))
    data = json.loads((out / "report.json").read_text())
    assert all("strong" not in (d["winner"] or "") for d in data["decisions"])  # the family's own, unchanged
    ranked = {d["rule"]: d for d in data["entry_decisions"]}
    assert set(ranked) == {"no-tta", "total-flops"}  # the clock-free rules; dawnbench reads latency
    assert ranked["no-tta"]["winner"] == "strong none @ onnxruntime/CPU fp32"
    assert ranked["no-tta"]["runner_up"] == "w1 none @ onnxruntime/CPU fp32"
    assert ranked["no-tta"]["margin"]["significant"] and ranked["no-tta"]["margin"]["difference"] > 0.05
    assert ranked["total-flops"]["winner"].startswith("strong ")  # within one ResNet-18 pass, ahead of w0.5
    entries = set(ranked["total-flops"]["entries"])
    assert {"strong flip @ onnxruntime/CPU fp32", "w0.5 flip @ onnxruntime/CPU fp32"} <= entries
    assert data["entry_notes"] == [
        "dawnbench: no entrant was timed in one session with the family's rows (latency is the machine's), so this "
        "rule ranks the family alone (its decisions above)"
    ]
    markdown = (out / "report.md").read_text()
    assert "## Every entry under the rules" in markdown and "| no-tta | each network on its reference rows" in markdown
    alone = tmp_path / "family-alone"
    build_report(ReportConfig(runs=tuple(map(str, family)), out=str(alone), accuracy_threshold=85))
    png = "accuracy_vs_gflops.png"  # the entrant is drawn on the FLOPs plot
    assert (out / png).read_bytes() != (alone / png).read_bytes()
    found = recheck(out / "report.json")
    assert not found.disagreements and found.decisions == len(data["decisions"]) + 2
    data["entry_decisions"][0]["winner"] = data["entry_decisions"][0]["runner_up"]
    (out / "report.json").write_text(json.dumps(data))
    assert any("decision over every entry no-tta" in line for line in recheck(out / "report.json").disagreements)


def test_across_backends_a_network_is_judged_on_its_most_complete_rows_fp32_first():
    """points.reference_rows: where an entrant's rival, or an entry under a clock-free rule, is taken from when the
    comparison crosses backends: the backend with the most configurations (not a sparse fp32 one), fp32 on a tie."""
    from dataclasses import replace

    from dawnpipe.costs.entrants import _family_rival
    from dawnpipe.costs.points import reference_rows
    from tests.costs.test_rules_report import _point

    def at(width, gflops, backend, precision):
        p = _point(gflops=gflops, label=f"w{width:g} none @ {backend} {precision}")
        return replace(p, width=width, backend=backend, precision=precision)

    family = [at(w, g, "torch", "fp16") for w, g in ((0.5, 0.19), (1.0, 0.76), (1.5, 1.7))]
    family.append(at(1.0, 0.76, "onnxruntime/CPU", "fp32"))  # one width timed on the CPU too
    assert {p.backend for p in reference_rows(family)} == {"torch"}
    entrant = replace(at(0, 1.0, "openvino", "fp32"), label="e none @ openvino fp32")
    rival, costs_more = _family_rival(entrant, family)  # no family rows on openvino: the most complete backend
    assert rival.label == "w1.5 none @ torch fp16" and costs_more
    tie = [at(1.0, 0.76, "torch", "fp16"), at(1.0, 0.76, "openvino", "fp32"), at(1.0, 0.76, "onnxruntime/CPU", "fp32")]
    assert [p.label for p in reference_rows(tie)] == ["w1 none @ onnxruntime/CPU fp32"]

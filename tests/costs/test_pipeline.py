"""The one-command pipeline end to end on tiny synthetic data: a two-width family, one report over it."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dawnpipe.cli import main


def test_pipeline_family_end_to_end(image_folder, tmp_path):
    args = ["pipeline", "--data", str(image_folder), "--epochs", "2", "--batch-size", "32", "--out", str(tmp_path)]
    args += ["--name", "p", "--device", "cpu", "--widths", "0.125,0.25", "--seeds", "0", "--latency-rounds", "1"]
    result = CliRunner().invoke(main, [*args, "--budget-ms", "50", "--accuracy-threshold", "50"])
    assert result.exit_code == 0, result.output
    for name in ("p-w0.125-s0", "p-w0.25-s0"):
        run = tmp_path / name
        for file in ("checkpoint.pt", "resnet9-ema-none-fp32.onnx", "eval.json", "manifest.json"):
            assert (run / file).exists(), (name, file)
        rows = json.loads((run / "eval.json").read_text())["rows"]
        assert {(r["backend"], r["precision"]) for r in rows} == {
            ("torch", "fp32"),
            ("onnxruntime", "fp32"),
            ("onnxruntime", "int8"),
        }
        assert {r["tta"] for r in rows} >= {"none", "flip", "translate", "flip-translate", "selective-flip"}
        manifest = json.loads((run / "manifest.json").read_text())
        assert set(manifest["runs"]) >= {"train", "export", "eval"}
    report_dir = tmp_path / "p-report"
    for file in ("report.md", "report.json", "report.csv", "accuracy_vs_gflops.png", "accuracy_vs_latency.png"):
        assert (report_dir / file).exists(), file
    report = json.loads((report_dir / "report.json").read_text())
    assert {r["name"] for r in report["rules"]} == {"no-tta", "dawnbench", "total-flops", "latency"}
    assert {p["width"] for p in report["points"]} == {0.125, 0.25} and report["views_vs_width"]
    assert "note: skipped tensorrt: no CUDA GPU on this machine" in result.output
    skipped = json.loads((tmp_path / "p-w0.125-s0" / "eval.json").read_text())["skipped"]
    assert {s["backend"] for s in skipped} >= {"tensorrt", "onnxruntime-cuda", "torch-graphs"}
    assert "## Skipped backends" in (report_dir / "report.md").read_text()


def test_pipeline_refuses_bad_options_before_training(image_folder, tmp_path):
    base = ["pipeline", "--data", str(image_folder), "--out", str(tmp_path), "--device", "cpu"]
    for bad in (
        ["--tta", "bogus"],
        ["--widths", "-1"],
        ["--widths", "0.5,0.5"],
        ["--seeds", "x"],
        ["--accuracy-threshold", "ninety"],
        ["--rule", "latency"],
        ["--budget-gflops", "inf"],
    ):
        result = CliRunner().invoke(main, [*base, *bad])
        assert result.exit_code in (1, 2) and len(result.output.strip().splitlines()) == 1, (bad, result.output)
    assert not any(tmp_path.iterdir())  # nothing was trained

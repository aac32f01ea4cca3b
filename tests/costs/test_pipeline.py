"""The one-command pipeline end to end on tiny synthetic data."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dawnpipe.cli import main


def test_pipeline_end_to_end(image_folder, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "pipeline",
            "--data",
            str(image_folder),
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--width",
            "0.125",
            "--out",
            str(tmp_path),
            "--name",
            "p",
            "--device",
            "cpu",
            "--latency-iters",
            "2",
            "--budget-ms",
            "50",
        ],
    )
    assert result.exit_code == 0, result.output
    run = tmp_path / "p"
    for name in (
        "checkpoint.pt",
        "resnet9-ema-none-fp32.onnx",
        "eval.json",
        "report.md",
        "report.json",
        "report.csv",
        "accuracy_vs_gflops.png",
        "accuracy_vs_latency.png",
        "manifest.json",
    ):
        assert (run / name).exists(), name
    rows = json.loads((run / "eval.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"torch", "onnxruntime"}
    assert {r["tta"] for r in rows} >= {"none", "flip", "translate", "flip-translate", "selective-flip"}
    report = json.loads((run / "report.json").read_text())
    assert {r["name"] for r in report["rules"]} == {"no-tta", "dawnbench", "total-flops", "latency"}
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["runs"]) >= {"train", "export", "eval", "costs"}
    assert "skipped TensorRT" in result.output or "engine:" in result.output

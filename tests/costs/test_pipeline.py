"""The one-command pipeline end to end on tiny synthetic data: a two-width family, one report over it."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.common.machine import cpu_features
from dawnpipe.common.precision import auto_cpu_precision
from dawnpipe.export.onnx_export import read_metadata

OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture
def family_int8_bar(monkeypatch):
    """The family tests below are about a family's plumbing (its rows, sessions and records), not about whether a
    2-epoch width-0.125 model survives int8: its int8 graph agrees with fp32 on 63 of the 64 check images on the
    Intel Xeon with VNNI of 2026-12-07 (entropy, minmax and percentile ranges alike), 62 of 64 (96.88%) on a Zen 4
    (issue 43), one image either side of the production bar of 97%. Their int8 exports are held to 90% instead
    (every kernel's rounding flips at most a few low-margin images of 64); the bar itself is tested in
    tests/export/test_quantize.py."""
    _int8_bar(monkeypatch, 0.9)


def _int8_bar(monkeypatch, bar: float) -> None:
    """The real int8 export and its real agreement check, held to ``bar`` instead of the production one."""
    from dawnpipe.export import api

    real = api.export_onnx_model

    def held(source, out_dir, *, precision="fp32", int8=None, **kwargs):
        if int8 is not None:
            int8 = replace(int8, min_agreement=bar)
        return real(source, out_dir, precision=precision, int8=int8, **kwargs)

    monkeypatch.setattr(api, "export_onnx_model", held)


def test_pipeline_family_end_to_end(image_folder, tmp_path, family_int8_bar):
    args = ["pipeline", "--data", str(image_folder), "--epochs", "2", "--batch-size", "32", "--out", str(tmp_path)]
    args += ["--name", "p", "--device", "cpu", "--widths", "0.125,0.25", "--seeds", "0", "--latency-rounds", "1"]
    args += ["--latency-calls", "2", "--throughput-batch", "16"]
    # the CPU default set without OpenVINO's two (tests/infer/test_openvino.py and the refusal test below run them)
    args += ["--backends", "torch,onnxruntime,onnxruntime-int8"]
    result = CliRunner().invoke(main, [*args, "--budget-ms", "50", "--accuracy-threshold", "50"])
    assert result.exit_code == 0, result.output
    sessions: dict[tuple[str, str], set[str]] = {}
    for name in ("p-w0.125-s0", "p-w0.25-s0"):
        run = tmp_path / name
        for file in ("checkpoint.pt", "resnet9-ema-none-fp32.onnx", "eval.json", "manifest.json"):
            assert (run / file).exists(), (name, file)
        rows = json.loads((run / "eval.json").read_text())["rows"]
        assert {(r["backend"], r["precision"]) for r in rows} == {
            ("torch", auto_cpu_precision()),  # fp32 as the suite pins it (bf16 where the pin says bf16)
            ("onnxruntime", "fp32"),
            ("onnxruntime", "int8"),
        }
        assert {r["tta"] for r in rows} >= {"none", "flip", "translate", "flip-translate", "selective-flip"}
        for r in rows:
            sessions.setdefault((r["backend"], r["precision"]), set()).add(r["latency"]["batch1"]["session"])
        manifest = json.loads((run / "manifest.json").read_text())
        assert set(manifest["runs"]) >= {"train", "export", "eval"}
    # each backend times both widths in one session, so costs pairs rows of different widths round by round
    assert len(sessions) == 3 and all(len(ids) == 1 for ids in sessions.values()), sessions
    report_dir = tmp_path / "p-report"
    for file in ("report.md", "report.json", "report.csv", "accuracy_vs_gflops.png", "accuracy_vs_latency.png"):
        assert (report_dir / file).exists(), file
    report = json.loads((report_dir / "report.json").read_text())
    assert {r["name"] for r in report["rules"]} == {"no-tta", "dawnbench", "total-flops", "latency"}
    assert {p["width"] for p in report["points"]} == {0.125, 0.25} and report["views_vs_width"]
    asked = "not asked for (--backends torch,onnxruntime,onnxruntime-int8)"
    assert f"note: skipped tensorrt: {asked}; no CUDA GPU on this machine" in result.output
    skipped = json.loads((tmp_path / "p-w0.125-s0" / "eval.json").read_text())["skipped"]
    # what cannot run here is named, as not asked for (an explicit list skips nothing it asked for); OpenVINO's two
    # can run here and were not asked for, so they are not named
    no_bf16 = set() if cpu_features().get("bf16_native") else {"openvino-bf16"}  # it needs a CPU with native bf16
    assert {s["backend"] for s in skipped} == {"tensorrt", "onnxruntime-cuda", *no_bf16}
    assert all(s["reason"].startswith(asked) for s in skipped)
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


@pytest.fixture
def strict_int8(monkeypatch):
    """The real int8 export and its real agreement check, held to an agreement no graph reaches."""
    _int8_bar(monkeypatch, 1.01)


def test_a_refused_int8_export_skips_its_backends_and_the_family_goes_on(image_folder, tmp_path, strict_int8):
    args = ["pipeline", "--data", str(image_folder), "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path)]
    args += ["--name", "q", "--device", "cpu", "--width", "0.125", "--latency-rounds", "1", "--tta", "none,flip"]
    args += ["--latency-calls", "2", "--throughput-batch", "16"]
    args += ["--backends", "onnxruntime,onnxruntime-int8" + (",openvino-int8" if OPENVINO else "")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "q" / "eval.json").read_text())
    assert {r["precision"] for r in evaluation["rows"]} == {"fp32"}
    skipped = {s["backend"]: s["reason"] for s in evaluation["skipped"]}
    assert "agrees with fp32 on only" in skipped["onnxruntime-int8"] and skipped["onnxruntime-int8"].startswith("q:")
    assert "--precision" not in skipped["onnxruntime-int8"]  # export's fix, an option pipeline does not have
    if OPENVINO:
        assert "agrees with fp32 on only" in skipped["openvino-int8"]
    assert "onnxruntime-int8: skipped: q:" in (tmp_path / "q" / "report.md").read_text()


def test_the_family_int8_range_method_is_used_recorded_and_held_on_resume(image_folder, tmp_path, family_int8_bar):
    args = ["pipeline", "--data", str(image_folder), "--epochs", "2", "--batch-size", "32", "--out", str(tmp_path)]
    args += ["--name", "r", "--device", "cpu", "--width", "0.125", "--tta", "none", "--latency-rounds", "1"]
    args += ["--latency-calls", "2", "--throughput-batch", "16", "--backends", "onnxruntime,onnxruntime-int8"]
    result = CliRunner().invoke(main, [*args, "--calibration-method", "entropy"])
    assert result.exit_code == 0 and "refused" not in result.output, result.output
    meta = read_metadata(tmp_path / "r" / "resnet9-ema-none-int8.onnx")
    assert meta["quantization"]["calibration_method"] == "entropy"
    other = CliRunner().invoke(main, [*args, "--calibration-method", "minmax", "--resume"])
    assert other.exit_code == 1 and "calibration_method" in other.output, other.output


def test_a_run_no_chosen_backend_can_evaluate_stops_the_family_in_one_line(image_folder, tmp_path, strict_int8):
    args = ["pipeline", "--data", str(image_folder), "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path)]
    args += ["--name", "z", "--device", "cpu", "--widths", "0.125,0.25", "--tta", "none", "--latency-rounds", "1"]
    args += ["--backends", "onnxruntime-int8"]
    result = CliRunner().invoke(main, args)
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and "no chosen backend can evaluate z-w0.125-s0" in error, result.output
    assert "agrees with fp32 on only" in error and "--calibration-method" in error
    assert not (tmp_path / "z-w0.25-s0").exists()  # stopped before training another member it could not evaluate


def test_a_bf16_family_trains_scores_and_reports_bf16_on_any_cpu(image_folder, tmp_path):
    """bf16 (emulated where the CPU has none): the training, the torch rows and the report all name bf16, while the
    ONNX rows stay the fp32 export's."""
    args = ["pipeline", "--data", str(image_folder), "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path)]
    args += ["--name", "h", "--device", "cpu", "--width", "0.125", "--tta", "none,flip", "--latency-rounds", "3"]
    args += [
        "--latency-calls",
        "2",
        "--throughput-batch",
        "8",
        "--backends",
        "torch,onnxruntime",
        "--precision",
        "bf16",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "h" / "manifest.json").read_text())
    assert manifest["runs"]["train"]["device"]["precision"] == "bf16"
    assert manifest["runs"]["train"]["config"]["precision"] == "bf16"
    rows = json.loads((tmp_path / "h" / "eval.json").read_text())["rows"]
    assert {(r["backend"], r["precision"]) for r in rows} == {("torch", "bf16"), ("onnxruntime", "fp32")}
    report = (tmp_path / "h" / "report.md").read_text()
    assert "w0.125 none @ torch bf16" in report and "| bf16 | cpu |" in report  # a point, and the Runs table

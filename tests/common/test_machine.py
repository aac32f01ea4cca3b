"""The CPU a figure was measured on: parsed from /proc/cpuinfo, summarised, and carried by every eval row."""

from __future__ import annotations

import json

from dawnpipe.common.machine import cpu_features, cpu_summary, parse_cpuinfo, runs_natively
from dawnpipe.common.precision import auto_cpu_precision

_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma\n"
_SAPPHIRE = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    "flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16\n"
)


def test_an_avx2_cpu_runs_int8_and_bf16_in_software():
    features = parse_cpuinfo(_AVX2)
    assert features["model"] == "AMD EPYC" and features["flags"]["avx2"] and not features["flags"]["avx512f"]
    assert features["int8_native"] is False and features["bf16_native"] is False
    assert cpu_summary(features) == "AMD EPYC (avx2; no VNNI (int8 not native); no BF16 (bf16 emulated))"
    assert runs_natively("cpu", "int8", features) is False and runs_natively("cpu", "fp32", features) is True


def test_a_vnni_bf16_cpu_runs_both_natively():
    features = parse_cpuinfo(_SAPPHIRE)
    assert features["int8_native"] and features["bf16_native"] and features["flags"]["amx_int8"]
    assert "int8 native (VNNI)" in cpu_summary(features) and "bf16 native" in cpu_summary(features)
    assert runs_natively("cpu", "int8-asym", features) and runs_natively("cpu", "bf16", features)
    assert runs_natively("cuda", "int8", features) is None  # a GPU row: not the CPU's question


def test_no_cpuinfo_says_unknown():
    features = parse_cpuinfo("", "x86_64")
    assert features == {"model": "x86_64", "flags": "unknown", "int8_native": None, "bf16_native": None}
    assert cpu_summary(features) == "x86_64 (flags unknown)"


def test_every_eval_row_and_the_report_name_the_cpu(trained_run, tmp_path):
    from dawnpipe.export.api import ExportConfig, export
    from dawnpipe.export.config import Int8Spec
    from dawnpipe.infer.evaluate import EvalConfig, evaluate
    from dawnpipe.infer.latency import Protocol
    from dawnpipe.train.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "checkpoint.pt", load_checkpoint(trained_run))  # a copy: the shared run stays as it is
    onnx = export(ExportConfig(source=str(run), precision="int8", check_images=128, allow_foreign=True,
                               int8=Int8Spec(calibration_images=64, min_agreement=0.9))).onnx  # fmt: skip
    quick = Protocol(rounds=1, calls=2, min_seconds=0.0, warmup=1)
    rows, _ = evaluate(EvalConfig(artifact=str(onnx), tta=("none",), protocol=quick, latency_images=4,
                                  throughput_batch=8, allow_foreign=True))  # fmt: skip
    assert rows[0]["cpu"] == cpu_features()
    assert rows[0]["native_instructions"] == cpu_features()["int8_native"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["runs"]["eval"]["config"]  # the eval was recorded beside the artifact
    # a second evaluation into the same eval.json keeps the first one's config beside its own
    evaluate(EvalConfig(artifact=str(run), tta=("none",), latency=False, allow_foreign=True))
    record = json.loads((run / "manifest.json").read_text())["runs"]["eval"]
    torch_rows = f"checkpoint.pt:torch:{auto_cpu_precision()}"  # fp32 as the suite pins it; bf16 if pinned so
    assert sorted(record["configs"]) == [torch_rows, f"{onnx.name}:onnxruntime:int8"]
    assert record["configs"][f"{onnx.name}:onnxruntime:int8"]["latency"] and record["config"]["latency"] is False

"""bench/gpu_family.sh as a lent GPU machine runs it, on the CPU with the tiny data: the family trains, is scored and
reported, the first member is exported beside it, and what comes back (one archive, the fp32 file in parts) is whole
and matches the manifests that describe it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_family.sh"


@pytest.mark.slow
def test_the_gpu_family_script_brings_back_a_whole_family_and_the_deployed_files(image_folder, tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    env = {
        **os.environ,
        "OUT": str(out),
        "RUNS": str(runs),
        "DATA": str(image_folder),
        "PYTHON": sys.executable,
        "DAWNPIPE_CACHE": str(tmp_path / "cache"),
        "WIDTHS": "0.125,0.25",
        "SEEDS": "0",
        "EPOCHS": "2",
        "BACKENDS": "torch",  # torch-graphs compiles for minutes on a CPU; the GPU's default is torch,torch-graphs
        "EXTRA": "--batch-size 32 --latency-rounds 1 --latency-calls 2 --throughput-batch 16 --device cpu "
        "--accuracy-threshold 20",
        "LIMIT": "400",
        "NOTE": "a test bar",
    }
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "pipeline finished" in (out / "pipeline.log").read_text()

    with tarfile.open(out / "gfam10.tgz") as archive:
        names = set(archive.getnames())
        report = json.loads(archive.extractfile("gfam10-report/report.json").read())  # type: ignore[union-attr]
        deploy = json.loads(archive.extractfile("gfam10-w0.125-s0-deploy/manifest.json").read())  # type: ignore[union-attr]
    for member in ("gfam10-w0.125-s0", "gfam10-w0.25-s0"):
        assert {f"{member}/eval.json", f"{member}/manifest.json"} <= names
    assert not any(name.endswith((".pt", "-fp32.onnx")) for name in names)  # they stay on the machine or come in parts
    assert {p["width"] for p in report["points"]} == {0.125, 0.25}

    # the fp32 file, put back together from its parts, is the one the deploy folder's manifest recorded
    parts = sorted(out.glob("fp32.onnx.part-*"))
    assert parts
    whole = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    recorded = deploy["artifacts"]["resnet9-ema-none-fp32.onnx"]["sha256"]
    assert whole == recorded
    # the deploy step's log says what it did, and names the machine it ran on
    log = (out / "deploy.log").read_text()
    assert "resnet9-ema-none-fp32.onnx" in log
    if shutil.which("lscpu"):
        assert "Model name" in log

"""bench/gpu_loan.sh, a whole GPU loan in one call, on the CPU with the tiny data: the check runs first, the family
gets the budget that is left (or is skipped, saying so, when too little is), and what comes back fits what a `run`
call returns (at most 8 files, plain names)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bench.gpu import STEPS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_loan.sh"
# the check cut to its first step: the full step list has its own smoke test (tests/test_bench_gpu.py)
_ONLY_ENVIRONMENT = "--device cpu --smoke --skip " + ",".join(name for name in STEPS if name != "environment")


def _loan(tmp_path: Path, image_folder: Path, **overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "RUNS": str(tmp_path / "runs"),
        "WORK": str(tmp_path / "work"),
        "DATA": str(image_folder),
        "PYTHON": sys.executable,
        "DAWNPIPE_CACHE": str(tmp_path / "cache"),
        "CHECK_ARGS": _ONLY_ENVIRONMENT,
        "WIDTHS": "0.125,0.25",  # two members: a family (one alone is a single run)
        "SEEDS": "0",
        "EPOCHS": "1",
        "BACKENDS": "torch",
        "EXTRA": "--batch-size 32 --latency-rounds 1 --latency-calls 2 --throughput-batch 16 --device cpu "
        "--accuracy-threshold 20",
        "NOTE": "a test bar",
        **overrides,
    }
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    return done, out


def _returnable(out: Path) -> list[Path]:
    """What a `run` call would bring back from $OUT: every file, checked against its limits on number and name."""
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8, files
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in files), files
    return files


@pytest.mark.slow
def test_a_loan_runs_the_check_then_the_family_in_the_time_left(image_folder, tmp_path):
    done, out = _loan(tmp_path, image_folder, BUDGET="500", FAMILY_MIN="60")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu.json").read_text())
    assert report["steps"]["environment"]["status"] == "ok"
    log = (out / "loan.log").read_text()
    limit = int(re.search(r"family with LIMIT=(\d+) s", log).group(1))  # type: ignore[union-attr]
    assert 60 <= limit <= 500 - 30  # what the check left, less the archive's margin
    assert "family ended with status 0" in log and "done: check 0, family 0" in log
    assert "pipeline finished" in (out / "pipeline.log").read_text()
    with tarfile.open(out / "gfam10.tgz") as archive:
        assert {"gfam10-w0.125-s0/eval.json", "gfam10-w0.25-s0/eval.json", "gfam10-report/report.json"} <= set(
            archive.getnames()
        )
    names = {p.name for p in _returnable(out)}
    assert {"gpu.json", "gpu.log", "loan.log", "pipeline.log", "deploy.log", "gfam10.tgz"} <= names
    assert any(name.startswith("fp32.onnx.part-") for name in names)  # the first member, deployed beside


def test_a_loan_with_too_little_time_left_skips_the_family_and_says_so(image_folder, tmp_path):
    done, out = _loan(tmp_path, image_folder, BUDGET="400", FAMILY_MIN="100000")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((out / "gpu.json").read_text())["steps"]["environment"]["status"] == "ok"
    log = (out / "loan.log").read_text()
    assert "family skipped" in log and "FAMILY_MIN=100000" in log and "family with LIMIT" not in log
    assert not (out / "pipeline.log").exists() and not (tmp_path / "runs").exists()
    assert {p.name for p in _returnable(out)} == {"gpu.json", "gpu.log", "loan.log"}

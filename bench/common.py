"""Helpers for the benchmarks: where the real data is, and how results are written."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from dawnpipe.common.machine import cpu_features, cpu_summary

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def data_source() -> str | None:
    """The real JPEG CIFAR-10 when it is beside the checkout (benchmarks fall back to synthetic data)."""
    override = os.environ.get("DAWNPIPE_BENCH_DATA")
    if override:
        return override
    return str(REAL_DATA) if REAL_DATA.exists() else None


def write_result(name: str, result: dict) -> Path:
    """bench/results/<name>.json with the machine's description; also printed."""
    result = {
        "benchmark": name,
        "unix_time": time.time(),
        "machine": cpu_summary(),
        "cpu": cpu_features(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **result,
    }
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return out

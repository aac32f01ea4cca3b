"""Seconds from launching `python cli.py train` to its first training step, on an already cached dataset.

    python bench/startup.py [--runs 3]

The trainer records the wall-clock time of its first step in the run's metrics; this script measures from
just before it spawns the process (so interpreter start, imports, data loading, whitening and model build
all count).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import ROOT, data_source, write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    data = data_source()
    if data is None:
        sys.exit("bench/startup.py needs CIFAR-10: set DAWNPIPE_BENCH_DATA or place ../shared/data")
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            str(ROOT / "cli.py"),
            "train",
            "--data",
            data,
            "--epochs",
            "1",
            "--batch-size",
            "512",
            "--train-limit",
            "1024",
            "--test-limit",
            "500",
            "--out",
            tmp,
        ]
        subprocess.run([*command, "--name", "warm"], check=True, capture_output=True)  # fills the decoded cache
        for i in range(args.runs):
            start = time.time()
            subprocess.run([*command, "--name", f"r{i}"], check=True, capture_output=True)
            payload = torch.load(Path(tmp) / f"r{i}" / "checkpoint.pt", weights_only=True)
            seconds.append(payload["metrics"]["final"]["first_step_unix"] - start)
    write_result("startup", {"data": data, "seconds_to_first_step": seconds, "best": min(seconds)})


if __name__ == "__main__":
    main()

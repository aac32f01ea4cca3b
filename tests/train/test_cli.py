"""The train command through click's CliRunner, including its one-line errors."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from dawnpipe.cli import main


def test_help_lists_every_option():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    for option in (
        "--data",
        "--epochs",
        "--batch-size",
        "--width",
        "--train-limit",
        "--test-limit",
        "--seed",
        "--device",
        "--out",
        "--resume",
    ):
        assert option in result.output


def test_train_command_writes_checkpoint(image_folder, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            str(image_folder),
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--width",
            "0.125",
            "--test-limit",
            "16",
            "--out",
            str(tmp_path),
            "--name",
            "cli",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "checkpoint.pt").exists() and "checkpoint:" in result.output


def _one_line_error(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output
    return lines[0]


def test_missing_data_path(tmp_path):
    assert "does not exist" in _one_line_error(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present, so --device cuda is valid here")
def test_cuda_without_gpu(image_folder, tmp_path):
    message = _one_line_error(["train", "--data", str(image_folder), "--device", "cuda", "--out", str(tmp_path)])
    assert "no CUDA GPU" in message and "--device cpu" in message


def test_real_ctrl_c_keeps_a_checkpoint_that_resume_continues(image_folder, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from dawnpipe.train.checkpoint import load_checkpoint

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        str(root / "cli.py"),
        "train",
        "--data",
        str(image_folder),
        "--epochs",
        "6",
        "--batch-size",
        "32",
        "--width",
        "0.125",
        "--test-limit",
        "16",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        "--name",
        "sig",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "sig" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1, err[-1000:]
    assert "interrupted in epoch" in err and "--resume" in err and "Traceback" not in err
    state = load_checkpoint(checkpoint)["state"]
    assert not state["complete"]
    resumed = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "sig"), "--device", "cpu"])
    assert resumed.exit_code == 0, resumed.output
    assert (
        load_checkpoint(checkpoint)["state"]["complete"] and len(load_checkpoint(checkpoint)["metrics"]["epochs"]) == 6
    )

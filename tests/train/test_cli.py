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

"""Precision is the caller's choice (--precision auto|fp32|bf16|fp16), resolved in one place, refused in one line
where it cannot run, and pinned for the suite by one environment variable (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.common.device import choose_device
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.precision import AUTO_CPU_PRECISION_ENV, auto_cpu_precision, cpu_supports_bf16


def test_the_suite_runs_auto_at_the_pinned_precision():
    # conftest pins fp32 unless the person running the suite pinned bf16; either way `auto` obeys the pin
    import os

    pinned = os.environ[AUTO_CPU_PRECISION_ENV]
    assert pinned in ("fp32", "bf16") and auto_cpu_precision() == pinned
    assert choose_device("cpu").precision == pinned and choose_device("cpu").asked == "auto"


def test_auto_without_a_pin_follows_the_cpu(monkeypatch):
    monkeypatch.delenv(AUTO_CPU_PRECISION_ENV)
    assert auto_cpu_precision() == ("bf16" if cpu_supports_bf16() else "fp32")


@pytest.mark.parametrize("pin, dtype", [("fp32", None), ("bf16", torch.bfloat16), ("BF16", torch.bfloat16)])
def test_the_pin_decides_auto_on_any_cpu(monkeypatch, pin, dtype):
    monkeypatch.setenv(AUTO_CPU_PRECISION_ENV, pin)
    assert choose_device("cpu", "auto").autocast_dtype is dtype


def test_a_bad_pin_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv(AUTO_CPU_PRECISION_ENV, "fp16")
    with pytest.raises(DawnpipeError, match=AUTO_CPU_PRECISION_ENV):
        choose_device("cpu")


@pytest.mark.parametrize("asked, dtype", [("fp32", None), ("bf16", torch.bfloat16)])
def test_an_explicit_precision_wins_over_the_pin(monkeypatch, asked, dtype):
    # bf16 runs on every CPU (emulated where it is not native); the pin only decides `auto`
    for pin in ("fp32", "bf16"):
        monkeypatch.setenv(AUTO_CPU_PRECISION_ENV, pin)
        choice = choose_device("cpu", asked)
        assert choice.autocast_dtype is dtype and choice.asked == asked and choice.describe()["precision"] == asked


def test_fp16_on_a_cpu_and_unknown_precisions_are_refused():
    with pytest.raises(DawnpipeError, match="fp16 cannot run on a CPU"):
        choose_device("cpu", "fp16")
    with pytest.raises(DawnpipeError, match="unknown precision 'int8'"):
        choose_device("cpu", "int8")


def test_a_bf16_run_on_a_cpu_records_whether_bf16_was_native():
    info = choose_device("cpu", "bf16").describe()
    assert info["precision"] == "bf16" and info["bf16_native"] is cpu_supports_bf16()
    assert "bf16_native" not in choose_device("cpu", "fp32").describe()


@pytest.mark.parametrize("command", ["train", "pipeline"])
def test_fp16_on_a_cpu_is_one_line_before_any_work(image_folder, tmp_path, command):
    args = [command, "--data", str(image_folder), "--device", "cpu", "--precision", "fp16", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, "--name", "x", "--epochs", "1", "--width", "0.125"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --precision fp16 cannot run on a CPU"), lines
    assert "use --precision bf16" in lines[0]
    assert not any(tmp_path.iterdir())  # no run folder was claimed


def test_eval_refuses_a_precision_for_an_onnx_file(trained_run, tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not read: the option is refused first")
    result = CliRunner().invoke(main, ["eval", str(onnx), "--precision", "bf16", "--no-latency"])
    assert result.exit_code == 1 and "whose precision is its own" in result.output, result.output

"""Nothing heavy runs at import time: --help works and optional runtimes load only when used."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_modules_do_not_import_runtimes():
    code = (
        "import sys, cli, export.api, export.tensorrt_build, infer.backends, infer.evaluate, infer.predict, "
        "costs.report, costs.pipeline, train.trainer, train.distributed; "
        "bad = [m for m in ('onnxruntime', 'tensorrt', 'matplotlib') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_help_does_not_import_torch():
    code = (
        "import sys; sys.argv = ['cli.py', '--help']; import cli; cli.main(standalone_mode=False); "
        "assert 'torch' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in ("train", "export", "eval", "predict", "costs", "pipeline"):
        assert command in result.stdout


def test_console_script_is_the_same_cli():
    script = shutil.which("dawnpipe")
    if script is None:
        pytest.skip("the dawnpipe script is not installed (pip install -e . installs it)")
    result = subprocess.run([script, "export", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--trt" in result.stdout

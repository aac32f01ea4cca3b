"""Package shape: one installed package, stages that depend one way, nothing heavy at import time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """import-linter with the contracts in ROOT's pyproject.toml, run on whatever ``dawnpipe`` resolves to."""
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    config = str(ROOT / "pyproject.toml")
    command = [sys.executable, "-c", code, "--no-cache", "--no-logo", config]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)


def test_stages_depend_one_way_and_no_modules_import_in_a_circle():
    """pyproject.toml's import-linter contracts: the stage layers (common < train < export < infer < costs < cli) and
    no circle between sibling modules at any depth, lazy imports inside functions included."""
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[dev]')")
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert result.stdout.count("KEPT") == 2, result.stdout[-2000:]


def test_the_contracts_catch_a_circle_and_a_backward_import(tmp_path):
    """The same contracts over a stand-in ``dawnpipe`` with the two circles this project once had (manifest <->
    run_folder behind a lazy import, backends <-> torch_backend) and one backward import (train -> costs)."""
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[dev]')")
    package = tmp_path / "dawnpipe"
    files = {
        "common/manifest.py": "def update():\n    from dawnpipe.common.run_folder import RunFolder\n",
        "common/run_folder.py": "from dawnpipe.common.manifest import update\n",
        "infer/backends.py": "def load():\n    from dawnpipe.infer.torch_backend import TorchBackend\n",
        "infer/torch_backend.py": "from dawnpipe.infer.backends import load\n",
        "train/trainer.py": "from dawnpipe.costs.report import build\n",
        "costs/report.py": "build = None\n",
        "export/api.py": "",
        "cli.py": "",
        "tests/test_x.py": "",
    }
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        (path.parent / "__init__.py").touch()
    result = _lint_imports(tmp_path, {**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1 and result.stdout.count("BROKEN") == 2, result.stdout[-3000:] + result.stderr
    assert "dawnpipe.train.trainer -> dawnpipe.costs.report" in result.stdout, result.stdout[-3000:]
    assert "No cycles are allowed in dawnpipe.common" in result.stdout and "dawnpipe.infer." in result.stdout


def test_modules_do_not_import_runtimes():
    code = (
        "import sys, dawnpipe.cli, dawnpipe.export.api, dawnpipe.export.tensorrt_build, dawnpipe.infer.backends, "
        "dawnpipe.infer.evaluate, dawnpipe.infer.predict, dawnpipe.costs.report, dawnpipe.costs.pipeline, "
        "dawnpipe.train.trainer, dawnpipe.train.distributed, dawnpipe.infer.server, dawnpipe.infer.batching, "
        "dawnpipe.export.quantize; "
        "bad = [m for m in ('onnxruntime', 'tensorrt', 'matplotlib', 'fastapi', 'uvicorn', 'starlette', "
        "'prometheus_client') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_help_does_not_import_torch():
    code = (
        "import sys; sys.argv = ['dawnpipe', '--help']; import dawnpipe.cli as cli; cli.main(standalone_mode=False); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in ("train", "export", "eval", "predict", "serve", "costs", "pipeline"):
        assert command in result.stdout


def test_console_script_module_and_version_agree(tmp_path):
    script = shutil.which("dawnpipe")
    if script is None:
        pytest.skip("the dawnpipe script is not installed (pip install -e . installs it)")
    (tmp_path / "train.py").write_text("raise SystemExit('the user folder train.py was imported')\n")
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "__init__.py").write_text("raise SystemExit('the user folder common/ was imported')\n")
    for command in ([script], [sys.executable, "-m", "dawnpipe"]):
        result = subprocess.run([*command, "export", "--help"], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0 and "--trt" in result.stdout, result.stderr
        version = subprocess.run([*command, "--version"], capture_output=True, text=True, cwd=tmp_path)
        assert version.returncode == 0 and "dawnpipe" in version.stdout, version.stderr


@pytest.mark.slow
def test_non_editable_install_has_only_dawnpipe_at_top_level(tmp_path):
    """A real wheel of this tree installed into an empty folder adds exactly one top-level name, and imports from
    a folder that holds its own train.py and common/ resolve to dawnpipe's modules."""
    wheels, target, user = tmp_path / "wheels", tmp_path / "site", tmp_path / "user"
    pytest.importorskip("setuptools", reason="the build backend is not installed (the suite never fetches it)")
    build = subprocess.run(  # no build isolation: the installed setuptools builds it, nothing is downloaded
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("dawnpipe-*.whl")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    top = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name not in ("bin",)}
    assert top == {"dawnpipe"}, top
    installed = {p.name for p in (target / "dawnpipe").iterdir()}
    assert {"cli.py", "__main__.py", "train", "export", "infer", "costs", "common"} <= installed
    assert not {"tests", "bench"} & installed
    user.mkdir()
    (user / "train.py").write_text("raise SystemExit('user train.py imported')\n")
    (user / "common").mkdir()
    (user / "common" / "__init__.py").write_text("raise SystemExit('user common/ imported')\n")
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = (
        "import dawnpipe, dawnpipe.train.config, dawnpipe.infer.predict; "
        f"assert dawnpipe.__file__.startswith({str(target)!r}), dawnpipe.__file__"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=user, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    cli = subprocess.run(
        [sys.executable, "-m", "dawnpipe", "--version"], capture_output=True, text=True, cwd=user, env=env
    )
    assert cli.returncode == 0 and "dawnpipe" in cli.stdout, cli.stderr[-2000:]


def test_every_documented_install_has_exactly_one_onnxruntime():
    """onnxruntime and onnxruntime-gpu both provide the ``onnxruntime`` module and break each other side by side:
    every extra a user may install resolves to exactly one of them (requirements read by packaging, the parser
    pip uses, with dawnpipe's own extras followed), and this very install holds exactly one."""
    import importlib.metadata as md

    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(requirements: list[str]) -> set[str]:
        found = set()
        for requirement in map(Requirement, requirements):
            if requirement.name == "dawnpipe":  # a self-reference such as dawnpipe[cpu,serve]
                found |= set().union(*(names(extras[extra]) for extra in requirement.extras))
            else:
                found.add(canonicalize_name(requirement.name))
        return found

    base = names(project["dependencies"])
    runtimes = {"onnxruntime", "onnxruntime-gpu"}
    assert not base & runtimes  # the base install names neither, so no extra can add a second one
    for extra in ("cpu", "gpu", "dev"):
        assert len((base | names(extras[extra])) & runtimes) == 1, extra
    assert "cuda-python" not in base | set().union(*(names(v) for v in extras.values()))
    installed = set()
    for name in runtimes:
        try:
            md.distribution(name)
            installed.add(name)
        except md.PackageNotFoundError:
            continue
    assert len(installed) == 1, installed


def test_gpu_check_exits_with_one_line_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: bench/gpu.py runs the real check here")
    command = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--data", str(ROOT), "--out", "/tmp/dawnpipe-gpu.json"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "no CUDA GPU" in result.stderr
    bare = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py")], capture_output=True, text=True)
    assert bare.returncode == 2 and bare.stderr.strip().count("\n") == 0 and "--data, --out" in bare.stderr

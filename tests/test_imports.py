"""Package shape: one installed package, stages that depend one way, nothing heavy at import time."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("common", "train", "export", "infer", "costs", "cli")  # each may import only the ones before it


def _stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "dawnpipe" and parts[1] in STAGES else None


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return found


def test_stages_depend_one_way():
    backwards = []
    files = [ROOT / "cli.py", *(f for stage in STAGES[:-1] for f in (ROOT / stage).glob("*.py"))]
    for file in files:
        own = "cli" if file.name == "cli.py" else file.parent.name
        for module in _imports(file):
            target = _stage_of(module)
            if target is not None and STAGES.index(target) > STAGES.index(own):
                backwards.append(f"{file.relative_to(ROOT)} imports {module}")
            assert module.split(".")[0] not in STAGES, f"{file.relative_to(ROOT)}: bare import {module}"
    assert not backwards, backwards


def test_the_direction_check_can_fail(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from dawnpipe.costs.report import build_report\nimport dawnpipe.infer.tta\n")
    assert [_stage_of(m) for m in _imports(bad)] == ["costs", "infer"]


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
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0 and "Could not find a version that satisfies" in build.stderr:
        pytest.skip("no build backend reachable to build a wheel")
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("dawnpipe-*.whl")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
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
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(requirements):
        found = set()
        for req in requirements:
            name = req.split(">")[0].split("=")[0].split("[")[0].strip().lower()
            if name == "dawnpipe":  # a self-reference such as dawnpipe[cpu]
                inner = req[req.index("[") + 1 : req.index("]")].split(",")
                found |= set().union(*(names(extras[e]) for e in inner))
            else:
                found.add(name)
        return found

    base = names(project["dependencies"])
    runtimes = {"onnxruntime", "onnxruntime-gpu"}
    assert not base & runtimes  # the base install names neither, so no extra can add a second one
    for extra in ("cpu", "gpu", "dev"):
        assert len((base | names(extras[extra])) & runtimes) == 1, extra
    assert "cuda-python" not in base | set().union(*(names(v) for v in extras.values()))


def test_gpu_check_exits_with_one_line_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: bench/gpu.py runs the real check here")
    command = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--data", str(ROOT), "--out", "/tmp/dawnpipe-gpu.json"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "no CUDA GPU" in result.stderr
    bare = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py")], capture_output=True, text=True)
    assert bare.returncode == 2 and bare.stderr.strip().count("\n") == 0 and "--data, --out" in bare.stderr

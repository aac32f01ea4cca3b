"""bench/gpu.py as the lent GPU machine will run it, on the CPU: no install (a `dawnpipe` link on PYTHONPATH, site
packages without the editable install), every step, a JSON that survives SIGKILL, bad options refused first."""

from __future__ import annotations

import json
import os
import signal
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "bench" / "gpu.py"


def _no_install_env(tmp_path: Path) -> dict[str, str]:
    """PYTHONPATH = a folder whose `dawnpipe` is a link to this checkout, then the site packages; run with -S so
    no .pth file (the editable install's among them) is read: dawnpipe is importable only through the link."""
    links = tmp_path / "links"
    links.mkdir(exist_ok=True)
    (links / "dawnpipe").symlink_to(ROOT, target_is_directory=True)
    paths = [str(links), *site.getsitepackages()]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "DAWNPIPE_CACHE": str(tmp_path / "cache")}


def _airbench_sdist() -> Path | None:
    """PyPI's airbench 0.1.8 sdist where a developer has put it (``$DAWNPIPE_AIRBENCH_SDIST``; fetch it with ``pip
    download airbench==0.1.8 --no-deps --no-binary :all:``), else None: the suite never reaches the network, and
    bench/airbench.py refuses any file but PyPI's (sha256), so no stand-in can take its place."""
    found = Path(os.environ.get("DAWNPIPE_AIRBENCH_SDIST", "") or "/nonexistent")
    return found if found.is_file() else None


def test_dawnpipe_is_not_installed_in_the_no_install_interpreter(tmp_path):
    env = _no_install_env(tmp_path)
    where = subprocess.run([sys.executable, "-S", "-c", "import dawnpipe; print(dawnpipe.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert where.returncode == 0 and where.stdout.startswith(str(tmp_path / "links" / "dawnpipe"))
    plain = {**env, "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    missing = subprocess.run(
        [sys.executable, "-S", "-c", "import dawnpipe"], capture_output=True, env=plain, cwd=tmp_path
    )
    assert missing.returncode != 0  # without the link it is not importable: nothing installed is used


@pytest.mark.slow
def test_the_whole_step_list_runs_at_smoke_size_without_an_install(image_folder, tmp_path):
    sdist = _airbench_sdist()  # without it the airbench step is skipped and the rest is checked
    out = tmp_path / "out" / "gpu.json"
    command = [sys.executable, "-S", str(GPU), "--data", str(image_folder), "--device", "cpu", "--smoke", "--out",
               str(out), "--work", str(tmp_path / "work")]  # fmt: skip
    command += ["--airbench-source", str(sdist)] if sdist else ["--skip", "airbench"]
    done = subprocess.run(command, capture_output=True, text=True, env=_no_install_env(tmp_path), cwd=tmp_path,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    from bench.gpu import STEPS

    assert list(report["steps"]) == list(STEPS)
    statuses = {name: step["status"] for name, step in report["steps"].items()}
    expected_skips = {"onnxruntime_cuda", "tensorrt"} | (set() if sdist else {"airbench"})
    assert {n for n, s in statuses.items() if s == "skipped"} == expected_skips, statuses
    assert all(s == "ok" for n, s in statuses.items() if n not in expected_skips), report
    steps = {n: s.get("result", {}) for n, s in report["steps"].items()}
    compiled = steps["train_compiled"]["compiled"]  # ran compiled, or says why not
    assert compiled["ran_compiled"] is True or compiled["notice"].startswith("torch.compile failed"), compiled
    assert steps["train_compiled"]["warm_compile_cache"]["loaded"] is compiled["ran_compiled"]  # the cold run's cache
    assert steps["train_graph"]["step"]["asked"] and not steps["train_eager"]["step"]["asked"]
    assert steps["train_graph"]["step"]["cuda_graph"] is False  # a CPU: asked, not captured, no notice
    agreement = steps["graph_agreement"]  # both eager on a CPU: the same step, the same weights
    assert agreement["graph_ran"] is False and agreement["max_relative_weight_diff"] == 0.0
    assert steps["train_eager"]["first_epoch_seconds"] > 0 and steps["train_eager"]["forward_gflops_per_image"] > 0
    eager = steps["train_eager"]  # cold counts from process start, so it holds the first run's whole wall clock
    assert eager["cold_seconds"] > eager["wall_seconds"] > 0 and eager["warm"]["train_seconds"] > 0
    assert steps["exactness"]["top1_agreement"] == 1.0
    ghost = steps["ghost_bn"]  # every kernel checked against the per-group reference before it is timed
    assert max(ghost["max_relative_error_fp32"].values()) < 1e-4 and ghost["network_ms"]["gathered"] > 0
    assert steps["ddp"]["world_size"] == 1 and steps["ddp"]["backend"] == "gloo"
    assert set(steps["inference"]) >= {"torch", "torch-graphs", "graph_vs_eager_batch1_p50"}
    assert "TensorRT" in steps["tensorrt"]["skipped"] and "CUDA provider" in steps["onnxruntime_cuda"]["skipped"]
    if sdist:
        assert steps["airbench"]["runs"] and steps["airbench"]["benchmark"].startswith("airbench94")


def test_sigkill_after_the_first_step_leaves_every_finished_step(image_folder, tmp_path):
    out = tmp_path / "gpu.json"
    command = [sys.executable, "-S", str(GPU), "--data", str(image_folder), "--device", "cpu", "--smoke", "--out",
               str(out), "--work", str(tmp_path / "work")]  # fmt: skip
    process = subprocess.Popen(command, env=_no_install_env(tmp_path), cwd=tmp_path, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    finished: dict = {}
    while time.monotonic() < deadline and process.poll() is None:
        try:
            finished = json.loads(out.read_text())["steps"]
        except (OSError, ValueError, KeyError):
            finished = {}
        if "environment" in finished:
            break
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # the machine going away mid-run, children included
    process.wait(timeout=30)
    report = json.loads(out.read_text())  # whole, never half-written
    assert report["steps"]["environment"]["status"] == "ok"
    assert report["steps"]["environment"]["result"]["torch"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--skip", "train_eager,warp_drive"], "unknown --skip step(s) warp_drive"),
        (["--out", "{file}/gpu.json"], "cannot be written"),
        (["--data", "{tmp}/missing"], "does not exist"),
        (["--device", "cuda"], "no CUDA GPU is visible"),
    ],
)
def test_bad_options_are_refused_in_one_line_before_any_work(image_folder, tmp_path, args, said):
    if said.startswith("no CUDA") and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = [a.format(file=blocker, tmp=tmp_path) for a in args]
    command = [sys.executable, "-S", str(GPU), "--data", str(image_folder), "--out", str(tmp_path / "r.json")]
    if "--device" not in args:
        command += ["--device", "cpu", "--smoke"]
    done = subprocess.run([*command, *args], capture_output=True, text=True, env=_no_install_env(tmp_path),
                          cwd=tmp_path, timeout=120)  # fmt: skip
    assert done.returncode == 2 and said in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "r.json").exists()


def test_the_airbench_script_never_imports_itself_for_the_package(tmp_path):
    # run as a script its own folder leads sys.path, where `import airbench` would find bench/airbench.py itself
    import importlib.util

    if importlib.util.find_spec("airbench") is not None:
        pytest.skip("airbench is installed here: the script would use it")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "airbench.py"), "--data", str(tmp_path), "--device", "cpu", "--smoke",
         "--out", str(tmp_path / "a.json")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().startswith("error: airbench 0.1.8 is not installed and no --source was given")
    assert done.stderr.strip().count("\n") == 0

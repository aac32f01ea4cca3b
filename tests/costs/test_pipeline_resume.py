"""A family stopped anywhere continues with `pipeline --resume`: finished work reused (checked, never redone),
an interrupted training resumed, other options refused by name. Killed mid-training, mid-evaluation, and by
SIGKILL between runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.common.errors import DawnpipeError, Interrupted
from dawnpipe.costs.pipeline import PipelineConfig, run_pipeline
from dawnpipe.costs.report import ReportConfig
from dawnpipe.infer import evaluate as evaluate_mod
from dawnpipe.train import trainer as trainer_mod
from dawnpipe.train.api import config_from_options
from tests.conftest import StopAfter

_TTA = ("none", "flip", "selective-flip")
_TIMING = ["--latency-rounds", "1", "--latency-calls", "2", "--throughput-batch", "16"]  # as _cfg's: a quick family


def _cfg(image_folder, out: Path, resume=False, **changes) -> PipelineConfig:
    train = config_from_options(
        data=image_folder, epochs=2, batch_size=32, lr=2.0, width=0.125, out=out, name="fam", device="cpu"
    )
    options = dict(
        train=train,
        widths=(0.125,),
        seeds=(0, 1),
        tta=_TTA,
        latency_rounds=1,
        latency_calls=2,
        throughput_batch=16,
        backends=("torch", "onnxruntime"),
        resume=resume,
        report=ReportConfig(runs=(), accuracy_threshold=50),
    )
    options.update(changes)
    return PipelineConfig(**options)


def _rows(run: Path) -> list[dict]:
    return json.loads((run / "eval.json").read_text())["rows"]


def _scored(rows: list[dict]) -> list[dict]:
    """What a row's accuracy consists of (not its latency, nor the path it was timed at)."""
    keys = ("tta", "artifact_sha256", "accuracy", "correct", "correct_bits", "ci95", "selective")
    return [{k: r.get(k) for k in keys} for r in rows]


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """Every file's (size, mtime_ns), to prove that nothing finished was rewritten."""
    return {
        str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_killed_mid_training_resumes_that_training_and_redoes_nothing(image_folder, tmp_path, monkeypatch):
    real = trainer_mod.graceful_interrupt
    calls = {"n": 0}

    def interrupt_second_run():
        calls["n"] += 1
        return contextlib.nullcontext(StopAfter(5)) if calls["n"] == 2 else real()

    monkeypatch.setattr(trainer_mod, "graceful_interrupt", interrupt_second_run)
    with pytest.raises(Interrupted, match="continue with `dawnpipe pipeline --name fam --resume`"):
        run_pipeline(_cfg(image_folder, tmp_path), say=lambda _: None)
    monkeypatch.undo()
    first = tmp_path / "fam-w0.125-s0"
    assert (first / "eval.json").exists() and not (tmp_path / "fam-w0.125-s1" / "manifest.json").exists()
    before = _snapshot(first)
    with pytest.raises(DawnpipeError, match="already records a pipeline family"):
        run_pipeline(_cfg(image_folder, tmp_path), say=lambda _: None)  # without --resume: refused
    lines = []
    result = run_pipeline(_cfg(image_folder, tmp_path, resume=True), say=lines.append)
    assert "fam-w0.125-s1: width 0.125, seed 1, 2 epochs; continues from its checkpoint" in "\n".join(lines)
    assert {"fam-w0.125-s0: training", "fam-w0.125-s0: eval torch", "fam-w0.125-s0: eval onnxruntime"} <= set(
        result.reused
    )
    after = _snapshot(first)
    unchanged = [k for k in before if not k.startswith(("manifest.json", "eval.json"))]
    assert all(after[k] == before[k] for k in unchanged), "a finished artifact of run 1 was rewritten"
    report = json.loads((tmp_path / "fam-report" / "report.json").read_text())
    assert {tuple(p["seeds"]) for p in report["points"]} == {(0, 1)}
    members = json.loads((tmp_path / "fam-report" / "manifest.json").read_text())["runs"]["pipeline"]["members"]
    assert set(members) == {"fam-w0.125-s0", "fam-w0.125-s1"}


def test_killed_mid_evaluation_keeps_the_finished_evaluations(image_folder, tmp_path, monkeypatch):
    real = evaluate_mod.evaluate
    calls = {"n": 0}

    def interrupt_second_eval(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # what Ctrl-C (or SIGTERM, through the pipeline's handler) raises
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_mod, "evaluate", interrupt_second_eval)
    with pytest.raises(Interrupted, match="during an export or evaluation"):
        run_pipeline(_cfg(image_folder, tmp_path, seeds=(0,)), say=lambda _: None)
    monkeypatch.undo()
    run = tmp_path / "fam"
    rows = json.loads((run / "eval.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"torch"}  # the first evaluation finished and was recorded
    checkpoint = (run / "checkpoint.pt").stat().st_mtime_ns
    result = run_pipeline(_cfg(image_folder, tmp_path, seeds=(0,), resume=True), say=lambda _: None)
    assert "fam: eval torch" in result.reused and "fam: training" in result.reused
    assert "fam: eval onnxruntime" not in result.reused
    assert (run / "checkpoint.pt").stat().st_mtime_ns == checkpoint
    rows = json.loads((run / "eval.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"torch", "onnxruntime"} and {r["tta"] for r in rows} == set(_TTA)


@pytest.fixture(scope="module")
def finished(image_folder, tmp_path_factory) -> Path:
    """A finished two-seed family, shared read-only (tests that change it work on a copy)."""
    out = tmp_path_factory.mktemp("finished")
    run_pipeline(_cfg(image_folder, out), say=lambda _: None)
    return out


_CHANGES = [
    ({"widths": (0.25,)}, "widths [0.25] without the family's [0.125]"),  # a family never drops a finished width
    ({"seeds": (0,)}, "seeds [0] without the family's [1]"),
    ({"tta": ("none",)}, "other options than the family in"),
    ({"backends": ("torch",)}, "backends ['torch']"),
    ({"throughput_batch": 32}, "throughput_batch 32 (family: 16)"),  # timed otherwise: not the same family
]


def test_resume_with_other_options_is_refused_by_name_and_writes_nothing(image_folder, finished):
    before = _snapshot(finished)
    for changes, named in _CHANGES:
        with pytest.raises(DawnpipeError) as info:
            run_pipeline(_cfg(image_folder, finished, resume=True, **changes), say=lambda _: None)
        assert named in str(info.value) and "\n" not in str(info.value), str(info.value)
    # another recipe (epochs) or other data are refused the same way, through the CLI, in one line
    base = ["pipeline", "--data", str(image_folder), "--batch-size", "32", "--lr", "2", "--width", "0.125"]
    base += ["--out", str(finished), "--name", "fam", "--device", "cpu", "--seeds", "0,1", "--resume"]
    base += ["--tta", ",".join(_TTA), "--backends", "torch,onnxruntime", *_TIMING]
    base += ["--accuracy-threshold", "50"]
    for extra, word in ((["--epochs", "3"], "recipe.epochs 3 (family: 2)"), (["--epochs", "2", "--data", "x"], "data")):
        result = CliRunner().invoke(main, _swap(base, extra))
        assert result.exit_code == 1 and word in result.stderr and result.stderr.count("\n") == 1, result.output
    assert _snapshot(finished) == before


def _swap(base: list[str], extra: list[str]) -> list[str]:
    args = list(base)
    if "--data" in extra:
        args[args.index("--data") + 1] = extra[extra.index("--data") + 1]
        extra = [a for a in extra if a not in ("--data", extra[extra.index("--data") + 1])]
    return [*args, *extra]


def test_a_run_folder_the_family_does_not_know_is_refused(image_folder, tmp_path):
    stray = tmp_path / "fam-w0.5-s0"
    stray.mkdir(parents=True)
    (stray / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(DawnpipeError, match="fam-w0.5-s0 of family fam that this family's widths and seeds"):
        run_pipeline(_cfg(image_folder, tmp_path), say=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fam-report", "fam-w0.5-s0"]
    assert not (tmp_path / "fam-report" / "manifest.json").exists()


def test_a_finished_run_replaced_by_another_is_refused(image_folder, finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    first, second = out / "fam-w0.125-s0", out / "fam-w0.125-s1"
    members = json.loads((out / "fam-report" / "manifest.json").read_text())["runs"]["pipeline"]["members"]
    assert members[first.name]["run_id"] != members[second.name]["run_id"]
    # the run folder of seed 1 swapped in under seed 0's name: its config says seed 1, so it is named as such
    os.rename(first, out / "aside")
    os.rename(second, first)
    with pytest.raises(DawnpipeError, match=f"{first} holds a run trained with other options than this family's"):
        run_pipeline(_cfg(image_folder, out, resume=True), say=lambda _: None)
    # the same run (same config) retrained: its run id and checkpoint differ from the family's record
    os.rename(first, second)
    os.rename(out / "aside", first)
    payload = torch.load(first / "checkpoint.pt", weights_only=True)
    payload["metrics"]["final"]["note"] = "retrained"
    torch.save(payload, first / "checkpoint.pt")
    with pytest.raises(DawnpipeError, match="not the family's recorded run"):
        run_pipeline(_cfg(image_folder, out, resume=True), say=lambda _: None)


def test_sigkill_between_runs_then_resume_from_the_command_line(image_folder, tmp_path):
    args = [sys.executable, "-m", "dawnpipe", "pipeline", "--data", str(image_folder), "--epochs", "2"]
    args += ["--batch-size", "32", "--lr", "2", "--width", "0.125", "--out", str(tmp_path), "--name", "fam"]
    # one backend and one mode: seed 0's eval.json is its last file, so the kill lands as seed 1 starts
    args += ["--device", "cpu", "--seeds", "0,1", "--tta", "none", *_TIMING]
    args += ["--backends", "torch", "--accuracy-threshold", "50"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = tmp_path / "fam-w0.125-s0" / "eval.json"
    deadline = time.monotonic() + 240
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # the machine going away: no handler runs
    process.wait(timeout=30)
    assert first.exists(), process.stderr.read().decode()[-2000:]
    checkpoint = (tmp_path / "fam-w0.125-s0" / "checkpoint.pt").read_bytes()
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "fam-w0.125-s0: training" in resumed.stderr and "Traceback" not in resumed.stderr
    assert (tmp_path / "fam-w0.125-s0" / "checkpoint.pt").read_bytes() == checkpoint
    assert (tmp_path / "fam-report" / "report.md").exists()
    assert not list(tmp_path.rglob("*.tmp"))  # temporaries of the killed writer were removed


def test_resume_with_more_widths_joins_them_and_retrains_nothing_finished(image_folder, finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    # the finished members' training and exports are untouched; their eval.json (and the manifest recording it)
    # gains a new timing session shared with the new widths, so the family's rows pair by round
    timed = ("eval.json", "manifest.json")
    before = {k: v for k, v in _snapshot(out).items() if k.startswith("fam-w0.125") and not k.endswith(timed)}
    rows_before = {m: _rows(out / m) for m in ("fam-w0.125-s0", "fam-w0.125-s1")}
    said: list[str] = []
    result = run_pipeline(_cfg(image_folder, out, resume=True, widths=(0.125, 0.25)), say=said.append)
    assert {p.name for p in result.runs} == {"fam-w0.125-s0", "fam-w0.25-s0", "fam-w0.125-s1", "fam-w0.25-s1"}
    assert {k: v for k, v in _snapshot(out).items() if k in before} == before
    for member, rows in rows_before.items():  # the accuracy rows as they were scored; only the latency is new
        assert _scored(_rows(out / member)) == _scored(rows)
    sessions = {(r["backend"], r["latency"]["batch1"]["session"]) for run in result.runs for r in _rows(run)}
    assert sorted(b for b, _ in sessions) == ["onnxruntime", "torch"]  # one session per backend over the family
    assert any("timed again with the rest" in line for line in said)
    assert sum("finished earlier; reused" in line for line in said) == 2 and sum("starts" in line for line in said) == 2
    recorded = json.loads((out / "fam-report" / "manifest.json").read_text())["runs"]["pipeline"]["config"]
    assert recorded["widths"] == [0.125, 0.25]
    report = json.loads((out / "fam-report" / "report.json").read_text())
    assert {p["width"] for p in report["points"]} == {0.125, 0.25}


def test_an_unnamed_family_says_its_exact_resume_command_and_resume_finds_it(image_folder, tmp_path, monkeypatch):
    args = ["pipeline", "--data", str(image_folder), "--epochs", "2", "--batch-size", "32", "--width", "0.125"]
    args += ["--out", str(tmp_path), "--device", "cpu", "--tta", "none", "--backends", "torch", "--seeds", "0,1"]
    args += _TIMING
    monkeypatch.setattr(trainer_mod, "graceful_interrupt", lambda: contextlib.nullcontext(StopAfter(3)))
    stopped = CliRunner().invoke(main, args)
    (error,) = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]  # one line
    assert stopped.exit_code == 1 and "Traceback" not in stopped.output, stopped.output
    (family,) = [p.name.removesuffix("-report") for p in tmp_path.glob("*-report")]
    command = error[error.index("continue with `") + len("continue with `") : -1]
    assert command.startswith("dawnpipe pipeline --data") and f"--name {family} --resume" in command
    monkeypatch.undo()
    resumed = CliRunner().invoke(main, [*args, "--resume"])  # no --name: the one unfinished family in --out
    assert resumed.exit_code == 0, resumed.output
    assert f"continuing family {family}" in resumed.stderr
    assert (tmp_path / f"{family}-report" / "report.md").exists()
    again = CliRunner().invoke(main, [*args, "--resume"])  # now finished: nothing left to continue
    assert again.exit_code == 1 and "exactly one unfinished family" in again.stderr and "--name NAME" in again.stderr
    import shlex

    words = shlex.split(command)
    assert words[:2] == ["dawnpipe", "pipeline"] and words[-1] == "--resume"
    pairs = lambda w: sorted(zip(w[::2], w[1::2], strict=True))  # noqa: E731 (option, value) pairs, any order
    assert pairs(words[2:-1]) == pairs([*args[1:], "--name", family])  # what was typed, with the generated name


@pytest.mark.parametrize(
    ("widths", "said", "code"),
    [("5", "must lie in (0, 4]", 2), ("0.125,0.1251", "both give channels", 1)],  # 2: click's usage error
)
def test_widths_out_of_range_or_the_same_network_twice_are_refused(image_folder, tmp_path, widths, said, code):
    args = ["pipeline", "--data", str(image_folder), "--out", str(tmp_path), "--widths", widths]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code and said in result.stderr and result.stderr.count("\n") == 1, result.output
    assert not any(tmp_path.iterdir())

"""Honest training clocks, and torch.compile failures (forward or backward) that fall back to the eager step."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch

from dawnpipe.train.api import config_from_options
from dawnpipe.train.checkpoint import load_checkpoint
from dawnpipe.train.finish import carried_clock, wall_over_processes
from dawnpipe.train.trainer import train


def _cfg(image_folder, out, **overrides):
    options = dict(data=image_folder, epochs=3, batch_size=64, lr=2.0, width=0.125, out=out, device="cpu", holdout=0)
    options.update(overrides)
    return config_from_options(**options)


def test_the_first_epoch_is_reported_apart_from_the_steady_state(image_folder, tmp_path):
    result = train(_cfg(image_folder, tmp_path, name="clock"), progress=False)
    epochs = load_checkpoint(result.checkpoint)["metrics"]["epochs"]
    final = result.metrics
    assert final["first_epoch_seconds"] == epochs[0]["train_seconds"]
    assert final["steady_images_per_s"] == statistics.median(e["train_images_per_s"] for e in epochs[1:])
    assert final["steady_epochs"] == 2 and final["compiled"] is None  # not asked to compile
    # a CUDA graph is asked for by default and used only on CUDA: on a CPU the manifest says it did not run
    assert final["step"] == {"cuda_graph": False, "asked": True, "notice": None}


def test_wall_time_adds_every_process_of_a_resumed_run():
    # elapsed_s restarts with each process: 3 earlier processes (ending at 40, 25 and 7 s) and this one (5 s)
    earlier = [{"elapsed_s": 20.0}, {"elapsed_s": 40.0}, {"elapsed_s": 25.0}, {"elapsed_s": 7.0}]
    assert wall_over_processes(earlier, 5.0) == {"wall_seconds_all_processes": 77.0, "processes": 4}
    assert wall_over_processes([], 5.0) == {"wall_seconds_all_processes": 5.0, "processes": 1}
    assert wall_over_processes([{"train_seconds": 1.0}], 5.0)["processes"] == 1  # no clock recorded: nothing added


class _BackwardFails(torch.autograd.Function):
    """The identity forward; a backward that fails as an AOTAutograd backward compile would, at .backward()."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        raise RuntimeError("backward compiler failed (simulated)")


def _fake_compile(fail: str):
    def compile_(module, **_options):
        def run(x):
            if fail == "forward":
                raise RuntimeError("forward compiler failed (simulated)")
            return _BackwardFails.apply(module(x))

        return run

    return compile_


@pytest.mark.parametrize("fail", ["forward", "backward"])
def test_a_compile_failure_falls_back_to_the_eager_step_exactly(image_folder, tmp_path, monkeypatch, capsys, fail):
    eager = train(_cfg(image_folder, tmp_path, name="eager", epochs=1), progress=False)
    monkeypatch.setattr(torch, "compile", _fake_compile(fail))
    fallen = train(_cfg(image_folder, tmp_path, name=fail, epochs=1, compile=True), progress=False)
    err = capsys.readouterr().err
    assert err.count("notice: torch.compile failed") == 1 and f"{fail} compiler failed" in err
    notice = err.split("notice: ")[1].strip()
    cache = fallen.metrics["compiled"].pop("cache")
    assert fallen.metrics["compiled"] == {"ran_compiled": False, "graphs": 0, "notice": notice}
    assert not cache["loaded"] and not cache["saved"]  # nothing compiled: nothing saved for the next run
    a, b = load_checkpoint(eager.checkpoint), load_checkpoint(fallen.checkpoint)
    # the failed compiled forward updated BatchNorm statistics; they were restored, so the runs agree exactly
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.slow
def test_a_compiled_step_that_runs_says_so_and_saves_its_compile_for_the_next_run(image_folder, tmp_path, monkeypatch,
                                                                                   capsys):  # fmt: skip
    from dawnpipe.train.compiled import CompiledOrEager

    monkeypatch.setenv("DAWNPIPE_CACHE", str(tmp_path / "cache"))
    result = train(_cfg(image_folder, tmp_path, name="ok", epochs=1, compile=True), progress=False)
    compiled = result.metrics["compiled"]
    assert compiled["ran_compiled"] and compiled["graphs"] >= 1 and compiled["notice"] is None
    assert compiled["cache"]["saved"] and not compiled["cache"]["loaded"]
    blob = Path(compiled["cache"]["path"])
    assert blob.is_file() and blob.with_suffix(".json").is_file()
    again = train(_cfg(image_folder, tmp_path, name="again", epochs=1, compile=True), progress=False)
    assert again.metrics["compiled"]["cache"]["loaded"] and again.metrics["compiled"]["cache"]["path"] == str(blob)
    blob.write_bytes(blob.read_bytes()[:-1] + b"x")  # damaged (or replaced) since dawnpipe wrote it: not loaded
    late = CompiledOrEager(torch.nn.Linear(2, 2))
    late.load_cache(blob)
    assert not late.cache["loaded"] and "does not match its record" in late.notice


def test_a_step_dynamo_never_compiled_is_not_called_compiled(image_folder, tmp_path, monkeypatch, capsys):
    # "compiles" to itself: every call succeeds, yet no graph was ever compiled (as when dynamo falls back to eager)
    monkeypatch.setattr(torch, "compile", lambda module, **_: module)
    result = train(_cfg(image_folder, tmp_path, name="never", epochs=1, compile=True), progress=False)
    assert result.metrics["compiled"]["ran_compiled"] is False and result.metrics["compiled"]["graphs"] == 0
    assert "ran without compiling any graph" in result.metrics["compiled"]["notice"]
    assert capsys.readouterr().err.count("notice: torch.compile ran without compiling") == 1


def test_a_checkpoint_clock_is_read_and_a_malformed_one_falls_back_to_the_history():
    history = [{"elapsed_s": 40.0}, {"elapsed_s": 7.0}]  # two earlier processes, by the history alone
    assert carried_clock({"clock": {"process_walls": [41.5, 9.0], "partial_epoch_seconds": 3.0}}, history) == (
        [41.5, 9.0],
        3.0,
    )
    assert carried_clock({}, history) == ([40.0, 7.0], 0.0)  # written before the clock existed
    for bad in ({"process_walls": "41"}, {"process_walls": [float("nan")]}, {"process_walls": [-1.0]},
                {"process_walls": [1.0], "partial_epoch_seconds": True}, "not a dict"):  # fmt: skip
        assert carried_clock({"clock": bad}, history) == ([40.0, 7.0], 0.0), bad

"""When the machine fails under a run: a disk that fills up during any write, an output folder that cannot be
written. Every writer's full disk is simulated by a write that stops with ENOSPC part-way (nothing is mounted);
one test fills a real small tmpfs where the machine allows mounting one."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.train import checkpoint as checkpoint_mod
from dawnpipe.train.checkpoint import load_checkpoint
from tests.reliability.helpers import tree_digest

_TRAIN = ["--epochs", "2", "--batch-size", "64", "--lr", "2", "--width", "0.125", "--device", "cpu", "--holdout", "0"]


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _full_when(monkeypatch, name_start: str) -> None:
    """Path.write_text and Path.write_bytes stop part-way with ENOSPC for the temporary of a file whose name starts
    with ``name_start`` (atomic_write's temporaries are ``.<name>.<random>.tmp``)."""
    for method in ("write_text", "write_bytes"):
        real = getattr(Path, method)

        def failing(self, data, *args, _real=real, **kwargs):
            if self.name.startswith(f".{name_start}"):
                _real(self, data[: len(data) // 2], *args, **kwargs)  # half written, then the disk is full
                raise _no_space()
            return _real(self, data, *args, **kwargs)

        monkeypatch.setattr(Path, method, failing)


def _error_line(result) -> str:
    """The one ``error:`` line of a command that failed (progress lines of a training may precede it)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "; " in errors[0]
    return errors[0]


def _no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.rglob("*.tmp")], list(folder.rglob("*.tmp"))


@pytest.fixture(scope="module")
def whole(image_folder, tmp_path_factory) -> Path:
    """The run never interrupted: what a run stopped by a full disk must reach once resumed."""
    out = tmp_path_factory.mktemp("whole")
    done = CliRunner().invoke(main, ["train", "--data", str(image_folder), "--out", str(out), "--name", "w", *_TRAIN])
    assert done.exit_code == 0, done.output
    return out / "w"


def test_a_checkpoint_that_finds_no_room_stops_and_resume_gives_the_same_weights(
    image_folder, tmp_path, monkeypatch, whole
):
    real, calls = torch.save, []

    def fills_at_the_second(obj, target, *args, **kwargs):
        calls.append(target)
        if len(calls) == 2:  # the end of epoch 2: half a file, then no space
            Path(target).write_bytes(b"\0" * 1000)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1000 vs 900")
        return real(obj, target, *args, **kwargs)

    monkeypatch.setattr(checkpoint_mod.torch, "save", fills_at_the_second)
    monkeypatch.setattr("dawnpipe.common.files.free_bytes", lambda folder: 39_000_000)
    monkeypatch.setattr("dawnpipe.common.files._out_of_room", lambda err, folder: True)
    cut = CliRunner().invoke(main, ["train", "--data", str(image_folder), "--out", str(tmp_path), "--name", "cut",
                                    *_TRAIN])  # fmt: skip
    line = _error_line(cut)
    run = tmp_path / "cut"
    assert cut.exit_code == 1 and f"no space left on {run} writing checkpoint.pt (about " in line
    assert "needed, 39 MB free)" in line and f"continue from epoch 1 with `dawnpipe train --resume {run}`" in line
    _no_temporaries(run)
    kept = load_checkpoint(run)
    assert kept["state"]["epoch"] == 1 and not kept["state"]["complete"]  # the previous checkpoint, whole
    monkeypatch.undo()
    resumed = CliRunner().invoke(main, ["train", "--resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    a, b = load_checkpoint(whole), load_checkpoint(run)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # bit for bit
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


def test_an_export_that_finds_no_room_leaves_the_old_file_whole(trained_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = CliRunner().invoke(main, ["export", str(trained_run), "--out", str(out)])
    assert first.exit_code == 0, first.output
    before = tree_digest(out)
    import onnx

    real = onnx.save_model

    def full(model, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 100)
        raise _no_space()

    monkeypatch.setattr(onnx, "save_model", full)
    again = CliRunner().invoke(main, ["export", str(trained_run), "--out", str(out)])
    line = _error_line(again)
    assert again.exit_code == 1 and f"no space left on {out} writing resnet9-ema-none-fp32.onnx (" in line
    assert "free); free space or pass another --out" in line
    monkeypatch.setattr(onnx, "save_model", real)
    _no_temporaries(out)
    assert tree_digest(out) == before


@pytest.mark.parametrize("file", ["eval.json", "manifest.json"])
def test_eval_results_that_find_no_room_are_one_line(trained_run, tmp_path, monkeypatch, file):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = tree_digest(run)
    _full_when(monkeypatch, file)
    result = CliRunner().invoke(main, ["eval", str(run), "--tta", "none", "--no-latency"])
    line = _error_line(result)
    assert result.exit_code == 1 and f"writing {file} (" in line
    _no_temporaries(run)
    if file == "eval.json":
        assert tree_digest(run) == before


def test_a_report_that_finds_no_room_is_one_line(trained_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert CliRunner().invoke(main, ["eval", str(run), "--tta", "none", "--no-latency"]).exit_code == 0
    _full_when(monkeypatch, "report.md")
    result = CliRunner().invoke(main, ["costs", str(run), "--out", str(tmp_path / "report")])
    assert result.exit_code == 1 and "writing report.md (" in _error_line(result)
    _no_temporaries(tmp_path / "report")


def test_a_triton_repository_that_finds_no_room_is_one_line(trained_run, tmp_path, monkeypatch):
    real = shutil.copyfile

    def full(source, target, *args, **kwargs):
        if "model.onnx" in str(target) or str(target).endswith(".tmp"):
            raise _no_space()
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", full)
    result = CliRunner().invoke(main, ["export", str(trained_run), "--out", str(tmp_path / "o"), "--triton",
                                       str(tmp_path / "triton")])  # fmt: skip
    assert result.exit_code == 1 and "no space left on" in _error_line(result)
    _no_temporaries(tmp_path / "triton")


def test_a_data_cache_that_finds_no_room_is_said_and_training_goes_on(image_folder, tmp_path, monkeypatch):
    from dawnpipe.train import data as data_mod

    monkeypatch.setenv("DAWNPIPE_CACHE", str(tmp_path / "cache"))

    def full(handle, **arrays):
        handle.write(b"\0" * 100)
        raise _no_space()

    monkeypatch.setattr(data_mod.np, "savez", full)
    result = CliRunner().invoke(main, ["train", "--data", str(image_folder), "--out", str(tmp_path), *_TRAIN,
                                       "--epochs", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "notice: the decoded data was not cached: no space left on" in result.stderr
    assert not list((tmp_path / "cache").glob("*.npz")) and not list((tmp_path / "cache").glob(".*"))


def test_outputs_are_checked_for_room_before_any_work(image_folder, trained_run, tmp_path, monkeypatch):
    monkeypatch.setattr("dawnpipe.common.files.free_bytes", lambda folder: 10_000)
    result = CliRunner().invoke(main, ["train", "--data", str(image_folder), "--out", str(tmp_path), "--name", "x",
                                       *_TRAIN])  # fmt: skip
    line = _error_line(result)
    assert (
        result.exit_code == 1 and "no room on" in line and "for checkpoint.pt (about" in line and "10 kB free" in line
    )
    assert not (tmp_path / "x" / "checkpoint.pt").exists()
    export = CliRunner().invoke(main, ["export", str(trained_run), "--out", str(tmp_path / "e")])
    assert export.exit_code == 1 and "for resnet9-ema-none-fp32.onnx" in _error_line(export)
    assert not list((tmp_path / "e").glob("*.onnx"))


def _mount_tmpfs(where: Path, size: str, options: str = "") -> bool:
    where.mkdir(parents=True, exist_ok=True)
    args = ["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(where)]
    try:
        return subprocess.run(args, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_eval_into_a_read_only_folder_refuses_before_timing_anything(trained_run, tmp_path):
    ro = tmp_path / "ro"
    if not _mount_tmpfs(ro, "1m", ",ro"):
        pytest.skip("this machine does not let the tests mount a read-only tmpfs (needs root)")
    try:
        result = CliRunner().invoke(main, ["eval", str(trained_run), "--tta", "none", "--out", str(ro)])
        line = _error_line(result)
        assert result.exit_code == 1 and f"--out {ro} cannot be written ({ro} is read-only)" in line
        assert "latency" not in result.output and "accuracy of" not in result.stderr  # nothing was evaluated
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_a_real_tmpfs_that_fills_at_the_second_checkpoint(image_folder, tmp_path, monkeypatch, whole):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "6m"):
        pytest.skip("this machine does not let the tests mount a tmpfs (needs root)")
    try:
        from dawnpipe.train import trainer as trainer_mod

        real, saved = trainer_mod._save_or_say_how_to_resume, []

        def then_fill(saver, run_dir, epoch):  # another process fills the disk after the first checkpoint
            real(saver, run_dir, epoch)
            saved.append(epoch)
            if len(saved) == 1:
                free = shutil.disk_usage(disk).free
                (disk / "filler").write_bytes(b"\0" * (free - 64_000))

        monkeypatch.setattr(trainer_mod, "_save_or_say_how_to_resume", then_fill)
        cut = CliRunner().invoke(main, ["train", "--data", str(image_folder), "--out", str(disk), "--name", "r",
                                        *_TRAIN])  # fmt: skip
        line = _error_line(cut)
        assert f"no space left on {disk / 'r'} writing checkpoint.pt" in line
        _no_temporaries(disk)
        assert load_checkpoint(disk / "r")["state"]["epoch"] == 1
        (disk / "filler").unlink()  # space freed
        monkeypatch.undo()
        resumed = CliRunner().invoke(main, ["train", "--resume", str(disk / "r")])
        assert resumed.exit_code == 0, resumed.output
        a, b = load_checkpoint(whole), load_checkpoint(disk / "r")
        assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
        assert json.loads((disk / "r" / "manifest.json").read_text())["runs"]["train"]["metrics"]["processes"] == 2
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_no_space_names_sizes_readably():
    from dawnpipe.common.files import human_bytes

    assert [human_bytes(n) for n in (26_400_000, 3_900_000, 512, 1_230_000_000)] == ["26 MB", "3.9 MB", "512 bytes",
                                                                                    "1.2 GB"]  # fmt: skip

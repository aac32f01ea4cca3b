"""Run folders: never overwritten unless asked, one writer at a time, names inside --out, stale temporaries
cleaned, and SIGTERM kept like Ctrl-C."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.run_folder import RunFolder, check_run_name
from dawnpipe.train.checkpoint import load_checkpoint
from tests.reliability.helpers import refused, run_cli


def _train_args(data: Path, out: Path, name: str, epochs: int = 1) -> list[str]:
    return [
        "train", "--data", str(data), "--epochs", str(epochs), "--batch-size", "32", "--width", "0.125",
        "--test-limit", "16", "--device", "cpu", "--out", str(out), "--name", name,
    ]  # fmt: skip


@pytest.fixture
def finished(tmp_path, trained_run) -> Path:
    """A private copy of the shared finished run, so a test may try to damage it."""
    return Path(shutil.copytree(trained_run, tmp_path / "runs" / "tiny"))


def test_training_into_a_finished_run_is_refused_and_changes_nothing(finished, image_folder):
    line = refused(_train_args(image_folder, finished.parent, "tiny"), protect=(finished,))
    assert "finished run" in line and "--overwrite" in line


def test_overwrite_replaces_the_run_and_every_file_made_from_it(finished, image_folder):
    (finished / "eval.json").write_text("{}")
    old_id = load_checkpoint(finished)["run_id"]
    result = CliRunner().invoke(main, [*_train_args(image_folder, finished.parent, "tiny"), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(finished)["run_id"] != old_id and not (finished / "eval.json").exists()


def test_an_interrupted_run_points_at_resume(tmp_path, finished, image_folder):
    (finished / "manifest.json").unlink()  # what a run killed before its end leaves: a checkpoint, no manifest
    line = refused(_train_args(image_folder, finished.parent, "tiny"), protect=(finished,))
    assert "interrupted run" in line and "--resume" in line


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", ".hidden", "..", ""])
def test_names_stay_inside_out(tmp_path, image_folder, name):
    out = tmp_path / "runs"
    refused(_train_args(image_folder, out, name), expect=("plain folder name",))
    assert not (tmp_path / "escape").exists() and not any(tmp_path.rglob("checkpoint.pt"))


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path, image_folder):
    folder = tmp_path / "runs" / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom dawnpipe.common.run_folder import RunFolder\n"
         f"with RunFolder({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        line = refused(_train_args(image_folder, folder.parent, "busy"))
        assert f"pid {holder.pid}" in line and "another dawnpipe process" in line
    finally:
        holder.kill()
        holder.wait()
    assert not (folder / "checkpoint.pt").exists()
    with RunFolder(folder):  # the kernel released the dead holder's lock
        pass


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    stale = folder / ".checkpoint.pt.k3j4_9zq.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = folder / "notes.tmp"
    keep.write_text("a user's file")
    with RunFolder(folder) as held:
        assert held.removed_temporaries == [stale.name]
    assert not stale.exists() and keep.exists()


def test_run_name_check():
    assert check_run_name("w0.5-s1") == "w0.5-s1"
    for bad in ("..", "a/b", "-x", "x" * 200):
        with pytest.raises(DawnpipeError):
            check_run_name(bad)


def test_pipeline_checks_every_run_folder_before_training(finished, image_folder):
    # the second run of the family clashes with the finished copy: refused before the first one trains
    args = ["pipeline", "--data", str(image_folder), "--epochs", "1", "--batch-size", "32", "--width", "0.125",
            "--device", "cpu", "--out", str(finished.parent), "--name", "tiny", "--seeds", "0,1"]  # fmt: skip
    shutil.move(finished, finished.parent / "tiny-w0.125-s1")
    line = refused(args, protect=(finished.parent,))
    assert "tiny-w0.125-s1" in line and "nothing was trained" in line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_epoch_keeps_the_exact_step_and_resume_finishes(tmp_path, image_folder, sig):
    epochs = 4  # the signal lands early in epoch 2: two more epochs (seconds) of margin before the run would end
    args = _train_args(image_folder, tmp_path, "sig", epochs=epochs)
    process = subprocess.Popen(
        [sys.executable, "-m", "dawnpipe", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    checkpoint = tmp_path / "sig" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(0.15)  # into the next epoch
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1, err[-2000:]
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "Traceback" not in err
    found = re.search(r"(interrupted|terminated \(SIGTERM\)) in epoch (\d+) after step (\d+)", line[0])
    assert found and (found.group(1) != "interrupted") == (sig == signal.SIGTERM), line[0]
    state = load_checkpoint(checkpoint)["state"]
    assert not state["complete"]
    assert (state["epoch"] + 1, state["step_in_epoch"]) == (int(found.group(2)), int(found.group(3)))
    resumed = run_cli(["train", "--resume", str(tmp_path / "sig"), "--device", "cpu"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = load_checkpoint(checkpoint)
    assert final["state"]["complete"] and len(final["metrics"]["epochs"]) == epochs

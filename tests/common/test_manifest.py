"""The manifest's versions name the code that ran: dawnpipe's commit where it runs from a git checkout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dawnpipe.common import manifest


def test_versions_name_the_checkout_commit_or_leave_it_out():
    root = Path(manifest.__file__).resolve().parents[1]
    found = manifest.versions()
    assert found["torch"] and found["python"]
    if not (root / ".git").exists() or shutil.which("git") is None:
        assert "dawnpipe_commit" not in found  # an installed copy: nothing to name
        return
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert found["dawnpipe_commit"].split("+")[0] == head
    assert found["dawnpipe_commit"] in (head, head + "+dirty")


def test_a_missing_git_leaves_the_commit_out(monkeypatch):
    manifest.source_commit.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")  # no git to ask
    try:
        assert manifest.source_commit() is None
        assert "dawnpipe_commit" not in manifest.versions()
    finally:
        manifest.source_commit.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_cache():
    manifest.source_commit.cache_clear()
    yield
    manifest.source_commit.cache_clear()


def test_training_asks_for_the_commit_before_its_first_epoch(image_folder, tmp_path, monkeypatch):
    """A commit made while a run trains must not be recorded as the code that ran: the commit is asked (and kept for
    the process) before the first epoch starts."""
    from dawnpipe.train import trainer
    from dawnpipe.train.api import config_from_options

    asked_before_epoch: list[int] = []
    real_epoch = trainer.train_one_epoch

    def spy(*args, **kwargs):
        asked_before_epoch.append(manifest.source_commit.cache_info().currsize)
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", spy)
    cfg = config_from_options(data=image_folder, epochs=1, batch_size=64, width=0.125, out=tmp_path, holdout=0,
                              device="cpu", name="commit", train_limit=128, test_limit=64)  # fmt: skip
    trainer.train(cfg, progress=False)
    assert asked_before_epoch == [1]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dirty_means_the_code_differs_not_the_results_written_into_the_checkout(tmp_path):
    """A report rebuilt into a checkout's docs/results is data: only a changed tracked .py file or pyproject.toml
    marks the commit +dirty."""

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "code.py").write_text("x = 1\n")
    (tmp_path / "report.json").write_text("{}")
    git("add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert manifest.commit_of(tmp_path) == head.strip()
    (tmp_path / "report.json").write_text('{"rebuilt": true}')
    assert manifest.commit_of(tmp_path) == head.strip()  # results changed: still the code of that commit
    (tmp_path / "pkg" / "code.py").write_text("x = 2\n")
    assert manifest.commit_of(tmp_path) == head.strip() + "+dirty"
    (tmp_path / "pkg" / "code.py").write_text("x = 1\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'changed'\n")
    assert manifest.commit_of(tmp_path) == head.strip() + "+dirty"
    assert manifest.commit_of(tmp_path / "pkg") is None  # not a checkout's root

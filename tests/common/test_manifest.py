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

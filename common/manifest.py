"""The run folder's ``manifest.json``: what was run, on what, and every artifact with its lineage.

Layout::

    {"format": "dawnpipe-manifest", "version": 1,
     "runs": {"train": {...config, versions, device, data...}, "export": {...}, ...},
     "artifacts": {"checkpoint": {"path": "checkpoint.pt", "sha256": ..., "made_from": {...},
                                  "input_contract": {...}, "metrics": {...}}, ...}}

Deployment reads contracts from here (or from the artifact's own metadata), never from constants in code.
Each stage merges its own section so later stages keep what earlier ones wrote.
"""

from __future__ import annotations

import functools
import json
import platform
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import atomic_write_json, folder_lock, sha256_file

MANIFEST_NAME = "manifest.json"
_FORMAT = "dawnpipe-manifest"


def versions() -> dict[str, str]:
    """Versions of the parts that decide whether an artifact can be reproduced or loaded, dawnpipe's own commit
    among them where it runs from a git checkout (so two runs of different code say so)."""
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for name in ("dawnpipe", "torch", "numpy", "onnx", "onnxruntime", "tensorrt", "click"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    commit = source_commit()
    if commit is not None:
        found["dawnpipe_commit"] = commit
    return found


@functools.cache
def source_commit() -> str | None:
    """The git commit of the checkout this dawnpipe runs from, with ``+dirty`` when its tracked code differs from
    it; None outside a checkout or without git. Asked once per process (5 s at most each) and kept: training asks at
    its start, so a commit made while it runs is not recorded as the code that ran."""
    return commit_of(Path(__file__).resolve().parents[1])


_CODE = ("*.py", "pyproject.toml")  # what "the code that ran" is: results and docs written into a checkout are not


def commit_of(root: Path) -> str | None:
    """The commit checked out at ``root``, ``+dirty`` when a tracked code file (_CODE) differs from it: a report
    rebuilt into the checkout's own docs/results is data, not a change to the code that built it."""
    import subprocess

    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", *_CODE],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The manifest of ``run_dir``, or an empty one if there is none yet."""
    path = Path(run_dir) / MANIFEST_NAME
    if not path.exists():
        return {"format": _FORMAT, "version": 1, "runs": {}, "artifacts": {}}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DawnpipeError(f"{path} is not valid JSON", "delete it and rerun the stage that writes it") from None
    if data.get("format") != _FORMAT:
        raise DawnpipeError(f"{path} is not a dawnpipe manifest", "point at a run folder made by dawnpipe")
    return data


def artifact_entry(
    run_dir: str | Path,
    path: str | Path,
    *,
    made_from: dict[str, Any] | None = None,
    input_contract: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Describe one file of the run: its path relative to the run folder, sha256 and lineage."""
    path = Path(path)
    try:
        rel = str(path.resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        rel = str(path.resolve())
    entry: dict[str, Any] = {"path": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    entry["made_from"] = made_from or {}
    entry["input_contract"] = input_contract or {}
    entry["metrics"] = metrics or {}
    entry.update(extra)
    return entry


def update_manifest(
    run_dir: str | Path,
    *,
    run: tuple[str, dict[str, Any]] | None = None,
    artifacts: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Merge one stage's run record and artifacts into the manifest, written atomically under the folder's lock
    (a read-modify-write: two processes updating at once would otherwise lose one update)."""
    with folder_lock(run_dir, wait=30.0):
        data = read_manifest(run_dir)
        if run is not None:
            name, record = run
            data["runs"][name] = {**record, "versions": versions()}
        for name, entry in (artifacts or {}).items():
            data["artifacts"][name] = entry
        return atomic_write_json(Path(run_dir) / MANIFEST_NAME, data)

"""Lineage checks: an artifact read from a folder with a manifest must be the file that manifest recorded.

A manifest lists each artifact it made with its sha256 (and the run id it came from). A file swapped in from
another run, or dropped into the folder afterwards, would otherwise be exported, evaluated or reported as if it
belonged to this run. An artifact with no manifest beside it (a copy deployed on its own) is accepted on its
own description: its metadata still names its run and data.
"""

from __future__ import annotations

from pathlib import Path

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import sha256_file
from dawnpipe.common.manifest import MANIFEST_NAME, read_manifest

_OVERRIDE = "pass --allow-foreign to use it anyway (the result is marked as unchecked)"


def check_lineage(
    path: str | Path, run_id: str | None, *, allow_foreign: bool = False, sha256: str | None = None
) -> str:
    """``"manifest"`` when the folder's manifest lists this exact file (sha256 and run id agree),
    ``"self-described"`` when no manifest is beside it, ``"override"`` when a mismatch was allowed;
    otherwise a one-line error naming both files. ``sha256``: the file's hash, if the caller has it already."""
    path = Path(path)
    manifest_path = path.parent / MANIFEST_NAME
    if not manifest_path.is_file():
        return "self-described"
    entries = read_manifest(path.parent).get("artifacts", {})
    target = path.resolve()
    entry = next(
        (
            e
            for e in entries.values()
            if isinstance(e, dict) and (path.parent / str(e.get("path", ""))).resolve() == target
        ),
        None,
    )
    problem = None
    if entry is None:
        problem = f"{path} is not listed in {manifest_path}; it was not made by this run"
    elif entry.get("sha256") != (sha256 or sha256_file(path)):
        problem = f"{path} is not the file {manifest_path} recorded (sha256 differs); it was replaced afterwards"
    elif run_id and entry.get("run_id") and entry["run_id"] != run_id:
        problem = f"{path} says it comes from run {run_id}, but {manifest_path} records run {entry['run_id']}"
    if problem is None:
        return "manifest"
    if allow_foreign:
        return "override"
    raise DawnpipeError(problem, f"use the artifacts this run wrote, or {_OVERRIDE}")


def check_complete(path: str | Path, complete: bool, *, allow_incomplete: bool = False) -> None:
    """Refuse a model from a training run that never finished, unless asked for explicitly."""
    if not complete and not allow_incomplete:
        raise DawnpipeError(
            f"{path} comes from a training run that was interrupted before its last epoch",
            "finish it with `dawnpipe train --resume RUN`, or pass --allow-incomplete (the artifact is marked as such)",
        )

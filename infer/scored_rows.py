"""Accuracy rows scored earlier, reused by a latency-only evaluation (``dawnpipe eval --latency-only``).

A family's accuracy is scored member by member as each finishes training; its latency is timed at the end, every
member of one backend in one session, so rows of different widths pair by round. Scoring every view of all test
images again only to time them would cost hours on a CPU, so a latency-only evaluation takes each row's accuracy from
the eval.json the earlier evaluation wrote, after checking that the row measured exactly what would be timed now:
the same artifact (sha256), backend, provider, precision and mode, the same test images, the same selective
threshold and translate shift, and the same kind of CPU (int8 kernels differ between instruction sets). Anything
else is refused in one line naming the evaluation to run first.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.tta import DEFAULT_SHIFT, parse_mode
from dawnpipe.infer.eval_file import EVAL_NAME, read_eval
from dawnpipe.infer.modes import resolve_threshold

__all__ = ["scored_rows"]

_SAME = ("artifact_sha256", "backend", "provider", "precision")  # with the mode: the row's key in eval.json


def scored_rows(
    out_dir: Path, backend: Any, modes: list[str], test_images_sha256: str, threshold: float | None, shift: int
) -> list[dict[str, Any]]:
    """Copies of the rows of ``backend``'s artifact for ``modes`` from ``out_dir``'s eval.json, each checked to have
    been scored on the same test images, threshold, shift and CPU as the session about to time it. ``threshold`` is
    the command line's override (None: the artifact's own)."""
    path = out_dir / EVAL_NAME
    again = f"evaluate {backend.path.name} on {backend.name} without --latency-only first (it scores the accuracy)"
    if not path.is_file():
        raise DawnpipeError(f"--latency-only: {path} does not exist, so there is no accuracy to time", again)
    now = {**backend.describe(), "artifact_sha256": backend.sha256}
    rows = read_eval(path)["rows"]
    out = []
    for mode in modes:
        found = [r for r in rows if r.get("tta") == mode and all(r.get(k) == now.get(k) for k in _SAME)]
        if not found:
            raise DawnpipeError(
                f"--latency-only: {path} holds no {mode} row of {backend.path.name} ({now.get('precision')}) on "
                f"{backend.name}",
                again,
            )
        row = copy.deepcopy(found[-1])
        problem = _differs(row, now, mode, backend, test_images_sha256, threshold, shift)
        if problem:
            raise DawnpipeError(f"--latency-only: the {mode} row of {backend.path.name} in {path} {problem}", again)
        row.pop("latency", None)
        out.append(row)
    return out


def _differs(
    row: dict[str, Any],
    now: dict[str, Any],
    mode: str,
    backend: Any,
    test_images_sha256: str,
    threshold: float | None,
    shift: int,
) -> str | None:
    """Why ``row`` did not measure what this session would time, or None."""
    if row.get("test_images_sha256") != test_images_sha256:
        return "was scored on other test images"
    if row.get("shift", DEFAULT_SHIFT) != shift:  # rows before the field was recorded were all scored at the default
        return f"was scored with a {row.get('shift')}-pixel translate, not {shift}"
    before, here = row.get("cpu") or {}, now.get("cpu") or {}
    if (before.get("model"), before.get("flags")) != (here.get("model"), here.get("flags")):
        return f"was scored on another CPU ({before.get('model')}), whose kernels may round differently"
    if parse_mode(mode)[1]:
        wanted, _ = resolve_threshold(backend, threshold, mode)
        had = (row.get("selective") or {}).get("threshold")
        if had != wanted:
            return f"was scored with selective threshold {had}, not {wanted}"
    return None

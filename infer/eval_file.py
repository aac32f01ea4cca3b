"""eval.json: the rows an evaluation writes beside its artifact, read back checked, merged with the rows other
backends (or other runs of eval) wrote there, and recorded in the folder's manifest.

One file per folder, keyed by (artifact sha256, backend, provider, precision, TTA mode): evaluating again replaces
exactly the rows it measures and keeps the rest. A file that cannot be read is never silently replaced (its rows
would be lost): eval refuses it before any work."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import atomic_write_json
from dawnpipe.common.manifest import MANIFEST_NAME, artifact_entry, read_manifest, update_manifest
from dawnpipe.common.run_folder import RunFolder

EVAL_NAME = "eval.json"
EVAL_FORMAT = "dawnpipe-eval/2"


def read_eval(path: Path) -> dict[str, Any]:
    """An eval.json, checked against the fields the costs stage relies on; one-line errors name the problem."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise DawnpipeError(f"{path} is not readable JSON ({type(err).__name__})", "rerun `dawnpipe eval`") from None
    if not isinstance(data, dict) or data.get("format") != EVAL_FORMAT:
        raise DawnpipeError(
            f"{path} is not a {EVAL_FORMAT} file (format {data.get('format') if isinstance(data, dict) else None!r})",
            "rerun `dawnpipe eval` with this version",
        )
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise DawnpipeError(f"{path} holds no eval rows", "rerun `dawnpipe eval`")
    skipped = data.setdefault("skipped", [])
    if not isinstance(skipped, list) or not all(
        isinstance(s, dict) and isinstance(s.get("backend"), str) and isinstance(s.get("reason"), str) for s in skipped
    ):
        raise DawnpipeError(f"{path}: 'skipped' is not a list of backend/reason entries", "rerun `dawnpipe eval`")
    numbers = ("accuracy", "views_per_image", "gflops_per_image")
    for i, row in enumerate(rows):
        bad = [k for k in numbers if not isinstance(row.get(k), int | float) or not math.isfinite(row[k])]
        bad += [k for k in ("tta", "backend", "precision", "correct_bits") if not isinstance(row.get(k), str)]
        bad += [k for k in ("images", "correct") if not isinstance(row.get(k), int) or row[k] < 0]
        latency = (row.get("latency") or {}).get("batch1") or {}
        bad += [k for k, v in latency.items() if k.endswith("_ms") and isinstance(v, int | float) and v < 0]
        if not bad and not 0.0 <= row["accuracy"] <= 1.0:
            bad.append("accuracy")
        if bad:
            raise DawnpipeError(f"{path}: row {i} has missing or invalid {sorted(set(bad))}", "rerun `dawnpipe eval`")
    return data


def check_mergeable(out_dir: Path) -> None:
    """Rows merge into the folder's eval.json, so one that cannot be read (damaged, or an older format) would lose
    its rows: refused before any work, naming the way out."""
    path = out_dir / EVAL_NAME
    if path.exists():
        try:
            read_eval(path)
        except DawnpipeError as err:
            raise DawnpipeError(
                f"{err.problem}; this evaluation's rows would be merged into it and its own rows lost",
                f"move it aside (mv {path} {path}.old) or pass --out to another folder",
            ) from None


def write_rows(
    rows: list[dict[str, Any]], out_dir: Path, artifact: Path, config: dict[str, Any], skipped: tuple = ()
) -> Path:
    """Merge ``rows`` (of ``artifact``, evaluated under ``config``) into ``out_dir``'s eval.json, with the
    (backend, reason) pairs ``skipped``, and record the file in the folder's manifest; returns its path."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DawnpipeError(f"--out {out_dir} is a file, not a folder", "pass a folder for eval.json")
    with RunFolder(out_dir, wait=30.0):  # eval.json is merged (read-modify-write): one writer at a time
        path = out_dir / EVAL_NAME
        existing, existing_skipped = _existing(path)
        fresh = {_key(r) for r in rows}
        merged = [r for r in existing if _key(r) not in fresh] + rows
        ran = {r.get("backend") for r in merged}
        kept = {s["backend"]: s for s in existing_skipped if s.get("backend") not in ran}
        kept.update({name: {"backend": name, "reason": why} for name, why in skipped if name not in ran})
        atomic_write_json(path, {"format": EVAL_FORMAT, "rows": merged, "skipped": list(kept.values())})
        if (out_dir / MANIFEST_NAME).exists():
            entry = artifact_entry(
                out_dir,
                path,
                kind="eval",
                made_from={"artifact": str(artifact), "sha256": rows[0].get("artifact_sha256")},
                metrics={f"{r['backend']}:{r['precision']}:{r['tta']}": r["accuracy"] for r in merged},
            )
            update_manifest(out_dir, run=("eval", _run_record(out_dir, rows, config)), artifacts={EVAL_NAME: entry})
    return path


def _run_record(out_dir: Path, rows: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """The manifest's eval record: the latest evaluation's config, and every evaluation's config kept under the
    artifact, backend and precision whose rows it wrote (eval.json holds rows of several evaluations, so one config
    alone would misdescribe the rows the others wrote)."""
    earlier = read_manifest(out_dir).get("runs", {}).get("eval", {}).get("configs")
    configs = dict(earlier) if isinstance(earlier, dict) else {}
    first = rows[0]
    configs[f"{Path(str(first.get('artifact'))).name}:{first.get('backend')}:{first.get('precision')}"] = config
    return {"config": config, "configs": configs}


def _key(row: dict[str, Any]) -> tuple:
    """What one row measured: a later evaluation of the same replaces it."""
    return tuple(row.get(k) for k in ("artifact_sha256", "backend", "provider", "precision", "tta"))


def _existing(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows and skipped entries already in ``path``; one damaged since check_mergeable passed is kept aside
    whole (eval.json.unreadable-<time>), never dropped."""
    if not path.exists():
        return [], []
    try:
        previous = read_eval(path)
    except DawnpipeError:
        path.replace(path.with_name(f"{EVAL_NAME}.unreadable-{int(time.time())}"))
        return [], []
    return previous["rows"], previous.get("skipped", [])

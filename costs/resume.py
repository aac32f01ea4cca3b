"""What a pipeline may reuse when it continues (``pipeline --resume``), each piece checked before it is trusted.

The family's own manifest (in its report folder) records the options that define it and, as each training
finishes, that run's id and checkpoint sha256. ``--resume`` with other options is refused naming the difference;
a run folder the record does not know, or that holds another run than the recorded one, is refused; a finished
training is reused only if its config is the family's and its checkpoint is the one its manifest recorded; an
export only if its manifest entry, its file's sha256 and its source checkpoint's sha256 all agree; an evaluation
only if the eval.json the manifest recorded holds a row for every mode of that artifact and backend. Anything
else is redone, and nothing finished is overwritten.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import sha256_file
from dawnpipe.common.manifest import MANIFEST_NAME, read_manifest

RECORD_KEY = "pipeline"  # the family manifest's runs.<key>
# TrainConfig fields that may differ between a family's runs, or between a run and its record, without the runs
# differing: where it is written, how it was resumed, how often progress was shown, the device name asked for
_NOT_RECIPE = ("name", "out", "resume", "overwrite", "device", "eval_every", "seed")
_BEFORE_RECORDED = {"latency_calls": 20, "throughput_batch": 256}  # what families timed with before the options
_GROWS = ("widths", "seeds")  # a resumed family may add widths and seeds (joined), never drop one


def family_record(cfg: Any, targets: list[str]) -> dict[str, Any]:
    """The options that define a family: everything but where it is written and whether it is resumed."""
    from dawnpipe.export.config import Int8Spec

    train = {k: v for k, v in cfg.train.to_dict().items() if k not in _NOT_RECIPE}
    if train.get("precision") == "auto":  # recorded only when chosen, so families from before the option resume
        del train["precision"]
    train["model"] = {k: v for k, v in train["model"].items() if k != "width"}
    report = {k: v for k, v in asdict(cfg.report).items() if k not in ("runs", "out", "plots")}
    record = {
        "recipe": train,
        "widths": list(cfg.widths),
        "seeds": list(cfg.seeds),
        "tta": list(cfg.tta),
        "latency_rounds": cfg.latency_rounds,
        "latency_calls": cfg.latency_calls,
        "throughput_batch": cfg.throughput_batch,
        "rules": report,
        "backends": targets,
    }
    # the int8 range method is recorded only when it is not the default, so families recorded before the option
    # existed still resume with the same options
    if cfg.calibration_method != Int8Spec.calibration_method:
        record["calibration_method"] = cfg.calibration_method
    return json.loads(json.dumps(record))  # as the manifest will hold it: tuples become lists


def differences(recorded: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: recorded -> wanted`` for every leaf that differs (nested dicts walked)."""
    out = []
    for key in sorted(set(recorded) | set(wanted)):
        a, b = recorded.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {b!r} (family: {a!r})")
    return out


def check_family(family_dir: Path, record: dict[str, Any], resume: bool) -> dict[str, Any]:
    """The family's recorded members ({run name: {run_id, checkpoint_sha256}}); refuses a mismatch, in one line.

    A new pipeline refuses a folder that already records a family (continue it with --resume); --resume refuses
    options that differ from the recorded ones, naming each.
    """
    recorded = _recorded(family_dir)
    if recorded is None:
        return {}
    if not resume:
        raise DawnpipeError(
            f"{family_dir} already records a pipeline family; nothing was trained",
            "continue it with the same options and --resume, or pick another --name",
        )
    config = dict(recorded.get("config", {}))
    for key, value in _BEFORE_RECORDED.items():  # families recorded before these were pipeline options
        config.setdefault(key, value)
    for key in _GROWS:  # joined, not differences: a family grows by new widths or seeds, finished members kept
        dropped = [v for v in config.pop(key, []) if v not in record[key]]
        if dropped:
            raise DawnpipeError(
                f"--resume was given {key} {record[key]} without the family's {dropped} (in {family_dir}); a resumed "
                "family may add widths and seeds but never drop finished ones",
                f"resume with every recorded {key[:-1]} plus any new ones, or start a new family under another --name",
            )
    diff = differences(config, {k: v for k, v in record.items() if k not in _GROWS})
    if diff:
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise DawnpipeError(
            f"--resume was given other options than the family in {family_dir} was started with: {shown}",
            "resume with the family's options, or start a new family under another --name",
        )
    return dict(recorded.get("members", {}))


def unfinished_families(out: Path) -> list[str]:
    """Names of the families in ``out`` that record a pipeline and have not written their report yet."""
    found = []
    for manifest in sorted(out.glob(f"*/{MANIFEST_NAME}")) if out.is_dir() else []:
        try:
            runs = read_manifest(manifest.parent).get("runs", {})
        except DawnpipeError:
            continue
        if RECORD_KEY in runs and "costs" not in runs:
            found.append(manifest.parent.name.removesuffix("-report"))
    return found


def _recorded(family_dir: Path) -> dict[str, Any] | None:
    if not (family_dir / MANIFEST_NAME).is_file():
        return None
    record = read_manifest(family_dir).get("runs", {}).get(RECORD_KEY)
    return record if isinstance(record, dict) else None


def check_strays(out: Path, base: str, names: set[str]) -> None:
    """A folder named like one of this family's runs (``<base>-w<width>-s<seed>``) that the family does not
    include would be silently left out of the report: refuse it, naming it."""
    pattern = re.compile(rf"^{re.escape(base)}-w[0-9.]+-s[0-9]+$")
    strays = sorted(p.name for p in out.glob(f"{base}-w*-s*") if p.is_dir() and pattern.match(p.name))
    strays = [name for name in strays if name not in names]
    if strays:
        raise DawnpipeError(
            f"{out} holds run folder(s) {', '.join(strays)} of family {base} that this family's widths and seeds "
            "do not include; nothing was trained",
            "move them away, or give the --widths/--seeds they were trained with",
        )


def training_state(run_dir: Path, expected: dict[str, Any], member: dict[str, Any] | None) -> str:
    """``new``, ``interrupted`` or ``finished`` for a family member's folder; refuses a folder holding another
    recipe, width or seed (naming the difference) or another run than the family recorded."""
    from dawnpipe.common.run_folder import RunFolder
    from dawnpipe.train.checkpoint import load_checkpoint

    if not run_dir.is_dir():
        return "new"
    state = RunFolder(run_dir).state()
    if state == "empty":
        return "new"
    if state == "finished":
        train = read_manifest(run_dir).get("runs", {}).get("train") or {}
        config, run_id = train.get("config", {}), train.get("run_id")
    else:
        payload = load_checkpoint(run_dir / "checkpoint.pt")
        config, run_id = payload.get("train_config", {}), payload.get("run_id")
    mine = {k: v for k, v in config.items() if k not in _NOT_RECIPE or k == "seed"}
    want = {k: v for k, v in expected.items() if k not in _NOT_RECIPE or k == "seed"}
    diff = differences(want, mine)
    if diff:
        raise DawnpipeError(
            f"{run_dir} holds a run trained with other options than this family's: {'; '.join(diff[:3])}",
            "move it away, or resume with the options it was trained with",
        )
    if member and state == "finished":
        recorded = member.get("checkpoint_sha256")
        actual = sha256_file(run_dir / "checkpoint.pt")
        if member.get("run_id") != run_id or recorded != actual:
            raise DawnpipeError(
                f"{run_dir} holds run {run_id} (checkpoint sha256 {actual[:12]}), not the family's recorded run "
                f"{member.get('run_id')} ({str(recorded)[:12]})",
                "put the recorded run back, or start a new family",
            )
    return state


def reusable_export(run_dir: Path, filename: str, source_sha256: str) -> dict[str, Any] | None:
    """The manifest entry of an export that may be reused, or None: listed, its file's sha256 the recorded one,
    made from this checkpoint."""
    entry = read_manifest(run_dir).get("artifacts", {}).get(filename)
    path = run_dir / filename
    if not isinstance(entry, dict) or not path.is_file():
        return None
    if entry.get("made_from", {}).get("sha256") != source_sha256 or entry.get("sha256") != sha256_file(path):
        return None
    return entry


def evaluated(run_dir: Path, artifact_sha256: str, backend: str, modes: list[str]) -> bool:
    """True when the run's recorded eval.json holds a row for every mode of this artifact on this backend."""
    rows = _recorded_rows(run_dir)
    done = {r["tta"] for r in rows if r.get("artifact_sha256") == artifact_sha256 and r.get("backend") == backend}
    return set(modes) <= done


def latency_sessions(members: list[tuple[Path, str, str, tuple[str, ...]]]) -> set[str | None]:
    """The timing sessions of every (artifact, sha256, backend, modes) member's rows, None for a row not timed or
    not there: one session id alone means the family's latency session for that backend already ran to the end."""
    sessions: set[str | None] = set()
    for artifact, sha256, backend, modes in members:
        rows = _recorded_rows(artifact if artifact.is_dir() else artifact.parent)
        mine = {r["tta"]: r for r in rows if r.get("artifact_sha256") == sha256 and r.get("backend") == backend}
        for mode in modes:
            row = mine.get(mode) or {}
            sessions.add(((row.get("latency") or {}).get("batch1") or {}).get("session"))
    return sessions


def _recorded_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of the run's eval.json when it is the one its manifest records (sha256), else none."""
    from dawnpipe.infer.eval_file import EVAL_NAME, read_eval

    path = run_dir / EVAL_NAME
    recorded = read_manifest(run_dir).get("artifacts", {}).get(EVAL_NAME, {}).get("sha256")
    if not path.is_file() or recorded != sha256_file(path):
        return []
    return read_eval(path)["rows"]

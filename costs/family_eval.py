"""A family's evaluations: each member is exported and scored as soon as it has trained, and once every member
has, each backend's rows of all members are timed in one latency session (``eval --latency-only`` over the family).
Rows of one session pair by round in the costs stage, so a width-1 flip row and a width-1.25 plain row are compared
with the machine's drift inside the interval, not as two sessions taken hours apart (Welch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import BackendRefused, DawnpipeError
from dawnpipe.infer.evaluate import EvalConfig
from dawnpipe.infer.latency import Protocol

__all__ = ["Scored", "export_and_score", "time_family"]


@dataclass(frozen=True)
class Scored:
    """One member's artifact whose accuracy rows a backend wrote: what the family's latency session times."""

    artifact: Path  # run folder (torch) or ONNX file
    sha256: str  # the artifact's (the checkpoint's for a run folder)
    backend: str  # the rows' backend name ("torch-graphs" for graph-captured torch)
    modes: tuple[str, ...]


def export_and_score(
    cfg: Any, run: Path, targets: list, skipped: list[dict[str, str]], stage, tag: str, result: Any
) -> dict[str, Scored]:
    """The exports the backends need (reused when checked), then each backend's accuracy rows, without latency
    (reused when done); returns what each backend scored, by target name, for the family's latency session."""
    from dawnpipe.common.files import sha256_file
    from dawnpipe.common.tta import ALL_MODES
    from dawnpipe.costs.resume import evaluated
    from dawnpipe.export.api import load_source
    from dawnpipe.infer.evaluate import evaluate

    source = load_source(run)
    files, refused = _export_artifacts(cfg, run, source, targets, stage, tag, result)
    modes = list(ALL_MODES) if "all" in cfg.tta else list(cfg.tta)
    if "threshold" not in (source.payload.get("selective") or {}):  # no hold-out: no selective rows to expect
        modes = [m for m in modes if not m.startswith("selective-")]
    runnable, refusals = _runnable(targets, files, refused, run)
    if not runnable:  # no report can be built over this run: stop before the family trains any further
        raise DawnpipeError(
            f"no chosen backend can evaluate {run.name} ({'; '.join(f'{name}: {why}' for name, why in refusals)})",
            "choose other --backends (onnxruntime runs every fp32 graph), or another --calibration-method for int8",
        )
    reasons = tuple((s["backend"], s["reason"]) for s in skipped) + refusals
    scored: dict[str, Scored] = {}
    for target in runnable:
        artifact = files[target.artifact]
        sha = source.sha256 if target.artifact == "checkpoint" else sha256_file(artifact)
        scored[target.name] = Scored(artifact, sha, "torch-graphs" if target.graphs else target.backend, tuple(modes))
        if evaluated(run, sha, scored[target.name].backend, modes):
            result.reused.append(f"{run.name}: eval {target.name}")
            continue
        stage("eval", f"{tag}{target.name} ({artifact.name}): accuracy")
        evaluate(
            _eval_config(cfg, target, artifact, latency=False, skipped=reasons),
            progress=lambda message, tag=tag: stage("eval", tag + message),
        )
    return scored


def time_family(cfg: Any, targets: list, scored: dict[str, list[Scored]], stage, result: Any) -> None:
    """Each backend's rows of every member timed in one session (``--latency-only``: the accuracy rows written by
    export_and_score, checked, are timed, not scored again); a backend whose rows already were is reused."""
    from dawnpipe.costs.resume import latency_sessions
    from dawnpipe.infer.evaluate import evaluate_together

    for target in targets:
        members = scored.get(target.name) or []
        if not members:
            continue
        sessions = latency_sessions([(m.artifact, m.sha256, m.backend, m.modes) for m in members])
        if len(sessions) == 1 and None not in sessions:
            result.reused.append(f"latency {target.name} ({len(members)} run(s), one session)")
            continue
        # rows timed in other sessions (a family that gained members) are timed again with the rest: the latency
        # is replaced, the accuracy rows are kept as they were scored
        again = " (timed again with the rest: their earlier sessions do not pair)" if sessions - {None} else ""
        stage("eval", f"{target.name}: latency of {len(members)} run(s) in one session{again}")
        evaluate_together(
            [_eval_config(cfg, target, m.artifact, latency_only=True) for m in members],
            progress=lambda message: stage("eval", message),
        )


def _eval_config(cfg: Any, target: Any, artifact: Path, **options: Any) -> EvalConfig:
    """The evaluation of one backend on one artifact, with the family's data, modes and timing protocol."""
    return EvalConfig(
        artifact=str(artifact),
        data=cfg.train.data,
        tta=cfg.tta,
        backend=target.backend,
        provider=target.provider,
        graphs=target.graphs,
        precision=cfg.train.precision if target.artifact == "checkpoint" else target.precision,  # torch: the recipe's
        test_limit=cfg.train.test_limit,
        protocol=Protocol(rounds=cfg.latency_rounds, calls=cfg.latency_calls),
        throughput_batch=cfg.throughput_batch,
        **options,
    )


def _export_artifacts(
    cfg: Any, run: Path, source: Any, targets: list, stage, tag: str, result: Any
) -> tuple[dict[str, Path], dict[str, str]]:
    """The artifacts the targets run, exported (or reused when their sha256 and source check out): the path of each,
    and why each that could not be made was refused (an int8 graph that disagrees with fp32)."""
    from dawnpipe.costs.resume import reusable_export
    from dawnpipe.export.api import Artifact, build_engine_artifact, export_onnx_model, record
    from dawnpipe.export.config import Int8Spec

    needed = list(dict.fromkeys(t.artifact for t in targets if t.artifact != "checkpoint"))
    if "engine" in needed and "fp16" not in needed:
        needed.insert(needed.index("engine"), "fp16")
    files: dict[str, Path] = {"checkpoint": run}
    written = []
    refused: dict[str, str] = {}  # artifact -> why it could not be made
    for precision in needed:
        if precision in refused or (precision == "engine" and "fp16" in refused):
            continue
        if precision == "engine":
            engine = build_engine_artifact(Artifact(files["fp16"], {}), run)
            files["engine"] = engine.path
            written.append(engine)
            continue
        filename = f"resnet9-ema-none-{precision}.onnx"
        if reusable_export(run, filename, source.sha256) is not None:
            result.reused.append(f"{run.name}: {filename}")
            files[precision] = run / filename
            continue
        stage("export", f"{tag}{precision} ONNX")
        calibration = min(Int8Spec().calibration_images, int(source.payload["data"]["train_images"]))
        int8 = Int8Spec(calibration_images=calibration, calibration_method=cfg.calibration_method)
        try:
            artifact = export_onnx_model(source, run, precision=precision, int8=int8)
        except BackendRefused as err:  # one backend's refusal is that backend's "skipped", not the family's end
            # the problem alone: export's fix names options (--precision) a family does not take
            refused[precision] = f"{run.name}: {err.problem}"
            stage("export", f"{tag}{precision} ONNX refused; its backends are skipped for this run ({err.problem})")
            continue
        files[precision] = artifact.path
        written.append(artifact)
    if written:
        record(run, source, written, {"precisions": [a.entry.get("precision") for a in written]})
    return files, refused


def _runnable(targets: list, files: dict[str, Path], refused: dict[str, str], run: Path) -> tuple[list, tuple]:
    """The targets that can run this run's artifacts, and (target, reason) for those that cannot: an artifact that
    was refused, or one a backend cannot open (OpenVINO compiles it here first, so a refusal is known before any
    evaluation writes eval.json and is recorded with the rest)."""
    from dawnpipe.infer.backends import load

    runnable, refusals = [], []
    for target in targets:
        reason = refused.get(target.artifact) or (refused.get("fp16") if target.artifact == "engine" else None)
        if reason is None and target.backend == "openvino":
            try:
                load(files[target.artifact], "openvino", precision=target.precision).close()
            except BackendRefused as err:
                reason = f"{run.name}: {err}"
        if reason is None:
            runnable.append(target)
        else:
            refusals.append((target.name, reason))
    return runnable, tuple(refusals)

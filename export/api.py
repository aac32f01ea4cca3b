"""Export as composable steps: checkpoint -> checked ONNX (fp32/fp16) -> TensorRT engine -> Triton repository.

    source = load_source("runs/x")                              # the checkpoint, verified and described
    onnx = export_onnx_model(source, out_dir, precision="fp32")  # -> Artifact(path, manifest entry)
    engine = build_engine_artifact(onnx, out_dir)                # TensorRT where present
    record(out_dir, source, [onnx, engine], config)              # one manifest update in the output folder

The output folder is explicit: artifacts and the manifest that lists them go to the same folder (the run folder
by default), and every artifact also describes itself (ONNX metadata; a JSON sidecar beside an engine), so it
still loads when copied elsewhere. ``export(cfg)`` is the composition the CLI calls.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dawnpipe.common.errors import BackendRefused, DawnpipeError
from dawnpipe.common.files import check_folder_option, ensure_room, ensure_writable_dir, sha256_file
from dawnpipe.common.manifest import artifact_entry, update_manifest
from dawnpipe.common.tta import check_mode, views
from dawnpipe.export.config import EXPORT_PRECISIONS, ExportConfig, Int8Spec
from dawnpipe.export.graph import build_deploy_model
from dawnpipe.export.onnx_export import check_opset, compare_logits, export_onnx, read_metadata, run_onnxruntime
from dawnpipe.export.tensorrt_build import EngineSpec
from dawnpipe.train.checkpoint import checkpoint_meta, load_checkpoint, resolve_checkpoint
from dawnpipe.train.data import cached_test_images


@dataclass(frozen=True)
class Source:
    """A loaded checkpoint with its hash: what every export step starts from."""

    path: Path
    payload: dict[str, Any]
    sha256: str
    lineage: str = "unchecked"  # manifest | self-described | override (common.lineage)

    @property
    def run_dir(self) -> Path:
        """The run folder the checkpoint lives in."""
        return self.path.parent


@dataclass(frozen=True)
class Artifact:
    """One written file and its manifest entry (name -> entry)."""

    path: Path
    entry: dict[str, Any]
    check: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportResult:
    """Paths of what was written and the checks' numbers."""

    out_dir: Path
    onnx: Path
    engine: Path | None = None
    triton: list[Path] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the user should know: BatchNorms kept, TensorRT rules
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """What ``dawnpipe export`` prints: each check against its reference (PyTorch fp32 for a checkpoint's
        export, the fp32 file for an imported model's), then where each artifact went."""
        out = [
            f"{precision} check vs {c.get('reference', 'pytorch fp32')}: max |logit diff| {c['max_abs_diff']:.2e}, "
            f"top-1 agreement {c['top1_agreement']:.2%} on {c['images']} images"
            for precision, c in self.checks.items()
        ]
        written = [("onnx:", self.onnx), ("engine:", self.engine), *(("triton:", p) for p in self.triton)]
        return out + [f"{label:<10}{path}" for label, path in written if path]


def load_source(source: str | Path, *, allow_foreign: bool = False, allow_incomplete: bool = False) -> Source:
    """Resolve, load and hash a checkpoint; it must be the one its run's manifest recorded and come from a
    finished run, unless allowed explicitly (the ONNX metadata then says so)."""
    from dawnpipe.common.lineage import check_complete, check_lineage

    ckpt = resolve_checkpoint(source)
    payload = load_checkpoint(ckpt)
    digest = sha256_file(ckpt)
    lineage = check_lineage(ckpt, payload.get("run_id"), allow_foreign=allow_foreign, sha256=digest)
    check_complete(ckpt, checkpoint_meta(payload)["complete"], allow_incomplete=allow_incomplete)
    return Source(ckpt, payload, digest, lineage)


def export_onnx_model(
    source: Source,
    out_dir: Path,
    *,
    precision: str = "fp32",
    tta: str = "none",
    shift: int = 1,
    weights: str = "ema",
    opset: int = 17,
    check_images: int = 1000,
    fp32_tolerance: float = 1e-3,
    fp16_min_agreement: float = 0.99,
    int8: Int8Spec | None = None,
    fold_bn: bool = True,
) -> Artifact:
    """Write one checked ONNX file (metadata included) into ``out_dir``; refuse it if the checks fail.

    ``int8`` (precisions int8 and int8-asym): calibration options; the int8 graph is quantized from this
    checkpoint's own fp32 export, calibrated on its training images, and checked against the PyTorch fp32
    reference. ``fold_bn``: BatchNorms folded into their convolutions (export/fold.py); the reference the export
    is checked against is always the unfolded network as trained. Every file is also held to TensorRT 10's ONNX
    rules (export/trt_rules.py) and the result recorded; only int8-asym is expected to break them.
    """
    from dawnpipe.export.flops import count_onnx
    from dawnpipe.export.quantize import INT8_SCHEMES, calibration_images, export_int8
    from dawnpipe.export.selective_fit import fit_and_stamp

    check_mode(tta)
    if precision not in EXPORT_PRECISIONS:
        raise DawnpipeError(f"unknown precision {precision!r}", f"use --precision {', '.join(EXPORT_PRECISIONS)}")
    check_opset(opset)
    payload = source.payload
    int8 = int8 or Int8Spec()
    calibration = calibration_images(payload, int8) if precision in INT8_SCHEMES else None
    tta_views = views(tta, shift)
    images = _check_images(payload, max(128, check_images // len(tta_views)))
    reference = build_deploy_model(payload, weights=weights, tta=tta, shift=shift, precision="fp32", fold_bn=False)
    with torch.no_grad():
        want = torch.cat([reference(torch.from_numpy(images[i : i + 250])) for i in range(0, len(images), 250)]).numpy()
    graph_precision = "fp16" if precision == "fp16" else "fp32"  # int8 is quantized from the fp32 graph
    module = build_deploy_model(
        payload, weights=weights, tta=tta, shift=shift, precision=graph_precision, fold_bn=fold_bn
    )
    meta = checkpoint_meta(payload)
    metadata = _metadata(source, meta, weights, tta, shift, precision)
    metadata["batchnorm_folding"] = module.folding if fold_bn else "not folded (--no-fold-bn)"
    verify = _verifier(images, want, precision, fp32_tolerance, fp16_min_agreement, int8)

    path = out_dir / f"resnet9-{weights}-{tta}-{precision}.onnx"
    if precision in INT8_SCHEMES:
        check = export_int8(module, path, opset, metadata, verify, calibration, int8, INT8_SCHEMES[precision])
    else:
        check = export_onnx(module, path, opset=opset, metadata=metadata, verify=verify)
    selective, selective_note = (
        fit_and_stamp(path, payload, int8.calibration_data) if tta == "none" else (metadata["selective"], None)
    )
    check["tensorrt_rules"] = _tensorrt_record(path)
    flops = count_onnx(path)
    entry = artifact_entry(
        out_dir,
        path,
        kind="onnx",
        precision=precision,
        tta_mode=tta,
        tta_views=len(tta_views),
        made_from={"checkpoint": str(source.path.resolve()), "sha256": source.sha256, "weights": weights},
        input_contract=meta["input_contract"],
        metrics={"check": check, "model_gflops_per_image": flops.model_flops / 1e9},
        opset=opset,
        run_id=meta["run_id"],
        lineage=source.lineage,
        complete=meta["complete"],
        batchnorm_folding=metadata["batchnorm_folding"],
        quantization=read_metadata(path).get("quantization") if precision in INT8_SCHEMES else None,
        selective=selective,
        selective_note=selective_note,
    )
    return Artifact(path, entry, check)


def _metadata(source: Source, meta: dict[str, Any], weights: str, tta: str, shift: int, precision: str) -> dict:
    """What the ONNX file says about itself (dawnpipe-onnx/1): where it came from, its input contract, its views
    and precision, so it loads and checks wherever it is copied."""
    tta_views = views(tta, shift)
    return {
        "format": "dawnpipe-onnx/1",
        "dawnpipe_version": _version(),
        "run_id": meta["run_id"],
        "classes": meta["classes"],
        "input_contract": meta["input_contract"],
        "data": meta["data"],
        "model_config": meta["model_config"],
        "selective": meta["selective"],
        "complete": meta["complete"],
        "source_checkpoint_sha256": source.sha256,
        "lineage": source.lineage,
        "weights": weights,
        "tta_mode": tta,
        "tta_views": len(tta_views),
        "tta_shift": shift,
        "tta_weights": [v.weight for v in tta_views],
        "precision": precision,
    }


def _verifier(
    images: np.ndarray, want: np.ndarray, precision: str, fp32_tolerance: float, fp16_min: float, int8: Int8Spec
):
    """The check a written file must pass before it is renamed into place: fp32 within ``fp32_tolerance`` of the
    PyTorch logits; fp16 and int8 agreeing with PyTorch fp32's top-1 often enough (else BackendRefused, which a
    family records as a skipped backend)."""
    from dawnpipe.export.quantize import INT8_SCHEMES

    def verify(tmp: Path) -> dict[str, Any]:
        result = {**compare_logits(run_onnxruntime(tmp, images), want), "reference": "pytorch fp32"}
        if precision == "fp32" and result["max_abs_diff"] > fp32_tolerance:
            raise DawnpipeError(
                f"onnxruntime disagrees with PyTorch by {result['max_abs_diff']:.2e} in the logits "
                f"(tolerance {fp32_tolerance:.0e}); the export was not kept",
                "report this with the checkpoint; try another --opset",
            )
        need = fp16_min if precision == "fp16" else int8.min_agreement
        if precision != "fp32" and result["top1_agreement"] < need:
            raise BackendRefused(
                f"the {precision} graph agrees with fp32 on only {result['top1_agreement']:.2%} of top-1 "
                f"predictions (need {need:.0%}); the export was not kept",
                _refusal_fix(precision in INT8_SCHEMES, int8.calibration_method),
            )
        return result

    return verify


def _refusal_fix(int8: bool, method: str) -> str:
    """What to try when a reduced-precision graph disagrees with fp32. For int8, another range method first: minmax
    stretches the ranges to the rarest activation, and at 10 epochs a width-1.25 ResNet-9 agreed on 96.9% with
    minmax (or 2,048 calibration images) and 98.9% with percentile (docs/results.md)."""
    if not int8:
        return "use --precision fp32"
    other = "percentile" if method != "percentile" else "entropy"
    return f"try --calibration-method {other} (this was {method}) or more --calibration-images, or use --precision fp32"


def _tensorrt_record(path: Path) -> dict[str, Any]:
    """The file held to TensorRT's ONNX rules (export.trt_rules), the first five violations kept."""
    from dawnpipe.export.trt_rules import check_tensorrt

    rules = check_tensorrt(path)
    return {
        "passed": rules["passed"],
        "rules": rules["rules"],
        "violations": rules["violations"][:5],
        "violation_count": len(rules["violations"]),
        "parser": rules["parser"],
    }


def export_notes(onnx: Artifact) -> list[str]:
    """What an export's user should hear about: BatchNorms left unfolded (and why), TensorRT rules broken."""
    notes = []
    folding = onnx.entry.get("batchnorm_folding")
    for kept in folding.get("kept", []) if isinstance(folding, dict) else []:
        notes.append(f"BatchNorm {kept['batchnorm']} was not folded into {kept['conv']}: {kept['reason']}")
    if onnx.entry.get("selective_note"):
        notes.append(onnx.entry["selective_note"])
    rules = onnx.check.get("tensorrt_rules", {})
    if rules and not rules["passed"]:
        notes.append(
            f"{onnx.path.name} breaks TensorRT 10's ONNX rules in {rules['violation_count']} place(s), first "
            f"{rules['violations'][0]}; onnxruntime runs it, TensorRT would refuse it"
        )
    return notes


def build_engine_artifact(onnx: Artifact, out_dir: Path, spec: EngineSpec = EngineSpec()) -> Artifact:
    """A TensorRT engine from an exported ONNX (its precision comes from that ONNX), with its JSON sidecar.

    The ONNX is held to TensorRT's rules first (a one-line error names the node, op and rule). Raises the one-line
    "TensorRT/GPU missing" error when they are absent; the ONNX is already written then.
    """
    from dawnpipe.export.tensorrt_build import build_engine, engine_record, write_sidecar
    from dawnpipe.export.trt_rules import require_tensorrt

    require_tensorrt(onnx.path, parse=False)  # the engine build below runs TensorRT's own parser
    meta = read_metadata(onnx.path)
    engine, build = build_engine(onnx.path, out_dir, onnx.path.stem, meta["precision"], spec)
    record = engine_record(meta, build, onnx.path.name, sha256_file(onnx.path))
    write_sidecar(engine, record)
    entry = artifact_entry(out_dir, engine, kind="tensorrt-engine", **record)
    return Artifact(engine, entry)


def write_triton(
    onnx: Artifact, engine: Artifact | None, repo: Path, max_batch: int, *, force: bool = False
) -> list[Artifact]:
    """Triton model repository entries for the ONNX (and engine); names carry weights, TTA and precision."""
    from dawnpipe.export.triton import write_repository

    meta = read_metadata(onnx.path)
    configs = write_repository(
        ensure_writable_dir(repo, "--triton"), onnx.path, engine.path if engine else None, meta, max_batch, force=force
    )
    return [
        Artifact(p, artifact_entry(repo, p, kind="triton-config", made_from={"onnx": onnx.path.name})) for p in configs
    ]


def record(out_dir: Path, source: Source, artifacts: list[Artifact], config: dict[str, Any]) -> Path:
    """One manifest update in ``out_dir`` naming the source checkpoint and every artifact written."""
    entries = {}
    for artifact in artifacts:
        key = artifact.path.name if artifact.entry.get("kind") != "triton-config" else f"triton:{artifact.path}"
        entries[key] = artifact.entry
    run = {"config": config, "source_checkpoint": str(source.path.resolve()), "source_sha256": source.sha256}
    return update_manifest(out_dir, run=("export", run), artifacts=entries)


def export(cfg: ExportConfig) -> ExportResult:
    """The CLI's export: ONNX at the asked precision, then optionally an engine and a Triton repository."""
    started = time.perf_counter()
    check_mode(cfg.tta)
    if cfg.precision not in EXPORT_PRECISIONS:
        raise DawnpipeError(f"unknown precision {cfg.precision!r}", f"use --precision {', '.join(EXPORT_PRECISIONS)}")
    check_opset(cfg.opset)
    if cfg.precision == "int8-asym" and cfg.trt:
        raise DawnpipeError(
            "int8-asym (uint8 activations) is an onnxruntime CPU graph; TensorRT refuses uint8 Q/DQ",
            "use --precision int8 (symmetric, zero points 0) with --trt",
        )
    for folder, option in ((cfg.out, "--out"), (cfg.triton, "--triton")):
        if folder:
            check_folder_option(folder, option)  # before the checkpoint is even read
    source = load_source(cfg.source, allow_foreign=cfg.allow_foreign, allow_incomplete=cfg.allow_incomplete)
    out_dir = ensure_writable_dir(Path(cfg.out) if cfg.out else source.run_dir)
    ensure_room(
        out_dir, onnx_bytes(source.payload, cfg.precision), f"resnet9-{cfg.weights}-{cfg.tta}-{cfg.precision}.onnx"
    )
    onnx = export_onnx_model(
        source,
        out_dir,
        precision=cfg.precision,
        tta=cfg.tta,
        shift=cfg.shift,
        weights=cfg.weights,
        opset=cfg.opset,
        check_images=cfg.check_images,
        fp32_tolerance=cfg.fp32_tolerance,
        fp16_min_agreement=cfg.fp16_min_agreement,
        int8=cfg.int8,
        fold_bn=cfg.fold_bn,
    )
    written = [onnx]
    record(out_dir, source, written, asdict(cfg))  # the ONNX is recorded before anything optional can fail
    result = ExportResult(out_dir=out_dir, onnx=onnx.path, checks={cfg.precision: onnx.check})
    result.notes = export_notes(onnx)
    engine = None
    if cfg.trt:
        engine = build_engine_artifact(onnx, out_dir, cfg.engine)
        written.append(engine)
        result.engine = engine.path
    if cfg.triton:
        triton = write_triton(onnx, engine, Path(cfg.triton), cfg.engine.max_batch, force=cfg.force)
        result.triton = [a.path for a in triton]
        record(Path(cfg.triton), source, triton, asdict(cfg))
    if len(written) > 1:
        record(out_dir, source, written, asdict(cfg))
    result.seconds = time.perf_counter() - started
    return result


def onnx_bytes(payload: dict[str, Any], precision: str) -> int:
    """About how large the exported file is (its weights at the precision's width, plus 1 MB): the room checked
    before an export starts."""
    from dawnpipe.train.checkpoint import parameter_count

    width = {"fp32": 4, "fp16": 2}.get(precision, 1)
    return width * parameter_count(payload.get("model_config") or {}) + (1 << 20)


def _version() -> str:
    from dawnpipe import __version__

    return __version__


def _check_images(payload: dict[str, Any], count: int) -> np.ndarray:
    """Test images of the checkpoint's own data if they are cached, else smooth random 'photos'."""
    cached = cached_test_images(payload.get("data", {}).get("sha256", ""), count)
    if cached is not None:
        return np.ascontiguousarray(cached[0])
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(count, 4, 4, 3)).astype(np.float32)
    smooth = (
        torch.nn.functional.interpolate(
            torch.from_numpy(coarse).permute(0, 3, 1, 2), size=32, mode="bilinear", align_corners=False
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )
    noise = rng.normal(0, 12, size=smooth.shape)
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)

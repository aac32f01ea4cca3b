"""export(): checkpoint -> checked ONNX (+ fp16, TensorRT engine, Triton repo), all recorded in the manifest."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import ensure_writable_dir, sha256_file
from dawnpipe.common.manifest import artifact_entry, update_manifest
from dawnpipe.common.tta import check_mode, views
from dawnpipe.export.graph import PRECISIONS, build_deploy_model
from dawnpipe.export.onnx_export import check_opset, compare_logits, export_onnx, run_onnxruntime
from dawnpipe.export.tensorrt_build import EngineSpec, build_engine
from dawnpipe.train.checkpoint import input_contract, load_checkpoint, resolve_checkpoint
from dawnpipe.train.data import cached_test_images


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how to check it."""

    source: str  # run folder or checkpoint.pt
    weights: str = "ema"  # ema | raw
    tta: str = "none"  # none | flip | translate | flip-translate, baked into the graph
    shift: int = 1  # pixels, for the translate views
    precision: str = "fp32"  # fp32 | fp16
    opset: int = 17  # ONNX opset; 17 is read by TensorRT 8.6+ and every current onnxruntime
    trt: bool = False  # also build a TensorRT engine
    engine: EngineSpec = field(default_factory=EngineSpec)
    triton: str | None = None  # folder for a Triton model repository
    out: str | None = None  # output folder; None = the checkpoint's run folder
    check_images: int = 1000  # images (divided by the view count for TTA graphs, at least 128)
    fp32_tolerance: float = 1e-3  # max |logit difference| onnxruntime vs PyTorch for fp32
    fp16_min_agreement: float = 0.99  # top-1 agreement of the fp16 graph with fp32 on the check images


@dataclass
class ExportResult:
    """Paths of what was written and the checks' numbers."""

    run_dir: Path
    onnx: Path
    engine: Path | None = None
    triton: list[Path] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def export(cfg: ExportConfig) -> ExportResult:
    """Export a checkpoint; raises DawnpipeError (after writing the ONNX) when TensorRT or a GPU is missing."""
    started = time.perf_counter()
    check_mode(cfg.tta)
    if cfg.precision not in PRECISIONS:
        raise DawnpipeError(f"unknown precision {cfg.precision!r}", "use --precision fp32 or fp16")
    check_opset(cfg.opset)
    ckpt = resolve_checkpoint(cfg.source)
    payload = load_checkpoint(ckpt)
    out_dir = ensure_writable_dir(Path(cfg.out) if cfg.out else ckpt.parent)
    run_dir = ckpt.parent
    ckpt_sha = sha256_file(ckpt)
    n_views = len(views(cfg.tta, cfg.shift))
    images = _check_images(payload, max(128, cfg.check_images // n_views))
    stem = f"resnet9-{cfg.weights}-{cfg.tta}"
    reference = build_deploy_model(payload, weights=cfg.weights, tta=cfg.tta, shift=cfg.shift, precision="fp32")
    with torch.no_grad():
        want = torch.cat([reference(torch.from_numpy(images[i : i + 250])) for i in range(0, len(images), 250)]).numpy()

    def metadata(precision: str) -> dict[str, Any]:
        return {
            "format": "dawnpipe-onnx/1",
            "classes": payload["classes"],
            "input_contract": input_contract(payload["normalization"]),
            "source_checkpoint_sha256": ckpt_sha,
            "weights": cfg.weights,
            "tta_mode": cfg.tta,
            "tta_views": n_views,
            "tta_shift": cfg.shift,
            "tta_weights": [v.weight for v in views(cfg.tta, cfg.shift)],
            "precision": precision,
        }

    def verify_fp32(tmp: Path) -> dict[str, Any]:
        result = compare_logits(run_onnxruntime(tmp, images), want)
        if result["max_abs_diff"] > cfg.fp32_tolerance:
            raise DawnpipeError(
                f"onnxruntime disagrees with PyTorch by {result['max_abs_diff']:.2e} in the logits "
                f"(tolerance {cfg.fp32_tolerance:.0e}); the export was not kept",
                "report this with the checkpoint; try another --opset",
            )
        return {**result, "reference": "pytorch fp32"}

    def verify_fp16(tmp: Path) -> dict[str, Any]:
        result = compare_logits(run_onnxruntime(tmp, images), want)
        if result["top1_agreement"] < cfg.fp16_min_agreement:
            raise DawnpipeError(
                f"the fp16 graph agrees with fp32 on only {result['top1_agreement']:.2%} of top-1 "
                f"predictions (need {cfg.fp16_min_agreement:.0%}); the export was not kept",
                "use --precision fp32",
            )
        return {**result, "reference": "pytorch fp32"}

    result = ExportResult(run_dir=run_dir, onnx=out_dir / f"{stem}-{cfg.precision}.onnx")
    written: dict[str, Path] = {}
    needs_fp32 = cfg.precision == "fp32" or (cfg.trt and _trt_wants_fp32_source())
    if needs_fp32:
        written["fp32"] = out_dir / f"{stem}-fp32.onnx"
        result.checks["fp32"] = export_onnx(
            reference, written["fp32"], opset=cfg.opset, metadata=metadata("fp32"), verify=verify_fp32
        )
    if cfg.precision == "fp16":
        module = build_deploy_model(payload, weights=cfg.weights, tta=cfg.tta, shift=cfg.shift, precision="fp16")
        written["fp16"] = out_dir / f"{stem}-fp16.onnx"
        result.checks["fp16"] = export_onnx(
            module, written["fp16"], opset=cfg.opset, metadata=metadata("fp16"), verify=verify_fp16
        )
    contract = input_contract(payload["normalization"])
    artifacts = {}
    for precision, path in written.items():
        artifacts[path.name] = artifact_entry(
            run_dir,
            path,
            kind="onnx",
            precision=precision,
            tta_mode=cfg.tta,
            tta_views=n_views,
            made_from={"checkpoint": ckpt.name, "sha256": ckpt_sha, "weights": cfg.weights},
            input_contract=contract,
            metrics={"check": result.checks[precision]},
            opset=cfg.opset,
        )
    update_manifest(run_dir, run=("export", {"config": asdict(cfg)}), artifacts=artifacts)
    result.seconds = time.perf_counter() - started

    if cfg.trt:  # may raise "TensorRT/GPU missing" now that the ONNX is safely written
        engine, record = build_engine(
            written.get("fp32"), written.get("fp16"), out_dir, stem, cfg.precision, cfg.engine
        )
        source = out_dir / record["source_onnx"]
        result.engine = engine
        update_manifest(
            run_dir,
            artifacts={
                engine.name: artifact_entry(
                    run_dir,
                    engine,
                    kind="tensorrt-engine",
                    precision=cfg.precision,
                    tta_mode=cfg.tta,
                    tta_views=n_views,
                    made_from={"onnx": source.name, "sha256": sha256_file(source)},
                    input_contract=contract,
                    **record,
                )
            },
        )
    if cfg.triton:
        from dawnpipe.export.triton import write_repository

        repo = ensure_writable_dir(cfg.triton)
        result.triton = write_repository(
            repo, stem.replace("-", "_"), result.onnx, result.engine, len(payload["classes"]), cfg.engine.max_batch
        )
        update_manifest(
            run_dir,
            artifacts={
                f"triton:{p.parent.name}": artifact_entry(
                    run_dir, p, kind="triton-config", made_from={"onnx": result.onnx.name}
                )
                for p in result.triton
            },
        )
    result.seconds = time.perf_counter() - started
    return result


def _trt_wants_fp32_source() -> bool:
    """TensorRT 10 builds fp16 engines from the fp32 ONNX (FP16 flag); 11 needs the fp16 ONNX."""
    try:
        import tensorrt as trt
    except ImportError:
        return False
    return hasattr(trt.BuilderFlag, "FP16")


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

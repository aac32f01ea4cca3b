"""``dawnpipe export`` of any source: a checkpoint (export.api), or an imported entrant's ONNX quantized to int8.

An entrant has no checkpoint to re-export, so its int8 files are made from the adapted ONNX that ``dawnpipe import``
wrote (model-fp32.onnx, or model-fp16.onnx for a float16 model, whose float16 parts onnxruntime's quantization
pre-processing casts to float32): static int8 quantization (export.quantize, the same schemes, methods and excluded
first convolution as dawnpipe's own), calibrated on class-balanced training images of the data the import named (or
``--calibration-data``), checked against the adapted file's top-1 on that data's test images, its selective
thresholds fitted through it on the import's hold-out, and recorded in the run's manifest beside the adapted file.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import BackendRefused, DawnpipeError
from dawnpipe.common.files import atomic_write, sha256_file
from dawnpipe.common.manifest import artifact_entry, read_manifest, update_manifest
from dawnpipe.export.api import ExportResult, export
from dawnpipe.export.config import ExportConfig
from dawnpipe.export.entrant import fit_selective, imported_file, imported_run
from dawnpipe.train.config import DEFAULT_SELECTIVE_TARGET

_CHECK_IMAGES = 1000  # test images the int8 file's top-1 is compared with the adapted file's on


def export_source(cfg: ExportConfig) -> ExportResult:
    """The CLI's export: an imported entrant's int8 file, or a checkpoint's export (export.api.export)."""
    run_dir = imported_run(cfg.source)
    return export(cfg) if run_dir is None else export_imported(cfg, run_dir)


def export_imported(cfg: ExportConfig, run_dir: Path) -> ExportResult:
    """int8 (or int8-asym) from an imported run's adapted file; every option checked before any work."""
    from dawnpipe.common.lineage import check_lineage
    from dawnpipe.export.onnx_export import compare_logits, read_metadata, run_onnxruntime, stamp
    from dawnpipe.export.quantize import INT8_SCHEMES, check_calibration, quantize_int8
    from dawnpipe.train.data import balanced_subset, load_cifar

    started = time.perf_counter()
    source = imported_file(run_dir)
    _check_options(cfg, source)
    check_calibration(cfg.int8.calibration_images, cfg.int8.calibration_method)
    meta, source_sha = read_metadata(source), sha256_file(source)
    made = meta.get("precision", "fp32")  # what the adapted file computes in
    check_lineage(source, meta.get("run_id"), allow_foreign=cfg.allow_foreign, sha256=source_sha)
    manifest = read_manifest(run_dir)
    record = manifest["runs"]["import"]
    out_dir = Path(cfg.out) if cfg.out else run_dir
    data = load_cifar(cfg.int8.calibration_data or meta["data"]["source"], trusted_sha256=meta["data"]["sha256"])
    if data.source_sha256 != meta["data"]["sha256"]:
        raise DawnpipeError(
            f"--calibration-data {data.source} is not the data {source.name} was imported with (sha256 differs)",
            f"pass the data the import named ({meta['data']['source']})",
        )
    check_calibration(cfg.int8.calibration_images, cfg.int8.calibration_method, available=len(data.train_y))
    calibration = data.train_x[balanced_subset(data.train_y, cfg.int8.calibration_images)]
    test = data.test_x[balanced_subset(data.test_y, min(_CHECK_IMAGES, len(data.test_y)))]
    want = run_onnxruntime(source, test)
    path = out_dir / f"model-{cfg.precision}.onnx"
    check: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        import onnx

        quantization = quantize_int8(
            source, tmp, calibration, method=cfg.int8.calibration_method, scheme=INT8_SCHEMES[cfg.precision]
        )
        # the scheme keeps the graph's first Conv in fp32 (dawnpipe's whitening layer); in a foreign graph it is
        # whatever convolution comes first, named as such
        quantization["kept_fp32"] = [
            "the graph's first convolution",
            "every op other than " + ", ".join(quantization["ops"]),
        ]
        model = onnx.load(str(tmp))
        stamp(model, {**meta, "precision": cfg.precision, "quantization": quantization, "selective": None})
        model.doc_string = f"dawnpipe {cfg.precision} of an imported model ({source.name}, sha256 {source_sha[:12]})"
        onnx.save_model(model, str(tmp), save_as_external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)
        check.update({**compare_logits(run_onnxruntime(tmp, test), want), "reference": f"{source.name} ({made})"})
        if check["top1_agreement"] < cfg.int8.min_agreement:
            raise BackendRefused(
                f"the {cfg.precision} graph agrees with {made} on only {check['top1_agreement']:.2%} of top-1 "
                f"predictions (need {cfg.int8.min_agreement:.0%}); the export was not kept",
                f"try another --calibration-method or more --calibration-images, or use {source.name}",
            )

    atomic_write(path, write)
    # the import's hold-out and target: the int8 file's thresholds are fitted as the adapted file's were
    count = (record.get("holdout") or {}).get("images") or 0
    selective = fit_selective(path, data, count, record["config"].get("selective_target", DEFAULT_SELECTIVE_TARGET))
    entry = artifact_entry(
        out_dir,
        path,
        kind="onnx",
        precision=cfg.precision,
        tta_mode="none",
        tta_views=1,
        made_from={"onnx": str(source.resolve()), "sha256": source_sha},
        input_contract=meta["input_contract"],
        metrics={"check": check, "model_gflops_per_image": _gflops(manifest, source.name)},
        run_id=meta["run_id"],
        lineage="imported",
        complete=True,
        quantization=read_metadata(path).get("quantization"),
        selective=selective,
    )
    run = {"config": asdict(cfg), "source": str(source)}
    update_manifest(out_dir, run=("export", run), artifacts={path.name: entry})
    result = ExportResult(out_dir=out_dir, onnx=path, checks={cfg.precision: check})
    result.seconds = time.perf_counter() - started
    return result


def _check_options(cfg: ExportConfig, source: Path) -> None:
    """What an imported model can be exported as: int8 or int8-asym, no baked TTA, no engine (yet)."""
    if cfg.precision not in ("int8", "int8-asym"):
        raise DawnpipeError(
            f"an imported model is already its own file ({source.name}); --precision {cfg.precision} cannot be made "
            "from it",
            f"use --precision int8 (or int8-asym), or evaluate {source}",
        )
    if cfg.tta != "none":
        raise DawnpipeError(
            "an imported model takes TTA at run time, not baked into its graph",
            "drop --tta and pass it to `dawnpipe eval --tta` instead",
        )
    if cfg.trt or cfg.triton:
        raise DawnpipeError(
            "TensorRT engines and Triton repositories are made from dawnpipe's own exports only (for now)",
            "drop --trt/--triton; evaluate the int8 file with onnxruntime or OpenVINO",
        )
    if cfg.weights != "ema" or not cfg.fold_bn:
        raise DawnpipeError(
            "--weights and --no-fold-bn choose among a checkpoint's weights; an imported model has one graph",
            "drop --weights/--no-fold-bn",
        )


def _gflops(manifest: dict[str, Any], name: str) -> float | None:
    """The adapted file's model GFLOPs per image, as its import counted them (int8 keeps the graph's FLOPs)."""
    entry = manifest.get("artifacts", {}).get(name, {})
    return (entry.get("metrics") or {}).get("model_gflops_per_image")

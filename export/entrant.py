"""``dawnpipe import``: a classifier dawnpipe did not train, made into a run folder every later stage reads.

    result = import_model(ImportConfig(model="airbench94.onnx", data="cifar10-jpeg.tar.gz", name="airbench94",
                                       mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)))

The foreign ONNX file is checked (export.adapter: one input, an image batch of the data's size, [N, classes]
logits, no external data, onnxruntime can load it), given dawnpipe's contract by an adapter graph, stamped with
dawnpipe's self-describing metadata (its ``entrant`` record names the foreign file's sha256, the contract it was
given and the class order), and checked: the adapted graph's logits against the foreign graph's on random and real
images. Selective-TTA thresholds are fitted through the written file on a class-balanced hold-out of the data's
training images, and its FLOPs counted from the graph like dawnpipe's own. The run folder's manifest records the
import (``runs.import``) and the artifact; ``eval``, ``export --precision int8``, ``predict`` and ``serve`` take the
file as they take an exported one.

A foreign model was trained on data dawnpipe cannot see: its hold-out images may be images it trained on (airbench94
trains on all 50,000) and is more confident on them than on unseen images, so a threshold set to select a fraction
of them selects more of the test images (airbench94 seed 0: 31.9% against a 20% target); the record says so.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import atomic_write, check_folder_option, ensure_room, sha256_file
from dawnpipe.common.manifest import MANIFEST_NAME, artifact_entry, read_manifest, update_manifest
from dawnpipe.common.run_folder import RunFolder, check_run_name
from dawnpipe.export.adapter import ForeignContract, adapt, inspect_foreign
from dawnpipe.export.entrant_check import check_logits, check_set, reference_logits, tolerance_for
from dawnpipe.train.config import DEFAULT_SELECTIVE_TARGET

IMPORTED_NAME = "model-fp32.onnx"  # the adapted file in an import's run folder (a float16 model's: model-fp16.onnx)
_MAX_BYTES = 2 << 30  # protobuf's own limit for one ONNX file


@dataclass(frozen=True)
class ImportConfig:
    """What to import and the contract the foreign model takes."""

    model: str  # the foreign .onnx file (one self-contained file)
    data: str  # the CIFAR-10 copy it is judged on: classes, check images, the selective hold-out
    name: str | None = None  # the run folder's name; None = the file's stem
    entrant: str | None = None  # the entrant's name in reports, shared by its seeds; None = the run folder's name
    seed: int = 0  # the seed the foreign model was trained with (its seeds pool like a family's)
    out: str = "runs"  # parent folder of run folders
    contract: ForeignContract = field(default_factory=ForeignContract)
    classes: str | None = None  # the model's class order: comma-separated names, or a file of one name per line
    holdout: int = 1000  # class-balanced training images selective thresholds are fitted on; 0 = no selective modes
    selective_target: float | str = DEFAULT_SELECTIVE_TARGET  # as training's --selective-target
    check_images: int = 256  # random images and as many real training images the adapted logits are checked on
    tolerance: float = 1e-4  # largest |logit difference| adapted vs foreign accepted (a float16 model: at least
    # entrant_check.FP16_ULPS fp16 units of its largest logit: onnxruntime's CPU runs it in mixed precision)
    overwrite: bool = False  # replace a finished run folder of the same name


@dataclass
class ImportResult:
    """Where the import went and what its checks measured."""

    run_dir: Path
    onnx: Path
    check: dict[str, Any]
    gflops: float
    selective: dict[str, Any] | None
    seconds: float

    def lines(self) -> list[str]:
        """What ``dawnpipe import`` prints."""
        c = self.check
        return [
            f"adapted vs foreign: max |logit diff| {c['max_abs_diff']:.2e} on {c['images']} images "
            f"({c['random_images']} random, {c['real_images']} real), top-1 agreement {c['top1_agreement']:.2%}",
            f"model GFLOPs per image: {self.gflops:.4f}",
            f"onnx:     {self.onnx}",
            f"manifest: {self.run_dir / 'manifest.json'}",
        ]


def import_config(
    *,
    layout: str = ForeignContract.layout,
    input_range: str = ForeignContract.input_range,
    mean: tuple[float, ...] = ForeignContract.mean,
    std: tuple[float, ...] = ForeignContract.std,
    **options: Any,
) -> ImportConfig:
    """ImportConfig from the command line's flat options (the contract's four make the ForeignContract); paths are
    kept as strings (JSON)."""
    contract = ForeignContract(layout, input_range, tuple(float(m) for m in mean), tuple(float(s) for s in std))
    return ImportConfig(contract=contract, **{k: str(v) if isinstance(v, Path) else v for k, v in options.items()})


def import_model(cfg: ImportConfig) -> ImportResult:
    """Import ``cfg.model`` into ``cfg.out/name``: every option and the foreign graph checked before the folder is
    claimed; the adapted file written under a temporary name and renamed only after its checks pass."""
    from dawnpipe.export.onnx_export import onnxruntime_module
    from dawnpipe.export.trt_rules import load_onnx
    from dawnpipe.train.calibration import check_selective_target
    from dawnpipe.train.data import load_cifar

    started = time.perf_counter()
    contract = cfg.contract.check()
    check_selective_target(cfg.selective_target)
    _check_counts(cfg)
    source = Path(cfg.model).expanduser()
    if source.suffix != ".onnx":
        raise DawnpipeError(f"{source} is not an .onnx file", "export the model to ONNX first (torch.onnx.export)")
    name = check_run_name(cfg.name or source.stem)
    check_folder_option(cfg.out, "--out")
    if source.is_file() and source.stat().st_size > _MAX_BYTES:  # before protobuf reads it all
        raise DawnpipeError(f"{source} is larger than 2 GiB", "import a model saved as one file under 2 GiB")
    foreign_model = load_onnx(source)  # one-line errors for missing, empty, truncated files
    data = load_cifar(cfg.data)
    model_classes = _model_classes(cfg.classes, data.classes)
    order = class_order(model_classes, data.classes)
    foreign = inspect_foreign(foreign_model, contract, len(data.classes))
    session = _session(source, onnxruntime_module())  # refused here, before any folder, if it cannot load
    images, real = check_set(data, cfg.check_images)
    expected = reference_logits(session, images, foreign, contract, len(data.classes), order)
    run_dir = Path(cfg.out) / name
    ensure_room(Path(cfg.out), 2 * source.stat().st_size + (1 << 20), imported_name(foreign.float16_input))
    created = not run_dir.exists()
    checked = _CheckedImport(name, source, foreign_model, foreign, data, model_classes, order, images, real, expected)
    try:
        return _write_import(cfg, run_dir, checked, started)
    except BaseException:
        if created:  # a refusal after the folder was made leaves no empty run folder behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


@dataclass(frozen=True)
class _CheckedImport:
    """What import_model checked before any folder was claimed, and what _write_import writes from."""

    name: str  # the run folder's name
    source: Path  # the foreign .onnx file
    foreign_model: Any  # its onnx.ModelProto
    foreign: Any  # its checked facts (export.adapter.ForeignGraph)
    data: Any  # the loaded CIFAR-10 copy
    model_classes: list[str]  # the model's class names in logit order
    order: list[int] | None  # the reordering to the data's class order (class_order); None where it is the same
    images: np.ndarray  # the check images (random, then real)
    real: int  # how many of them are real training images
    expected: np.ndarray  # the foreign file's own logits on them


def _write_import(cfg: ImportConfig, run_dir: Path, checked: _CheckedImport, started: float) -> ImportResult:
    """The import's writes, under the run folder's lock: the adapted file (checked against the foreign file's logits
    before it is renamed into place), its selective thresholds, and the manifest."""
    from dawnpipe.export.flops import count_onnx
    from dawnpipe.export.onnx_export import stamp

    name, source, foreign, data, order = checked.name, checked.source, checked.foreign, checked.data, checked.order
    contract = cfg.contract
    with RunFolder(run_dir) as folder:
        folder.claim_new(overwrite=cfg.overwrite)
        run_id = uuid.uuid4().hex
        foreign_sha = sha256_file(source)
        record = {
            "name": name,
            "entrant": cfg.entrant or name,
            "seed": cfg.seed,
            "foreign_file": str(source.resolve()),
            "foreign_sha256": foreign_sha,
            "foreign_opset": foreign.opset,
            "contract": asdict(contract),
            "model_classes": checked.model_classes,  # the model's logits, in its order
            "reordered_to_data_classes": order is not None,
            "adapter": "uint8 NHWC -> Cast -> /255 (0-1 models) -> -mean -> /std -> NCHW (NCHW models) -> model -> "
            "float32 logits" + (" -> data's class order" if order is not None else ""),
        }
        metadata = _metadata(run_id, data, contract, record, foreign.float16_input)
        path = run_dir / imported_name(foreign.float16_input)
        check: dict[str, Any] = {}

        def write(tmp: Path) -> None:
            import onnx

            adapted = adapt(checked.foreign_model, foreign, contract, order)
            stamp(adapted, metadata)
            adapted.doc_string = f"dawnpipe import of {source.name} (sha256 {foreign_sha[:12]}): uint8 NHWC -> logits"
            onnx.save_model(adapted, str(tmp), save_as_external_data=False)
            onnx.checker.check_model(str(tmp), full_check=True)
            tolerance = tolerance_for(cfg.tolerance, checked.expected, foreign.float16_input)
            check.update(check_logits(tmp, checked.expected, checked.images, checked.real, tolerance))

        try:
            atomic_write(path, write)
        except _onnx_errors() as err:  # the adapted graph broke an ONNX rule the foreign file's IR version sets
            raise DawnpipeError(
                f"the adapted graph fails onnx.checker ({str(err).strip().splitlines()[0][:200]})",
                "re-export the model with a current exporter (ONNX IR version 4 or later), then import it again",
            ) from None
        flops = count_onnx(path)
        selective = fit_selective(path, data, cfg.holdout, cfg.selective_target)
        entry = artifact_entry(
            run_dir,
            path,
            kind="onnx",
            precision=metadata["precision"],
            tta_mode="none",
            tta_views=1,
            made_from={"foreign": str(source.resolve()), "sha256": foreign_sha, "adapter": record["adapter"]},
            input_contract=metadata["input_contract"],
            metrics={"check": check, "model_gflops_per_image": flops.model_flops / 1e9},
            run_id=run_id,
            lineage="imported",
            complete=True,
            selective=selective,
        )
        run = {
            "config": {**asdict(cfg), "name": name},
            "file": path.name,
            "run_id": run_id,
            "entrant": record,
            "data": data.describe(),
            "holdout": (selective or {}).get("holdout"),
            "check": check,
            "flops": flops.to_dict(),
        }
        update_manifest(run_dir, run=("import", run), artifacts={path.name: entry})
    return ImportResult(run_dir, path, check, flops.model_flops / 1e9, selective, time.perf_counter() - started)


def _onnx_errors() -> tuple[type[BaseException], ...]:
    """The exceptions onnx raises for a graph that breaks its rules (checker, shape inference)."""
    import onnx

    return (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)


def imported_run(source: str | Path) -> Path | None:
    """The run folder of an imported entrant ``source`` names (the folder, or a file in it), else None."""
    path = Path(source).expanduser()
    folder = path if path.is_dir() else path.parent
    if not (folder / MANIFEST_NAME).is_file():
        return None
    try:
        runs = read_manifest(folder).get("runs", {})
    except DawnpipeError:
        return None
    return folder if isinstance(runs.get("import"), dict) and "train" not in runs else None


def imported_name(float16: bool) -> str:
    """The adapted file's name in an import's run folder: it says the precision the model computes in."""
    return "model-fp16.onnx" if float16 else IMPORTED_NAME


def imported_file(run_dir: Path) -> Path:
    """The adapted file of the imported run ``run_dir``: the name its manifest's import record gives (one of the two
    imported_name gives; an import made before float16 models were named records none and is fp32)."""
    record = read_manifest(run_dir).get("runs", {}).get("import", {})
    name = record.get("file", IMPORTED_NAME) if isinstance(record, dict) else IMPORTED_NAME
    if name not in (imported_name(False), imported_name(True)):
        raise DawnpipeError(
            f"{run_dir / MANIFEST_NAME} names {name!r} as the imported file, not one `dawnpipe import` writes",
            "import the model again into a new run folder (dawnpipe import MODEL --data DATA --name NEW)",
        )
    return run_dir / name


def class_order(given: list[str], data_classes: tuple[str, ...]) -> list[int] | None:
    """For each of the data's classes, the index of the model's logit that scores it, ``given`` the model's class
    names in logit order; None when that is the data's order. One-line errors for names that are not the data's
    classes."""
    if given == list(data_classes):
        return None
    if len(given) != len(data_classes) or set(given) != set(data_classes) or len(set(given)) != len(given):
        missing, extra = sorted(set(data_classes) - set(given)), sorted(set(given) - set(data_classes))
        raise DawnpipeError(
            f"--classes names {len(given)} classes ({', '.join(given[:12])}); the data's are "
            f"{', '.join(data_classes)} (missing {missing or 'none'}, unknown {extra or 'none'})",
            "list each of the data's class names once, in the order of the model's logits",
        )
    return [given.index(c) for c in data_classes]


def _model_classes(names: str | None, data_classes: tuple[str, ...]) -> list[str]:
    """The model's class names in logit order: from --classes (a names file or a comma list), else the data's."""
    if not names:
        return list(data_classes)
    path = Path(names).expanduser()
    if path.is_file():
        if path.stat().st_size > 1 << 20:
            raise DawnpipeError(f"--classes {path} is larger than 1 MiB", "pass a file of one class name per line")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise DawnpipeError(f"--classes {path} is not text", "pass a file of one class name per line") from None
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [n.strip() for n in names.split(",") if n.strip()]


def _check_counts(cfg: ImportConfig) -> None:
    if not 1 <= cfg.check_images <= 10000:
        raise DawnpipeError(f"--check-images {cfg.check_images} is outside 1..10000", "pass 256 (the default)")
    if cfg.entrant is not None:
        check_run_name(cfg.entrant)  # the same plain-name rule: it labels report rows and files
    if not 0 <= cfg.seed < 2**31:
        raise DawnpipeError(f"--seed {cfg.seed} is outside 0..2^31-1", "pass the seed the model was trained with")
    if cfg.holdout < 0:
        raise DawnpipeError(f"--holdout {cfg.holdout} is negative", "pass 0 (no selective modes) or an image count")
    if not 0 < cfg.tolerance < 1:
        raise DawnpipeError(f"--tolerance {cfg.tolerance} is outside (0, 1)", "pass 1e-4 (the default)")


def _session(path: Path, ort: Any) -> Any:
    """The foreign file in onnxruntime (CPU), or the one-line refusal naming why it cannot load."""
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own exception types for graphs it cannot load
        raise DawnpipeError(
            f"onnxruntime cannot load {path.name} ({str(err).splitlines()[0][:200]})",
            "export the model again with an opset and operators onnxruntime supports",
        ) from None


def _metadata(run_id: str, data: Any, contract: ForeignContract, record: dict, float16: bool) -> dict[str, Any]:
    """dawnpipe-onnx/1 metadata for the adapted file: what every backend reads, plus the entrant record."""
    from dawnpipe import __version__
    from dawnpipe.train.checkpoint import input_contract

    contract_record = input_contract(contract.pixel_normalization())
    contract_record["output"]["shape"] = [None, len(data.classes)]
    return {
        "format": "dawnpipe-onnx/1",
        "dawnpipe_version": __version__,
        "run_id": run_id,
        "classes": list(data.classes),
        "input_contract": contract_record,
        "data": {"source": data.source, "sha256": data.source_sha256},
        "model_config": {"entrant": record["name"]},
        "selective": None,
        "complete": True,
        "lineage": "imported",
        "weights": "foreign",
        "tta_mode": "none",
        "tta_views": 1,
        "tta_shift": 1,
        "tta_weights": [1.0],
        "precision": "fp16" if float16 else "fp32",
        "entrant": record,
    }


def fit_selective(path: Path, data: Any, count: int, target: float | str) -> dict[str, Any] | None:
    """Selective thresholds fitted through the file at ``path`` on the first ``count`` class-balanced training images
    of ``data`` (export.selective_fit, as for dawnpipe's own exports) and stamped into it; None when ``count`` is 0.
    The import's adapted file and its int8 file are fitted here alike."""
    from dawnpipe.export.onnx_export import restamp
    from dawnpipe.export.selective_fit import fit_artifact
    from dawnpipe.train.calibration import describe_holdout, split_holdout

    if not count:
        return None
    _, held = split_holdout(data.train_y, count, 1)
    record = fit_artifact(path, target, data.train_x[held], data.train_y[held])
    record["holdout"] = {
        **describe_holdout(held, len(data.train_y)),
        "seen_in_training": "unknown: a foreign model may have trained on these images (airbench94 trains on all)",
    }
    restamp(path, {"selective": record})
    return record

"""Each exported artifact's own selective-TTA thresholds, fitted through that file and the runtime that serves it.

Why not copy training's: the threshold was set on the confidences of the EMA weights in the training dtype, and an
int8 (or raw-weight, or fp16) graph is confident to other degrees, so a copied threshold selects another fraction
of the images than the run asked for (width 0.5 at 10 epochs: 14.9% of the test set on fp32, 17.1% on int8). Here
the written ONNX file runs on the run's own hold-out (rebuilt from the run's config and checked against the index
hash training recorded: never test images) through onnxruntime on the CPU, the reference runtime every export is
checked with, and ``train.calibration.fit_thresholds`` sets a threshold per selective mode at the run's target
(``auto``: fitted to each mode's own hold-out gain). The record says what it was fitted through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError


def holdout_images(payload: dict[str, Any], source: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The run's hold-out (uint8 NHWC images, labels), rebuilt from its config on ``source`` (default: the data it
    was trained on) and checked against the index hash its training recorded. One-line errors for a run without a
    hold-out, data that is not here, and data whose hold-out is another one."""
    from dawnpipe.train.calibration import describe_holdout, split_holdout
    from dawnpipe.train.config import TrainConfig
    from dawnpipe.train.data import load_cifar

    selective = payload.get("selective") or {}
    recorded = (selective.get("holdout") or {}).get("indices_sha256")
    if not recorded:
        raise DawnpipeError(
            "the run kept no calibration hold-out, so there is nothing to fit a selective threshold on",
            "train with --holdout N (the default keeps 1000 images) to use selective TTA",
        )
    own = payload.get("data") or {}
    source = source or own.get("source")
    if not source or not Path(source).expanduser().exists():
        raise DawnpipeError(
            f"fitting the selective threshold needs the run's hold-out, and its data {source!r} is not here",
            "pass --calibration-data PATH to the CIFAR-10 copy it was trained on",
        )
    cfg = TrainConfig.from_dict(payload.get("train_config") or {})
    data = load_cifar(source, train_limit=cfg.train_limit, trusted_sha256=own.get("sha256"))
    _, held = split_holdout(data.train_y, cfg.holdout, cfg.batch_size)
    if describe_holdout(held, len(data.train_y))["indices_sha256"] != recorded:
        raise DawnpipeError(
            "the hold-out rebuilt from this data is not the one the run was calibrated on (index sha256 differs)",
            "export with the data the run was trained on (--calibration-data PATH)",
        )
    return data.train_x[held], data.train_y[held]


def from_training(selective: dict[str, Any] | None) -> dict[str, Any] | None:
    """Training's record as an artifact carries it when its own fit cannot be made: one threshold (selective-flip's)
    for every mode, read as "threshold from training"."""
    if not selective:
        return None
    return {k: v for k, v in selective.items() if k not in ("modes", "fitted_through")}


def fit_artifact(path: Path, target: float | str, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The selective record of the ONNX file at ``path``: per selective mode, the threshold at ``target`` on the
    confidences this file gives the hold-out ``images`` through onnxruntime (CPU)."""
    from dawnpipe.common.machine import cpu_summary
    from dawnpipe.common.tta import combine, softmax_confidence, views
    from dawnpipe.export.onnx_export import onnxruntime_module, read_metadata, run_onnxruntime
    from dawnpipe.train.calibration import BASE_MODES, fit_thresholds

    shift = int(read_metadata(path).get("tta_shift", 1))
    cache: dict[tuple, np.ndarray] = {}

    def logits(mode: str) -> np.ndarray:
        from dawnpipe.common.tta import apply_view

        per_view = []
        for view in views(mode, shift):
            key = (view.flip, view.dy, view.dx)
            if key not in cache:
                cache[key] = run_onnxruntime(path, np.ascontiguousarray(apply_view(images, view)))
            per_view.append(cache[key])
        return combine(per_view, views(mode, shift))

    plain = logits("none")
    hits = {mode: logits(mode).argmax(1) == labels for mode in BASE_MODES}
    # the CPU is part of the runtime: onnxruntime's int8 kernels differ with VNNI, so an int8 file's confidences (and
    # the fraction a threshold selects) can move on another CPU; eval shows the hold-out fraction beside the test's
    version = onnxruntime_module().__version__
    through = f"onnxruntime {version} CPUExecutionProvider on {cpu_summary()}, {path.name} itself"
    return fit_thresholds(softmax_confidence(plain), plain.argmax(1) == labels, hits, target, through)


def fit_and_stamp(path: Path, payload: dict[str, Any], data: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(the written file's own selective record, a note): thresholds fitted through the file (export.selective_fit)
    and stamped into its metadata; where the run's hold-out cannot be rebuilt here (its data is elsewhere),
    training's threshold stays, labelled as such, and the note says why."""
    from dawnpipe.export.onnx_export import restamp

    trained = payload.get("selective")
    if not trained:
        return None, None  # no hold-out: no selective modes (asking for one names --holdout)
    try:
        images, labels = holdout_images(payload, data)
    except DawnpipeError as err:
        restamp(path, {"selective": from_training(trained)})
        return from_training(trained), f"{path.name} keeps the selective threshold from training: {err}"
    target = (payload.get("train_config") or {}).get("selective_target", trained.get("target_fraction"))
    record = {**fit_artifact(path, target, images, labels), "holdout": trained.get("holdout")}
    restamp(path, {"selective": record})
    return record, None

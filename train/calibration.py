"""The calibration hold-out and the per-image confidence threshold that selective TTA deploys with.

Why a threshold set on held-out *training* images: a deployed model answering one image at a time cannot rank
a whole test set, so "extra views for the least-confident 20%" must become "extra views when the plain view's
top-1 probability is below t". Choosing t on test images would leak the test set into the number being
reported; choosing it on images the model trained on would set it far too low (training images are seen with
high confidence). So the trainer keeps a class-balanced hold-out of the training set out of training, and
after training sets t so that ``target`` of the hold-out falls below it. The hold-out's indices (a rule plus
their sha256) and the threshold go into the checkpoint and the manifest.

A threshold belongs to the model and runtime it was fitted through: the same network exported to int8, or run by
another runtime, is confident to other degrees, and a borrowed threshold selects another fraction than the run
asked for. So every artifact gets its own (``fit_thresholds`` on the confidences that artifact and its runtime
give on the hold-out: training fits the checkpoint's, export each ONNX file's), one per selective mode: with
``auto`` each mode's fraction is fitted to that mode's own hold-out gain.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.train.config import DEFAULT_SELECTIVE_TARGET

DEFAULT_HOLDOUT = 1000  # images: the threshold's quantile then has a standard error under 1.3 points at 20%
AUTO = "auto"  # selective target chosen per run on its own hold-out (auto_target)
AUTO_KEEP_GAIN = 0.9  # auto: the selective flip must keep at least this fraction of full flip's hold-out gain
AUTO_CAP = 0.5  # auto: never select more than this fraction of the hold-out; past it full flip costs < 2x selective
# auto: flip must fix at least this many more hold-out images than it breaks before its gain curve decides the
# fraction. Below 10 images "keep 90%" rounds up to "keep all of it", so the fraction hangs on where the last one
# or two fixed images happen to fall; the 10-epoch family chose 19.4% on a 1-image gain and 1.6% on a 2-image one.
AUTO_MIN_GAIN_IMAGES = 10


def check_selective_target(target: float | str) -> float | str:
    """``auto`` or a fraction strictly inside (0, 1), checked before any data is read.

    0 would never select (that is ``--tta none``) and 1 always would (that is full TTA), so neither is a selective
    target; refusing them up front beats finding out after hours of training.
    """
    if target == AUTO:
        return AUTO
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0.0 < float(target) < 1.0:
        raise DawnpipeError(
            f"--selective-target {target!r} is neither auto nor a fraction strictly between 0 and 1",
            "pass auto (fitted per run on its hold-out) or a fraction such as 0.2",
        )
    return float(target)


def split_holdout(labels: np.ndarray, count: int | None, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, hold-out indices): the first ``count`` class-balanced images are held out.

    ``count`` None takes DEFAULT_HOLDOUT, or a tenth of a smaller training set. Refuses a hold-out that leaves a
    class without held-out or training images, or too few images to train.
    """
    from dawnpipe.train.data import balanced_subset

    if count is None:
        count = min(DEFAULT_HOLDOUT, len(labels) // 10)
        count = count if count >= len(np.unique(labels)) else 0
    if count < 0:
        raise DawnpipeError(f"--holdout {count} is negative", "pass 0 (no calibration) or a positive image count")
    if count == 0:
        return np.arange(len(labels)), np.zeros(0, dtype=np.int64)
    classes = np.unique(labels)
    if count < len(classes):
        raise DawnpipeError(
            f"a hold-out of {count} images leaves some of the {len(classes)} classes without held-out images",
            f"pass --holdout {len(classes)} or more (or 0 to skip calibration)",
        )
    if count + batch_size > len(labels):
        raise DawnpipeError(
            f"a hold-out of {count} images leaves {len(labels) - count} of {len(labels)} training images, "
            f"fewer than one batch of {batch_size}",
            "lower --holdout or --batch-size, or raise --train-limit",
        )
    held = balanced_subset(labels, count)
    keep = np.setdiff1d(np.arange(len(labels)), held)
    empty = [int(c) for c in classes if not (labels[keep] == c).any()]
    if empty:
        raise DawnpipeError(
            f"a hold-out of {count} images takes every training image of class(es) {empty}", "lower --holdout"
        )
    return keep, held


def describe_holdout(indices: np.ndarray, source_images: int) -> dict[str, Any]:
    """What the manifest records about the hold-out: the rule, the count and a hash of the exact indices."""
    return {
        "rule": "first N class-balanced training images (round-robin over classes, dataset order)",
        "images": int(len(indices)),
        "of_training_images": int(source_images),
        "indices_sha256": hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest(),
    }


def calibrate_threshold(confidence: np.ndarray, target: float) -> dict[str, Any]:
    """The threshold t with ``round(target * n)`` of the hold-out confidences strictly below it.

    An image is selected for extra views when its plain-view top-1 probability is ``< t``.
    """
    if not 0.0 <= target <= 1.0:
        raise DawnpipeError(f"selective target fraction {target} is outside [0, 1]", "use a fraction such as 0.2")
    conf = np.sort(np.asarray(confidence, dtype=np.float64))
    if len(conf) == 0:
        raise DawnpipeError("no hold-out images to calibrate on", "train with --holdout greater than 0")
    k = int(round(target * len(conf)))
    threshold = 1.0 if k >= len(conf) else float(conf[k])  # at target 1 all but certain (p == 1) images
    return {
        "threshold": threshold,
        "target_fraction": float(target),
        "holdout_images": int(len(conf)),
        "selected_fraction_holdout": float((conf < threshold).mean()),
        "statistic": "top-1 softmax probability of the plain (identity) view",
    }


BASE_MODES = (
    "flip",
    "translate",
    "flip-translate",
    "airbench94",
)  # the TTA modes selective TTA takes its extra views from


def fit_thresholds(
    confidence: np.ndarray,
    plain_hits: np.ndarray,
    mode_hits: dict[str, np.ndarray],
    target: float | str,
    fitted_through: str,
) -> dict[str, Any]:
    """Selective TTA's calibration of one artifact: a threshold per selective mode on its hold-out confidences.

    ``mode_hits``: per base mode (``flip``, ...) whether that mode's views get each hold-out image right. A fixed
    ``target`` gives every mode the same fraction (so the same threshold); ``auto`` fits each mode's fraction to
    its own gain (``auto_target``). The record keeps selective-flip's fields at its top level, as artifacts made
    before per-mode thresholds carried them, so older readers still find a threshold.
    """
    check_selective_target(target)
    modes: dict[str, Any] = {}
    for base, hits in mode_hits.items():
        if target == AUTO:
            fitted = auto_target(confidence, plain_hits, hits)
            record = {**calibrate_threshold(confidence, fitted["target_fraction"]), "target": AUTO, "auto": fitted}
        else:
            record = calibrate_threshold(confidence, float(target))
        modes[f"selective-{base}"] = record
    first = modes.get("selective-flip") or next(iter(modes.values()))
    return {**first, "modes": modes, "fitted_through": fitted_through}


def mode_threshold(selective: dict[str, Any] | None, mode: str) -> tuple[float, str] | None:
    """(threshold, where it came from) of a selective ``mode`` in an artifact's record, or None if it has none.

    Artifacts fitted per mode say through what; older ones carry one threshold from training, used for every mode
    and labelled so."""
    selective = selective or {}
    record = (selective.get("modes") or {}).get(mode)
    if isinstance(record, dict) and "threshold" in record:
        return float(record["threshold"]), f"fitted on the hold-out through {selective.get('fitted_through')}"
    if "threshold" in selective:
        return float(selective["threshold"]), "threshold from training"
    return None


def auto_target(
    confidence: np.ndarray,
    plain_hits: np.ndarray,
    flip_hits: np.ndarray,
    keep: float = AUTO_KEEP_GAIN,
    cap: float = AUTO_CAP,
    min_gain: int = AUTO_MIN_GAIN_IMAGES,
    fallback: float = DEFAULT_SELECTIVE_TARGET,
) -> dict[str, Any]:
    """The smallest hold-out fraction whose selective flip keeps ``keep`` of full flip's hold-out accuracy gain.

    Why per run: a weaker model is unsure of more images, so a fixed 20% leaves more of flip's gain behind at small
    widths (3-epoch width 0.25 lost 0.34 points against full flip where width 0.5 lost 0.14). Selecting the k
    least confident hold-out images (what a threshold at the k-th smallest confidence does) gives
    plain accuracy + the flip's net gain on those k; the first k reaching ``keep`` x the full gain is chosen, at most
    ``cap`` of the hold-out. The gain is counted in whole hold-out images (1000 by default), so it carries the
    hold-out's sampling noise: when flip's net gain is under ``min_gain`` images the curve is too coarse to fit on,
    and the fixed ``fallback`` fraction is taken instead (``fell_back`` in the record). Flip gaining nothing at all
    is such a case too: the hold-out cannot tell "flip is useless here" from "too few images to see it". The
    manifest records the counts.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    plain = np.asarray(plain_hits, dtype=bool)
    flip = np.asarray(flip_hits, dtype=bool)
    if not (len(conf) == len(plain) == len(flip)) or len(conf) == 0:
        raise DawnpipeError("auto selective target needs hold-out images", "train with --holdout greater than 0")
    order = np.argsort(conf, kind="stable")
    net = flip[order].astype(np.int64) - plain[order].astype(np.int64)  # +1 flip fixes it, -1 flip breaks it
    gains = np.concatenate([[0], np.cumsum(net)])  # gains[k]: selecting the k least confident images
    full = int(gains[-1])
    limit = int(np.floor(cap * len(conf)))
    fell_back, capped = full < max(min_gain, 1), False
    if fell_back:
        k = int(round(fallback * len(conf)))
    else:
        reach = np.nonzero(gains[: limit + 1] >= keep * full)[0]
        capped = len(reach) == 0
        k = limit if capped else int(reach[0])
    return {
        "target_fraction": k / len(conf),
        "rule": f"smallest hold-out fraction whose selective flip keeps >= {keep:g} of full flip's hold-out gain, "
        f"at most {cap:g}; {fallback:g} when that gain is under {min_gain} images",
        "keep_gain": keep,
        "cap": cap,
        "min_gain_images": int(min_gain),
        "fallback_fraction": float(fallback),
        "fell_back": bool(fell_back),
        "capped": bool(capped),
        "holdout_images": int(len(conf)),
        "full_flip_gain_images": full,
        "selective_gain_images": int(gains[k]),
    }

"""The import's check: the adapted file's logits against the foreign file's own, on the same pixels, before the
adapted file is kept.

The foreign file runs in onnxruntime (CPU) fed the contract's preprocessing in float32
(export.adapter.reference_inputs); the adapted file is fed the uint8 pixels. ``count`` uniform random images and as
many class-balanced training images make the check set. A float32 model must agree within the import's tolerance
(1e-4); a float16 model within at least FP16_ULPS fp16 units in the last place of its largest logit, since
onnxruntime's CPU runs a float16 graph in mixed precision, differently alone and behind the adapter's cast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.export.adapter import ForeignContract, reference_inputs

FP16_ULPS = 8  # a float16 model's logit check: tolerance in fp16 units in the last place of its largest logit


def check_set(data: Any, count: int) -> tuple[np.ndarray, int]:
    """``count`` uniform random images and ``count`` class-balanced training images (uint8 NHWC), and how many are
    real."""
    from dawnpipe.train.data import balanced_subset

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    real = data.train_x[balanced_subset(data.train_y, min(count, len(data.train_y)))]
    return np.concatenate([noise, real]), len(real)


def reference_logits(
    session: Any, images: np.ndarray, foreign: Any, contract: ForeignContract, classes: int, order: list[int] | None
) -> np.ndarray:
    """The foreign file's own logits on ``images`` (the contract's preprocessing in float32), in the data's class
    order: what the adapted file must reproduce. Run before anything is written, so a model that does not score the
    data's ``classes`` (a symbolic class dimension is only known by running it) is refused in one line here."""
    feed = session.get_inputs()[0].name
    want = []
    for i in range(0, len(images), 128):
        x = reference_inputs(images[i : i + 128], contract, float16=foreign.float16_input)
        out = np.asarray(session.run(None, {feed: x})[0])
        if out.ndim != 2 or out.shape[0] != len(x):
            raise DawnpipeError(
                f"the model returned shape {list(out.shape)} for {len(x)} images, not [N, classes] logits",
                "export the model with its [N, classes] logits as the only output",
            )
        want.append(out.astype(np.float32))
    expected = np.concatenate(want)
    if expected.shape[1] != classes:
        raise DawnpipeError(
            f"the model scores {expected.shape[1]} classes; the data has {classes}",
            "import a model trained on this data's classes, or pass the data it was trained on",
        )
    return expected if order is None else expected[:, order]


def tolerance_for(given: float, expected: np.ndarray, float16: bool) -> dict[str, Any]:
    """The logit check's tolerance and why. A float32 model: ``given``. A float16 model: at least FP16_ULPS fp16 units
    in the last place of its largest logit, because onnxruntime's CPU runs a float16 graph in mixed precision (casts
    to float32 where it has no float16 kernel, and removes cast pairs), differently for the foreign graph alone and
    for it behind the adapter's cast: seen here, a 1.5e-4 logit difference on identical float16 inputs."""
    if not float16:
        return {"tolerance": given, "rule": "float32 model: the import's tolerance"}
    largest = float(np.abs(expected).max()) if expected.size else 0.0
    ulp = float(np.spacing(np.float16(min(largest, 65504.0))))
    return {
        "tolerance": max(given, FP16_ULPS * ulp),
        "rule": f"float16 model: the larger of the import's tolerance and {FP16_ULPS} fp16 units in the last place "
        f"of its largest logit ({largest:.4g})",
    }


def check_logits(path: Path, expected: np.ndarray, images: np.ndarray, real: int, tolerance: dict) -> dict:
    """The adapted file's logits against the foreign file's own (``expected``) on the same pixels, largest
    difference; raises to keep the adapted file from being renamed into place when they differ by more than
    ``tolerance["tolerance"]`` (recorded with its rule)."""
    from dawnpipe.export.onnx_export import compare_logits, run_onnxruntime

    result = {**compare_logits(run_onnxruntime(path, images), expected), "random_images": len(images) - real}
    result["real_images"] = real
    result["reference"] = "the foreign file in onnxruntime (CPU), fed the contract's preprocessing in float32"
    result["tolerance"], result["tolerance_rule"] = tolerance["tolerance"], tolerance["rule"]
    if not result["max_abs_diff"] <= tolerance["tolerance"]:
        raise DawnpipeError(
            f"the adapted model's logits differ from the foreign model's by {result['max_abs_diff']:.2e} "
            f"(tolerance {tolerance['tolerance']:.1e}); nothing was kept",
            "report this with the model file; a graph whose output depends on the batch cannot be adapted",
        )
    return result

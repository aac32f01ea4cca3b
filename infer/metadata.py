"""Every field of an artifact's self-description checked before anything uses it.

An ONNX file's dawnpipe metadata, an engine's JSON sidecar and a checkpoint's description arrive from outside
(copied, edited, damaged): a selective threshold that is not a number, a TTA mode that does not exist or a class
list that is not a list would otherwise surface as a traceback deep inside eval, predict or the server. Each field
is checked here by type and range, and the one-line error names the field, what it holds, and what it must be.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-asym")


def check_metadata(meta: dict[str, Any], path: Path) -> None:
    """Raise the one-line error naming the first field of ``meta`` that is missing, mistyped or out of range."""
    problem = _first_problem(meta)
    if problem:
        raise DawnpipeError(f"{path}: its metadata field {problem}", "re-export it with `dawnpipe export`")


def onnx_metadata(path: Path) -> dict[str, Any]:
    """The checked dawnpipe metadata of an ONNX file, as every ONNX-reading backend needs it before it loads."""
    from dawnpipe.export.onnx_export import read_metadata

    meta = read_metadata(path)
    if meta.get("format") != "dawnpipe-onnx/1":
        raise DawnpipeError(
            f"{path} was not exported by dawnpipe (no dawnpipe metadata)",
            "export it with `dawnpipe export`, which records the input contract",
        )
    check_metadata(meta, path)
    return meta


def _number(value: Any, low: float, high: float) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and low <= value <= high
    )


def _first_problem(meta: dict[str, Any]) -> str | None:  # noqa: C901 (one check per field reads best flat)
    from dawnpipe.common.tta import TTA_MODES, views

    classes = meta.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        return f"'classes' is {_show(classes)}, not a list of at least 2 class names"
    if len(set(classes)) != len(classes):
        return "'classes' names a class twice"
    contract = meta.get("input_contract")
    if not isinstance(contract, dict):
        return f"'input_contract' is {_show(contract)}, not an object"
    shape = contract.get("shape", [None, 32, 32, 3])
    if not isinstance(shape, list) or len(shape) != 4 or shape[1:] != [32, 32, 3]:
        return f"'input_contract.shape' is {_show(shape)}, not [N, 32, 32, 3]"
    norm = contract.get("normalization", {})
    if not isinstance(norm, dict):
        return f"'input_contract.normalization' is {_show(norm)}, not an object"
    for key, low in (("mean", 0.0), ("std", 1e-6)):
        values = norm.get(key, [low + 1] * 3)
        if not isinstance(values, list) or len(values) != 3 or not all(_number(v, low, 255.0) for v in values):
            return f"'input_contract.normalization.{key}' is {_show(values)}, not 3 numbers in [{low:g}, 255]"
    mode = meta.get("tta_mode", "none")
    if mode not in TTA_MODES:
        return f"'tta_mode' is {_show(mode)}, not one of {', '.join(TTA_MODES)}"
    shift = meta.get("tta_shift", 1)
    if not isinstance(shift, int) or isinstance(shift, bool) or not 1 <= shift <= 8:
        return f"'tta_shift' is {_show(shift)}, not a whole number of pixels from 1 to 8"
    count = meta.get("tta_views", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count != len(views(mode, shift)):
        return f"'tta_views' is {_show(count)}, but TTA mode {mode} has {len(views(mode, shift))} view(s)"
    precision = meta.get("precision", "fp32")
    if precision not in PRECISIONS:
        return f"'precision' is {_show(precision)}, not one of {', '.join(PRECISIONS)}"
    selective = meta.get("selective")
    if selective is not None:
        if not isinstance(selective, dict):
            return f"'selective' is {_show(selective)}, not an object or null"
        if "threshold" in selective and not _number(selective["threshold"], 0.0, 1.0):
            return f"'selective.threshold' is {_show(selective['threshold'])}, not a probability in [0, 1]"
        target = selective.get("target_fraction")
        if target is not None and not _number(target, 0.0, 1.0):
            return f"'selective.target_fraction' is {_show(target)}, not a fraction in [0, 1]"
        problem = _selective_modes(selective.get("modes"))
        if problem:
            return problem
    for key in ("run_id", "lineage", "weights"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            return f"'{key}' is {_show(meta[key])}, not a string"
    if "complete" in meta and not isinstance(meta["complete"], bool):
        return f"'complete' is {_show(meta['complete'])}, not true or false"
    data = meta.get("data")
    if data is not None and not (
        isinstance(data, dict) and all(v is None or isinstance(v, str) for v in data.values())
    ):
        return f"'data' is {_show(data)}, not an object of strings"
    if meta.get("model_config") is not None and not isinstance(meta["model_config"], dict):
        return f"'model_config' is {_show(meta['model_config'])}, not an object"
    return None


def _selective_modes(modes: Any) -> str | None:
    """The per-mode thresholds of an artifact fitted per mode: known selective modes, each a probability."""
    from dawnpipe.common.tta import SELECTIVE_MODES

    if modes is None:
        return None
    if not isinstance(modes, dict):
        return f"'selective.modes' is {_show(modes)}, not an object"
    for mode, record in modes.items():
        if mode not in SELECTIVE_MODES:
            return f"'selective.modes' names {_show(mode)}, not one of {', '.join(SELECTIVE_MODES)}"
        if not isinstance(record, dict) or not _number(record.get("threshold"), 0.0, 1.0):
            return f"'selective.modes.{mode}.threshold' is not a probability in [0, 1]"
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

"""The training checkpoint: raw and EMA weights, model config, input contract, classes, metrics, resume state.

Saved with ``torch.save`` to a temporary name and renamed. Loaded with ``weights_only=True`` (plain containers
and tensors only), and checked for its format tag and version so a foreign or truncated file gets a one-line
error instead of a traceback.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dawnpipe.common.device import AUTOCAST_DTYPES, DeviceChoice, dtype_name
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import atomic_write
from dawnpipe.train.config import MODEL_FIELDS_ADDED, ModelConfig
from dawnpipe.train.model import ResNet9

FORMAT = "dawnpipe-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def input_contract(normalization: dict[str, list[float]]) -> dict[str, Any]:
    """What a deployed model takes: uint8 NHWC RGB 32x32 pixels, normalised inside the model."""
    return {
        "name": "images",
        "dtype": "uint8",
        "layout": "NHWC",
        "shape": [None, 32, 32, 3],
        "channels": "RGB",
        "normalization": normalization,
        "output": {"name": "logits", "dtype": "float32", "shape": [None, 10]},
    }


def checkpoint_meta(payload: dict[str, Any]) -> dict[str, Any]:
    """What a loaded checkpoint says about itself, in the same keys as an ONNX file's dawnpipe metadata."""
    return {
        "input_contract": payload.get("input") or input_contract(payload["normalization"]),
        "classes": list(payload["classes"]),
        "tta_mode": "none",
        "tta_views": 1,
        "selective": payload.get("selective"),
        "run_id": payload.get("run_id"),
        "data": {k: payload.get("data", {}).get(k) for k in ("source", "sha256")},
        "model_config": payload.get("model_config"),
        "complete": bool(payload.get("state", {}).get("complete", True)),
    }


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file, with a clear error if it is missing."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise DawnpipeError(
            f"checkpoint {path} does not exist", "pass a run folder or checkpoint made by `dawnpipe train`"
        )
    if not path.is_file():
        raise DawnpipeError(f"checkpoint {path} is not a regular file", "pass a checkpoint.pt made by `dawnpipe train`")
    return path


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically (a full disk is one ``DiskFull`` line, the previous checkpoint left whole); ``payload``
    gets the format tag and version."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), expected_bytes=_tensor_bytes(payload))


def _tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in a nested payload: what a checkpoint file is, give or take its small metadata."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def parameter_count(model_cfg: ModelConfig | dict[str, Any]) -> int:
    """Numbers in the model's state (weights, biases, BatchNorm statistics), counted without allocating them."""
    if isinstance(model_cfg, dict):
        model_cfg = ModelConfig(**{**MODEL_FIELDS_ADDED, **model_cfg})
    with torch.device("meta"):
        return sum(t.numel() for t in ResNet9(model_cfg).state_dict().values())


def checkpoint_bytes(model_cfg: ModelConfig) -> int:
    """About how large a checkpoint of this model is (weights, EMA, momentum in fp32, plus 1 MB of the rest),
    known before training: the room a run folder needs, checked before any work."""
    return 3 * 4 * parameter_count(model_cfg) + (1 << 20)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a dawnpipe checkpoint (tensors on CPU)."""
    path = resolve_checkpoint(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and unpickler errors all mean the same thing to a user
        raise DawnpipeError(
            f"{path} is not a readable checkpoint ({type(err).__name__}); it may be truncated or not a PyTorch file",
            "retrain, or point at an intact checkpoint.pt",
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DawnpipeError(
            f"{path} was not made by dawnpipe (no {FORMAT!r} tag)", "export checkpoints written by `cli.py train`"
        )
    if payload.get("version") != VERSION:
        raise DawnpipeError(
            f"{path} is a version {payload.get('version')} checkpoint; this dawnpipe reads version {VERSION}",
            "retrain with this version, or use the dawnpipe that made it",
        )
    problem = _schema_problem(payload)
    if problem:
        raise DawnpipeError(f"{path} is damaged: {problem}", "retrain, or point at an intact checkpoint.pt")
    return payload


def _schema_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with a tagged checkpoint's fields, or None: every key the loaders read, checked by type."""
    import math

    from dawnpipe.train.config import TrainConfig

    for key, kind in (("model_config", dict), ("model", dict), ("ema", dict), ("normalization", dict)):
        if not isinstance(payload.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    # fields added since this version was defined take the values the older checkpoint was trained with
    model_config = payload["model_config"] = {**MODEL_FIELDS_ADDED, **payload["model_config"]}
    fields = ModelConfig.__dataclass_fields__
    unknown, missing = sorted(set(model_config) - set(fields)), sorted(set(fields) - set(model_config))
    if unknown or missing:
        return f"its model config has unknown keys {unknown} and lacks {missing}"
    kinds = {"float": float, "int": int, "bool": bool}
    for name, value in model_config.items():
        want = kinds[str(fields[name].type)]
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = isinstance(value, bool) if want is bool else number and (want is float or isinstance(value, int))
        if not ok:
            return f"model config field {name!r} is {value!r}, not a finite {want.__name__}"
    classes = payload.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        return "'classes' is not a list of at least 2 names"
    if len(classes) != model_config["num_classes"]:
        return f"it names {len(classes)} classes but its model has {model_config['num_classes']} outputs"
    norm = payload["normalization"]
    for key in ("mean", "std"):
        values = norm.get(key)
        if not isinstance(values, list) or len(values) != 3 or not all(isinstance(v, int | float) for v in values):
            return f"normalization {key!r} is not 3 numbers"
        if not all(math.isfinite(v) for v in values) or (key == "std" and min(values) <= 0):
            return f"normalization {key!r} holds {values}"
    for key in ("model", "ema"):
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload[key].items()):
            return f"{key!r} weights are not a mapping of names to tensors"
    train_config = payload.get("train_config", {})
    if not isinstance(train_config, dict):
        return "'train_config' is not a dict"
    unknown = sorted(set(train_config) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        return f"its training config has unknown keys {unknown} (made by a newer dawnpipe?)"
    if not isinstance(payload.get("state", {}), dict):
        return "'state' is not a dict"
    return None


def model_from_checkpoint(payload: dict[str, Any], weights: str = "ema") -> ResNet9:
    """An eval-mode ResNet-9 holding the ``ema`` or ``raw`` weights of a loaded checkpoint."""
    if weights not in ("ema", "raw"):
        raise DawnpipeError(f"unknown weights {weights!r}", "use --weights ema or raw")
    model = ResNet9(ModelConfig(**payload["model_config"]))
    state = payload["ema"] if weights == "ema" else payload["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise DawnpipeError(
            f"checkpoint weights do not fit its model config ({str(err).splitlines()[0]})",
            "the checkpoint is damaged; retrain",
        ) from None
    return model.eval()


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's generator states (CPU, and CUDA on a GPU run): stochastic depth draws its masks from them."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: Any, device: torch.device) -> None:
    """Put back the generator state a checkpoint kept (absent in checkpoints from before stochastic depth)."""
    if not isinstance(state, dict):
        return
    if isinstance(state.get("cpu"), torch.Tensor):
        torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and isinstance(state.get("cuda"), torch.Tensor):
        torch.cuda.set_rng_state(state["cuda"], device)


def resumed_precision(dev: DeviceChoice, saved: dict[str, Any] | None) -> DeviceChoice:
    """A resumed run keeps the autocast precision it started with on the same kind of device.

    The machines differ from day to day (one CPU has native bf16, the next does not), and a run trained half in
    fp32 and half in bf16 could not be described by one precision. bf16 on a CPU without it is emulated (slow) but
    exact to the recipe; the notice says so.
    """
    if not saved or saved.get("device") != dev.device.type:
        return dev
    want = AUTOCAST_DTYPES.get(saved.get("autocast"), dev.autocast_dtype)
    if want == dev.autocast_dtype:
        return dev
    print(
        f"notice: the run started in {saved['autocast']} and continues in it (this machine alone would choose "
        f"{dtype_name(dev.autocast_dtype)})",
        file=sys.stderr,
        flush=True,
    )
    return replace(dev, autocast_dtype=want)

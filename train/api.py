"""The training entry point shared by the CLI and Python callers (plain options in, TrainResult out)."""

from __future__ import annotations

from typing import Any

from dawnpipe.train.config import ModelConfig, TrainConfig
from dawnpipe.train.trainer import TrainResult, train

_RENAMED = {"lr": "lr_peak"}  # CLI option name -> TrainConfig field
_PATHS = ("data", "out", "resume")  # stored as strings so configs serialise to JSON


def config_from_options(**options: Any) -> TrainConfig:
    """Build the frozen config from CLI-style options; an option left out keeps the dataclass default.

    ``width`` sets ``model.width``; ``lr`` sets ``lr_peak``; every other key is a TrainConfig field name.
    """
    model = ModelConfig(width=options.pop("width")) if "width" in options else ModelConfig()
    fields: dict[str, Any] = {}
    for key, value in options.items():
        if key in _PATHS and value is not None:
            value = str(value)
        fields[_RENAMED.get(key, key)] = value
    unknown = sorted(set(fields) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown training options {unknown}")
    return TrainConfig(model=model, **fields)


def train_command(progress: bool = True, **options: Any) -> TrainResult:
    """Train from CLI options; under torchrun the run is distributed (see train.distributed)."""
    from dawnpipe.train.distributed import launched_by_torchrun, run_distributed

    cfg = config_from_options(**options)
    if launched_by_torchrun():
        return run_distributed(cfg, progress=progress)
    return train(cfg, progress=progress)

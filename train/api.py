"""The training entry point shared by the CLI and Python callers (plain options in, TrainResult out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train.config import TrainConfig
from train.model import ModelConfig
from train.trainer import TrainResult, train


def config_from_options(
    *,
    data: Path | None = None,
    epochs: int = 10,
    batch_size: int = 512,
    lr: float = 1.0,
    width: float = 1.0,
    cutout: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    device: str = "auto",
    out: Path = Path("runs"),
    name: str | None = None,
    eval_every: int = 1,
    resume: Path | None = None,
    sync_bn: bool = False,
) -> TrainConfig:
    """Build the frozen config from CLI-style options (anything not named keeps the recipe default)."""
    return TrainConfig(
        data=str(data) if data else None,
        epochs=epochs,
        batch_size=batch_size,
        lr_peak=lr,
        model=ModelConfig(width=width),
        cutout=cutout,
        train_limit=train_limit,
        test_limit=test_limit,
        seed=seed,
        device=device,
        out=str(out),
        name=name,
        eval_every=eval_every,
        resume=str(resume) if resume else None,
        sync_bn=sync_bn,
    )


def train_command(progress: bool = True, **options: Any) -> TrainResult:
    """Train from CLI options; under torchrun the run is distributed (see train.distributed)."""
    from train.distributed import launched_by_torchrun, run_distributed

    cfg = config_from_options(**options)
    if launched_by_torchrun():
        return run_distributed(cfg, progress=progress)
    return train(cfg, progress=progress)

"""What a finished run records: honest clocks, the selective-TTA calibration, and the run folder's manifest."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import torch

from dawnpipe.common.device import DeviceChoice
from dawnpipe.common.manifest import artifact_entry, update_manifest
from dawnpipe.train.calibration import BASE_MODES, fit_thresholds
from dawnpipe.train.checkpoint import input_contract
from dawnpipe.train.config import TrainConfig
from dawnpipe.train.data import Cifar
from dawnpipe.train.evaluation import correct, plain_confidence


def clocks(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The first epoch's seconds apart from the steady state (median images/s of epochs 2..N).

    The first epoch pays for compilation, cuDNN autotuning and CUDA's start; folding it into one average would
    make a compiled run look slower than it runs and a short run slower than a long one.
    """
    steady = [h["train_images_per_s"] for h in history[1:] if "train_images_per_s" in h]
    return {
        "first_epoch_seconds": history[0]["train_seconds"] if history else None,
        "steady_images_per_s": statistics.median(steady) if steady else None,
        "steady_epochs": len(steady),
    }


def process_starts(history: list[dict[str, Any]]) -> list[int]:
    """Indices of the epochs that began a process: ``elapsed_s`` restarts with each process (epochs without a
    recorded clock are skipped)."""
    starts, last = [], None
    for i, h in enumerate(history):
        elapsed = h.get("elapsed_s")
        if isinstance(elapsed, int | float):
            if last is None or elapsed < last:
                starts.append(i)
            last = elapsed
    return starts


def wall_over_processes(earlier: list[dict[str, Any]], this_process_seconds: float) -> dict[str, Any]:
    """Wall time over every process a resumed run took: the wall of each earlier process up to its last finished
    epoch (from ``earlier``, the epochs those processes recorded) plus this process's. Work an interruption threw
    away after an epoch's end is not counted, so a resumed run's figure is a lower bound; a run trained in one
    process gets its plain wall time. Checkpoints that carry a ``clock`` (see ``carried_clock``) give exact walls."""
    return over_processes(_walls_from_history(earlier), this_process_seconds)


def over_processes(earlier_walls: list[float], this_process_seconds: float) -> dict[str, Any]:
    """The wall over all processes from each earlier process's wall and this one's."""
    total = sum(earlier_walls) + this_process_seconds
    return {"wall_seconds_all_processes": total, "processes": len(earlier_walls) + 1}


def carried_clock(state: dict[str, Any], history: list[dict[str, Any]]) -> tuple[list[float], float]:
    """What earlier processes of a resumed run spent: each one's wall up to its interruption, and the seconds
    already spent in the epoch it stopped in (a step-exact checkpoint keeps that work, so its time counts too).

    Read from the checkpoint's ``clock``; a checkpoint written before the clock existed (or one whose clock is
    malformed: the file is untrusted) falls back to the walls its history shows and no carried epoch time.
    """
    clock = state.get("clock")
    if isinstance(clock, dict):
        walls, partial = clock.get("process_walls"), clock.get("partial_epoch_seconds", 0.0)
        if isinstance(walls, list) and all(_seconds(w) for w in walls) and _seconds(partial):
            return [float(w) for w in walls], float(partial)
    return _walls_from_history(history), 0.0


def _seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _walls_from_history(earlier: list[dict[str, Any]]) -> list[float]:
    starts = set(process_starts(earlier))
    walls: list[float] = []  # each earlier process's elapsed_s at its last timed epoch
    for i, h in enumerate(earlier):
        elapsed = h.get("elapsed_s")
        if isinstance(elapsed, int | float):
            if i in starts:
                walls.append(elapsed)
            else:
                walls[-1] = elapsed
    return walls


def calibrate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    dev: DeviceChoice,
    target: float | str,
) -> dict[str, Any]:
    """Selective TTA's per-image thresholds for the checkpoint, one per selective mode, on the hold-out through
    the model as it is served from the checkpoint (EMA weights, this device's precision): at the fixed ``target``
    fraction, or with ``auto`` at the fraction train.calibration.auto_target fits to each mode's own hold-out gain."""
    confidence = plain_confidence(model, images, mean, std, dev)
    hits = {mode: correct(model, images, labels, mean, std, dev, mode).cpu().numpy() for mode in ("none", *BASE_MODES)}
    plain = hits.pop("none")
    through = f"torch {dev.describe()['precision']} on {dev.device.type} (training, EMA weights)"
    return fit_thresholds(confidence, plain, hits, target, through)


def write_manifest(
    run_dir: Path,
    ckpt: Path,
    cfg: TrainConfig,
    dev: DeviceChoice,
    data: Cifar,
    norm: dict[str, list[float]],
    final: dict[str, Any],
    world: int,
    holdout: dict[str, Any],
    selective: dict[str, Any] | None,
    run_id: str,
) -> None:
    metrics = {k: v for k, v in final.items() if not k.endswith("_unix")}
    entry = artifact_entry(
        run_dir,
        ckpt,
        made_from={"data": data.source, "data_sha256": data.source_sha256},
        input_contract=input_contract(norm),
        metrics=metrics,
        kind="checkpoint",
        classes=list(data.classes),
        selective=selective,
        run_id=run_id,
    )
    record = {
        "run_id": run_id,
        "config": cfg.to_dict(),
        "device": dev.describe(),
        "data": data.describe(),
        "holdout": holdout,
        "world_size": world,
        "global_batch": cfg.batch_size,
        "metrics": metrics,
    }
    update_manifest(run_dir, run=("train", record), artifacts={"checkpoint": entry})

"""Recipe ablation: candidate recipes trained side by side, accuracy at equal epochs and at equal time.

    python bench/recipe.py --candidates page,whiten-bias --width 0.25 --epochs 3 --seeds 0,1 [--data PATH] [--out DIR]

A candidate is a preset plus config fields (CANDIDATES below). Candidates are interleaved (page s0, airbench s0,
page s1, airbench s1, ...) so drift of a shared machine hits all alike. Each run is a normal `dawnpipe train`
run folder under --out (default bench/results/recipe-runs), so its manifest holds the full config. A finished
run of the same name and config is reused, never silently retrained (--retrain replaces it), so adding a
candidate or a seed trains only what is new; its training clock is then the one it had when it ran.

Reported per candidate: mean and range over seeds of the EMA test accuracy without and with flip TTA after the
last epoch; the trainer's own training clock; the plain accuracy each candidate had reached (per-epoch
history) by the time the fastest candidate finished; and, against the first candidate, the paired difference
on the same test images pooled over matched seeds with its exact 95% interval (costs.stats). That interval
covers test-set sampling only; seed-to-seed spread is the per-seed range beside it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import ROOT, data_source, write_result  # noqa: E402
from dawnpipe.common.device import choose_device  # noqa: E402
from dawnpipe.costs.stats import paired_difference  # noqa: E402
from dawnpipe.train.api import config_from_options  # noqa: E402
from dawnpipe.train.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from dawnpipe.train.config import TrainConfig  # noqa: E402
from dawnpipe.train.data import load_cifar  # noqa: E402
from dawnpipe.train.evaluation import correct  # noqa: E402
from dawnpipe.train.trainer import train  # noqa: E402

CANDIDATES = {  # name -> (preset, config fields over it)
    "page": ("page", {}),
    "airbench": ("page", {"flip_mode": "alternating", "lookahead": True}),  # arXiv 2404.00498; hlb-CIFAR10
    "alternating-flip": ("page", {"flip_mode": "alternating"}),
    "lookahead": ("page", {"lookahead": True}),
    "bn-momentum": ("page", {"bn_momentum": 0.4}),  # airbench94's running-statistics momentum
    "whiten-bias": ("page", {"whiten_bias": True}),  # airbench94: learnable whitening bias, first 3/8 of training
    "preact": ("page", {"preact": True}),  # pre-activation residual branches (He et al. 2016; CS230 report)
    "stochastic-depth": ("page", {"stochastic_depth": 0.1}),  # Huang et al. 2016; ResNet-9 has 2 branches to drop
    "batch-1024": ("page", {"batch_size": 1024}),  # lr scaled linearly to 2x (lr_scaling "linear", Goyal et al.)
    "whiten-bias+bn-momentum": ("page", {"whiten_bias": True, "bn_momentum": 0.4}),  # the two that paid alone
}


def _accuracy_by(history: list[dict], seconds: float) -> float | None:
    """Plain EMA test accuracy of the last epoch finished within ``seconds`` of training clock."""
    clock, reached = 0.0, None
    for record in history:
        clock += record["train_seconds"]
        if clock <= seconds * (1 + 1e-9) and "ema_test_acc" in record:
            reached = record["ema_test_acc"]
    return reached


def _finished(cfg: TrainConfig) -> dict | None:
    """The loaded checkpoint of a finished run with exactly this config, if one is there."""
    ckpt = Path(cfg.out) / str(cfg.name) / "checkpoint.pt"
    if not ckpt.is_file():
        return None
    payload = load_checkpoint(ckpt)
    recorded = TrainConfig.from_dict(payload["train_config"])
    same = replace(recorded, overwrite=cfg.overwrite, out=cfg.out) == cfg  # found in this folder: out is the same
    return payload if payload["state"].get("complete") and same else None


def _correct(payload: dict, test_x: torch.Tensor, test_y: torch.Tensor) -> dict[str, np.ndarray]:
    """Per test image and TTA mode (none, flip): does the run's EMA model get it right (train.evaluation)."""
    model = model_from_checkpoint(payload, "ema")
    mean, std = (torch.tensor(payload["normalization"][k]) for k in ("mean", "std"))
    dev = choose_device("cpu")
    return {tta: correct(model, test_x, test_y, mean, std, dev, tta).numpy() for tta in ("none", "flip")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default="page,airbench", help=f"from {', '.join(CANDIDATES)}")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--data", default=data_source())
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recipe-runs")
    parser.add_argument("--retrain", action="store_true", help="replace finished runs instead of reusing them")
    args = parser.parse_args()
    presets, seeds = args.candidates.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(presets) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {unknown}; use names from {', '.join(CANDIDATES)}")
    data = load_cifar(args.data)
    test_x, test_y = torch.from_numpy(data.test_x), torch.from_numpy(data.test_y)
    runs: dict[str, list[dict]] = {p: [] for p in presets}
    hits: dict[tuple[str, int, str], np.ndarray] = {}
    for seed in seeds:
        for preset in presets:  # interleaved: each seed trains every candidate before the next seed
            base, fields = CANDIDATES[preset]
            name = f"{preset}-w{args.width:g}-e{args.epochs}-s{seed}"
            cfg = config_from_options(preset=base, **fields, data=args.data, epochs=args.epochs, width=args.width,
                                      seed=seed, out=args.out, name=name, overwrite=args.retrain)  # fmt: skip
            payload = None if args.retrain else _finished(cfg)
            reused = payload is not None
            payload = payload or load_checkpoint(train(cfg, progress=False).checkpoint)
            final, history = payload["metrics"]["final"], payload["metrics"]["epochs"]
            runs[preset].append({**final, "seed": seed, "history": history, "reused": reused})
            for tta, correct_per_image in _correct(payload, test_x, test_y).items():
                hits[preset, seed, tta] = correct_per_image
            print(f"{preset} seed {seed}: {final['ema_test_acc']:.4f} plain, {final['ema_test_acc_flip']:.4f} flip, "
                  f"{final['train_seconds']:.0f} s{' (reused)' if reused else ''}", flush=True)  # fmt: skip
    fastest = min(np.mean([r["train_seconds"] for r in rs]) for rs in runs.values())
    summary = {}
    for preset, rs in runs.items():
        plain = np.array([r["ema_test_acc"] for r in rs])
        flip = np.array([r["ema_test_acc_flip"] for r in rs])
        summary[preset] = {
            "seeds": seeds,
            "plain_mean": float(plain.mean()),
            "plain_range": [float(plain.min()), float(plain.max())],
            "flip_mean": float(flip.mean()),
            "flip_range": [float(flip.min()), float(flip.max())],
            "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rs])),
            "plain_at_fastest_time": [_accuracy_by(r["history"], fastest) for r in rs],
            "per_seed": [
                {k: r[k] for k in ("seed", "ema_test_acc", "ema_test_acc_flip", "train_seconds", "reused")} for r in rs
            ],  # fmt: skip
            f"minus_{presets[0]}": {
                tta: paired_difference(
                    [hits[preset, s, tta] for s in seeds], [hits[presets[0], s, tta] for s in seeds]
                ).to_dict()
                for tta in ("none", "flip")
            },  # fmt: skip
        }
    write_result(
        "recipe",
        {"data": args.data, "width": args.width, "epochs": args.epochs, "equal_time_s": fastest, "presets": summary},
    )


if __name__ == "__main__":
    main()

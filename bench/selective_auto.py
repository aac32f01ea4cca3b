"""Selective flip's fraction, policy by policy, on finished runs: how much of full flip's test gain each keeps.

    python bench/selective_auto.py RUN_DIR... [--fixed 0.1,0.2,0.3] [--name selective_auto]

For every run this rebuilds the run's own calibration hold-out (checked against the sha256 of its indices in the
checkpoint), runs the EMA model (torch fp32, the trainer's own evaluation code) on the hold-out and on the test
set once per flip view, and then applies each policy exactly as training would: a fraction of the hold-out, a
confidence threshold at that quantile, and on test the flip views for the images below the threshold.
Policies: `auto` as the run recorded it (refitted here without the gain floor, and checked against the record),
`auto` as it is now (train.calibration.auto_target: a floor on flip's hold-out gain, else the fixed default), and
each --fixed fraction. Reported per run and policy: hold-out fraction, selected fraction on test, test accuracy,
and the share of full flip's test gain kept; then the mean over runs. Accuracy only: no timing, so it may run
beside other work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result  # noqa: E402
from dawnpipe.common.tta import combine, softmax_confidence, view_logits, views  # noqa: E402
from dawnpipe.train.calibration import (  # noqa: E402
    auto_target,
    calibrate_threshold,
    describe_holdout,
    split_holdout,
)
from dawnpipe.train.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from dawnpipe.train.data import load_cifar  # noqa: E402
from dawnpipe.train.model import normalize  # noqa: E402


@torch.no_grad()
def _outcomes(model, images: np.ndarray, labels: np.ndarray, mean, std) -> dict[str, np.ndarray]:
    """Plain-view confidence and plain / flip hits per image, from one pass per view."""
    flip = views("flip")
    assert flip[0].is_identity()  # the plain view's logits are the first view's
    run = lambda x: model(normalize(x, mean, std, torch.float32)).float()  # noqa: E731
    per_view = view_logits(run, torch.from_numpy(images), flip, batch=500)
    plain = per_view[0].numpy()
    both = combine(per_view, flip).numpy()
    return {
        "confidence": softmax_confidence(plain),
        "plain": plain.argmax(1) == labels,
        "flip": both.argmax(1) == labels,
    }


def _apply(fraction: float, held: dict, test: dict) -> dict[str, float]:
    """Threshold at ``fraction`` of the hold-out; on test, flip where the plain confidence is below it."""
    threshold = calibrate_threshold(held["confidence"], fraction)["threshold"]
    chosen = test["confidence"] < threshold
    hits = np.where(chosen, test["flip"], test["plain"])
    gain = test["flip"].mean() - test["plain"].mean()
    return {
        "holdout_fraction": fraction,
        "test_selected": float(chosen.mean()),
        "accuracy": float(hits.mean()),
        "share_of_flip_gain": float((hits.mean() - test["plain"].mean()) / gain) if gain > 0 else float("nan"),
    }


def _study(run_dir: Path, fixed: list[float]) -> dict:
    payload = load_checkpoint(run_dir)
    cfg, data_info, selective = payload["train_config"], payload["data"], payload["selective"]
    data = load_cifar(
        data_info["source"], train_limit=cfg["train_limit"], test_limit=cfg["test_limit"],
        trusted_sha256=data_info["sha256"],
    )  # fmt: skip
    _, held_idx = split_holdout(data.train_y, cfg["holdout"], cfg["batch_size"])
    if describe_holdout(held_idx, len(data.train_y))["indices_sha256"] != selective["holdout"]["indices_sha256"]:
        raise SystemExit(f"{run_dir}: the rebuilt hold-out differs from the one the run calibrated on")
    model = model_from_checkpoint(payload)  # on the CPU, in eval mode
    mean = torch.tensor(payload["normalization"]["mean"])
    std = torch.tensor(payload["normalization"]["std"])
    held = _outcomes(model, data.train_x[held_idx], data.train_y[held_idx], mean, std)
    test = _outcomes(model, data.test_x, data.test_y, mean, std)
    # the rule before the floor; for a flip gain of 0 or less it chose 0 where this refit takes the fallback, and
    # refit_matches_record then says False
    as_run = auto_target(held["confidence"], held["plain"], held["flip"], min_gain=0)
    recorded = selective.get("auto", {}).get("target_fraction")
    now = auto_target(held["confidence"], held["plain"], held["flip"])
    policies = {"auto as run": as_run["target_fraction"], "auto now": now["target_fraction"]}
    policies.update({f"fixed {f:g}": f for f in fixed})
    return {
        "run": run_dir.name,
        "width": payload["model_config"]["width"],
        "seed": cfg["seed"],
        "holdout_flip_gain_images": now["full_flip_gain_images"],
        "recorded_auto_fraction": recorded,
        "refit_matches_record": recorded is None or abs(recorded - as_run["target_fraction"]) < 1e-9,
        "auto_now_fell_back": now["fell_back"],
        "test_plain": float(test["plain"].mean()),
        "test_flip": float(test["flip"].mean()),
        "policies": {name: _apply(f, held, test) for name, f in policies.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--fixed", default="0.1,0.2,0.3", help="comma-separated fixed hold-out fractions")
    parser.add_argument("--name", default="selective_auto", help="bench/results/<name>.json")
    args = parser.parse_args()
    fixed = [float(f) for f in args.fixed.split(",") if f]
    studies = [_study(run, fixed) for run in args.runs]
    names = list(studies[0]["policies"])
    summary = {
        name: {
            "mean_accuracy": float(np.mean([s["policies"][name]["accuracy"] for s in studies])),
            "mean_test_selected": float(np.mean([s["policies"][name]["test_selected"] for s in studies])),
            "mean_share_of_flip_gain": float(np.nanmean([s["policies"][name]["share_of_flip_gain"] for s in studies])),
            "min_share_of_flip_gain": float(np.nanmin([s["policies"][name]["share_of_flip_gain"] for s in studies])),
        }
        for name in names
    }
    for s in studies:
        cells = "  ".join(
            f"{n}: {p['accuracy'] * 100:.2f}% @{p['test_selected'] * 100:.1f}%" for n, p in s["policies"].items()
        )
        print(f"{s['run']:>16} gain {s['holdout_flip_gain_images']:>3}  {cells}", file=sys.stderr)
    write_result(
        args.name,
        {
            "model": "EMA weights, torch fp32 on CPU, flip = mean of plain and mirrored logits",
            "data": "each run's own hold-out (rebuilt, sha256 checked) and its full test set",
            "runs": studies,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()

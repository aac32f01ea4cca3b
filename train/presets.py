"""Named training recipes: each a set of TrainConfig/ModelConfig values over the dataclass defaults.

    cfg = preset_config("quick", {"seed": 1})      # the preset's values, then the options given explicitly

- ``page``: D. Page's post-8 recipe exactly (the dataclass defaults), so its published result stays
  reproducible: 10 epochs, batch 512, width 1, random flips, EMA of weights.
- ``quick``: a first look in minutes on a laptop CPU: width 0.5 and 3 epochs of the same recipe, 7.5% of the
  10-epoch recipe's training compute (images x FLOPs). Measured on the JPEG copy of CIFAR-10, seeds 0 and 1:
  82.9% plain, 83.6% with flip TTA (README, Results).

- ``page-bn``: ``page`` with airbench94's BatchNorm momentum (0.4 per step instead of 0.1), the one switch that
  paid: +0.21 points plain and +0.20 with flip at equal epochs and an equal clock, every one of 3 seeds positive
  (width 0.25, 3 epochs, paired over 30,000 predictions; README, "Recipe ablation"). Not the default: measured
  only at that reduced scale, and far short of buying an epoch.

Not a preset: the other recipe switches in TrainConfig/ModelConfig (airbench's alternating flip, lookahead EMA and
whitening bias; pre-activation branches; stochastic depth; a larger batch). bench/recipe.py measured
each against ``page`` at width 0.25 and 3 epochs, 2 seeds (README, "Recipe ablation"): none gained, while one epoch
fewer costs about 6.6 points, so no preset turns one on.

Options given explicitly win over the preset's values; each override is reported so a user sees which won.
The preset's name is recorded in the run's config (manifest and checkpoint).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.train.config import ModelConfig, TrainConfig

DEFAULT_PRESET = "page"
PRESETS: dict[str, dict[str, Any]] = {
    "page": {},
    "quick": {"epochs": 3, "width": 0.5},
    "page-bn": {"bn_momentum": 0.4},
}


def check_preset(name: str) -> dict[str, Any]:
    """The preset's values, or the one-line error listing the known presets."""
    if name not in PRESETS:
        raise DawnpipeError(f"unknown preset {name!r}", f"use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_config(name: str, explicit: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """TrainConfig from the preset, then ``explicit`` on top; names are TrainConfig or ModelConfig fields.

    Returns the config and a note per preset value an explicit option replaced.
    """
    values = dict(check_preset(name))
    notes = [
        f"--{k.replace('_', '-')} {explicit[k]} overrides preset {name}'s {k}={values[k]}"
        for k in sorted(set(values) & set(explicit))
        if explicit[k] != values[k]
    ]
    values.update(explicit)
    model_fields = set(ModelConfig.__dataclass_fields__) - {"num_classes"}  # the data decides the class count
    model = replace(ModelConfig(), **{k: values.pop(k) for k in sorted(model_fields & set(values))})
    unknown = sorted(set(values) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown training options {unknown}")
    return TrainConfig(**{**values, "model": model, "preset": name}), notes

"""The recipe switches and presets: alternating flip, the lookahead EMA, presets through the manifest, the CLI's
override rule, and resume under the new recipe."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.train import trainer as trainer_mod
from dawnpipe.train.api import config_and_notes, config_from_options
from dawnpipe.train.augment import alternating_flips, augment
from dawnpipe.train.checkpoint import load_checkpoint
from dawnpipe.train.config import TrainConfig
from dawnpipe.train.ema import EMA
from dawnpipe.train.presets import PRESETS
from dawnpipe.train.trainer import train
from tests.train.test_trainer import _StopAfter


def test_alternating_flip_flips_each_image_exactly_once_per_pair_of_epochs():
    n = 1000
    for epoch in range(0, 6, 2):
        first, second = alternating_flips(n, seed=3, epoch=epoch), alternating_flips(n, seed=3, epoch=epoch + 1)
        assert bool((first ^ second).all())  # flipped in exactly one epoch of the pair
        assert torch.equal(first, alternating_flips(n, seed=3, epoch=0))  # the same half every even epoch
    assert 400 < int(alternating_flips(n, seed=3, epoch=0).sum()) < 600  # a random half to start
    assert not torch.equal(alternating_flips(n, 3, 0), alternating_flips(n, 4, 0))  # seeded


def test_augment_applies_the_given_flips():
    images = torch.arange(2 * 4 * 4 * 3, dtype=torch.uint8).reshape(2, 4, 4, 3)
    flips = torch.tensor([True, False])
    out = augment(images, torch.Generator().manual_seed(0), pad=0, flip=True, cutout=0, flips=flips)
    assert torch.equal(out[0], images[0].flip(1)) and torch.equal(out[1], images[1])


def test_lookahead_update_matches_a_hand_computed_step():
    live = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        live.weight.copy_(torch.tensor([[1.0, 3.0]]))
    ema = EMA(live, decay=0.9)
    with torch.no_grad():
        ema.module.weight.copy_(torch.tensor([[0.0, 1.0]]))
    ema.update(decay=0.75, pull_back=True)
    want = 0.75 * torch.tensor([[0.0, 1.0]]) + 0.25 * torch.tensor([[1.0, 3.0]])  # = [[0.25, 1.5]]
    assert torch.allclose(ema.module.weight, want) and torch.allclose(live.weight, want)
    ema.update()  # without pull_back the live weights stay where they are
    assert torch.allclose(live.weight, want)


def test_presets_are_known_and_explicit_options_win_with_a_note():
    with pytest.raises(DawnpipeError, match="unknown preset 'turbo'"):
        config_from_options(preset="turbo")
    cfg, notes = config_and_notes(preset="quick", explicit={"epochs"}, epochs=5, width=1.0, seed=0)
    assert cfg.epochs == 5 and cfg.model.width == 0.5 and cfg.preset == "quick"  # width not typed: preset's
    assert notes == ["--epochs 5 overrides preset quick's epochs=3"]
    page = config_from_options()
    assert page == TrainConfig(preset="page") and set(PRESETS) == {"page", "quick"}


def _tiny(image_folder, out, **overrides):
    options = dict(data=image_folder, epochs=2, batch_size=64, lr=2.0, width=0.125, out=out, device="cpu", holdout=0)
    return config_from_options(**{**options, **overrides})


_AIRBENCH = {"flip_mode": "alternating", "lookahead": True}


def test_a_preset_round_trips_through_the_manifest(image_folder, tmp_path):
    cfg = _tiny(image_folder, tmp_path, name="quick", preset="quick", epochs=1, **_AIRBENCH)
    result = train(cfg, progress=False)
    recorded = json.loads((result.run_dir / "manifest.json").read_text())["runs"]["train"]["config"]
    assert recorded["preset"] == "quick" and recorded["flip_mode"] == "alternating" and recorded["lookahead"]
    assert TrainConfig.from_dict(recorded) == cfg


def test_resume_with_the_airbench_switches_reproduces_an_uninterrupted_run(image_folder, tmp_path, monkeypatch):
    whole = train(_tiny(image_folder, tmp_path, name="whole", preset="quick", **_AIRBENCH), progress=False)
    monkeypatch.setattr(trainer_mod, "_graceful_interrupt", lambda: contextlib.nullcontext(_StopAfter(6)))
    with pytest.raises(DawnpipeError, match="--resume"):
        train(_tiny(image_folder, tmp_path, name="cut", preset="quick", **_AIRBENCH), progress=False)
    monkeypatch.undo()
    resumed = train(_tiny(image_folder, tmp_path, resume=tmp_path / "cut"), progress=False)
    a, b = load_checkpoint(whole.checkpoint), load_checkpoint(resumed.checkpoint)
    assert all(torch.allclose(a["ema"][k].float(), b["ema"][k].float(), atol=1e-5) for k in a["ema"])
    assert all(torch.allclose(a["ema"][k].float(), a["model"][k].float()) for k in a["ema"])  # lookahead's end
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "cut"), "--preset", "page"])
    assert result.exit_code == 1 and "trained with preset quick" in result.stderr

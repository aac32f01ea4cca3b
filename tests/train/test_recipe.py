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
from tests.conftest import StopAfter


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
    assert page == TrainConfig(preset="page") and set(PRESETS) == {"page", "quick", "page-bn"}


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
    monkeypatch.setattr(trainer_mod, "graceful_interrupt", lambda: contextlib.nullcontext(StopAfter(6)))
    with pytest.raises(DawnpipeError, match="--resume"):
        train(_tiny(image_folder, tmp_path, name="cut", preset="quick", **_AIRBENCH), progress=False)
    monkeypatch.undo()
    resumed = train(_tiny(image_folder, tmp_path, resume=tmp_path / "cut"), progress=False)
    a, b = load_checkpoint(whole.checkpoint), load_checkpoint(resumed.checkpoint)
    assert all(torch.allclose(a["ema"][k].float(), b["ema"][k].float(), atol=1e-5) for k in a["ema"])
    assert all(torch.allclose(a["ema"][k].float(), a["model"][k].float()) for k in a["ema"])  # lookahead's end
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "cut"), "--preset", "page"])
    assert result.exit_code == 1 and "trained with preset quick" in result.stderr


_SWITCHES = {"preact": True, "stochastic_depth": 0.25, "whiten_bias": True, "whiten_bias_frac": 0.5, "bn_momentum": 0.4}


def test_stochastic_depth_drops_whole_branches_per_image_and_evaluates_plainly():
    from dawnpipe.train.model import Residual

    block = Residual(torch.nn.Identity(), drop=0.5)
    x = torch.ones(4000, 1, 1, 1)
    torch.manual_seed(0)
    out = block.train()(x).flatten()
    assert set(out.unique().tolist()) == {1.0, 3.0}  # x + 0, or x + x / (1 - 0.5)
    assert 0.45 < float((out == 3.0).float().mean()) < 0.55 and abs(float(out.mean()) - 2.0) < 0.1
    assert torch.equal(block.eval()(x), 2 * x)  # evaluation: the plain x + f(x)


def test_switches_reach_the_network():
    from dawnpipe.train.model import GhostBatchNorm, Residual, ResNet9

    model = ResNet9(config_from_options(**_SWITCHES).model)
    assert {m.momentum for m in model.modules() if isinstance(m, GhostBatchNorm)} == {0.4}
    blocks = [m for m in model.modules() if isinstance(m, Residual)]
    assert len(blocks) == 2 and all(b.drop == 0.25 for b in blocks)
    assert all(isinstance(b.body[0], GhostBatchNorm) for b in blocks)  # pre-activation: BN first
    assert model.whiten.bias is not None and model.whiten.bias.requires_grad and not model.whiten.weight.requires_grad
    plain = ResNet9(config_from_options().model)
    assert plain.whiten.bias is None and all(isinstance(b.body[0], torch.nn.Sequential) for b in plain.modules()
                                             if isinstance(b, Residual))  # fmt: skip


def test_resume_with_every_new_switch_reproduces_an_uninterrupted_run(image_folder, tmp_path, monkeypatch):
    whole = train(_tiny(image_folder, tmp_path, name="whole", **_SWITCHES), progress=False)
    monkeypatch.setattr(trainer_mod, "graceful_interrupt", lambda: contextlib.nullcontext(StopAfter(6)))
    with pytest.raises(DawnpipeError, match="--resume"):
        train(_tiny(image_folder, tmp_path, name="cut", **_SWITCHES), progress=False)
    monkeypatch.undo()
    cut = load_checkpoint(tmp_path / "cut")
    resumed = train(_tiny(image_folder, tmp_path, resume=tmp_path / "cut"), progress=False)
    a, b = load_checkpoint(whole.checkpoint), load_checkpoint(resumed.checkpoint)
    # the dropped branches repeat only if the resumed run continues the interrupted run's random stream; the raw
    # weights show it (the EMA's one update of these 8 steps came at step 5, before the cut)
    for key in ("model", "ema"):
        assert all(torch.allclose(a[key][k].float(), b[key][k].float(), atol=1e-5) for k in a[key])
    # 4 steps per epoch, whiten_bias_frac 0.5 of 8: the bias learned in steps 1-4 and stayed put in 5-8
    bias = a["model"]["whiten.bias"]
    assert float(bias.abs().max()) > 0 and torch.equal(cut["model"]["whiten.bias"], bias)


def test_whitening_bias_stays_zero_when_it_is_given_no_steps(image_folder, tmp_path):
    result = train(_tiny(image_folder, tmp_path, name="frozen", epochs=1, whiten_bias=True, whiten_bias_frac=0.0),
                   progress=False)  # fmt: skip
    assert not load_checkpoint(result.checkpoint)["model"]["whiten.bias"].any()


@pytest.mark.parametrize(
    ("field", "value"), [("stochastic_depth", 1.0), ("bn_momentum", 0.0), ("whiten_bias_frac", 2.0)]
)
def test_out_of_range_switches_are_refused_before_any_data_is_read(tmp_path, field, value):
    cfg = _tiny(tmp_path / "no-such-data", tmp_path, name="x", **{field: value})
    with pytest.raises(DawnpipeError, match=f"{field} is {value}"):
        train(cfg, progress=False)
    assert not (tmp_path / "x").exists()


def test_a_checkpoint_from_before_the_new_switches_still_loads(trained_run, tmp_path):
    from dawnpipe.train.checkpoint import model_from_checkpoint, save_checkpoint
    from dawnpipe.train.config import MODEL_FIELDS_ADDED

    payload = load_checkpoint(trained_run)
    for key in ("format", "version"):
        payload.pop(key)
    for key in MODEL_FIELDS_ADDED:
        payload["model_config"].pop(key)
    old = save_checkpoint(tmp_path / "old.pt", payload)
    loaded = load_checkpoint(old)
    assert {k: loaded["model_config"][k] for k in MODEL_FIELDS_ADDED} == MODEL_FIELDS_ADDED
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model_from_checkpoint(loaded)(x), model_from_checkpoint(load_checkpoint(trained_run))(x))


def test_the_page_bn_preset_sets_the_networks_batchnorm_momentum():
    from dawnpipe.train.model import GhostBatchNorm, ResNet9

    cfg = config_from_options(preset="page-bn", seed=3)
    assert cfg.model.bn_momentum == 0.4 and cfg.preset == "page-bn" and cfg.epochs == TrainConfig().epochs
    model = ResNet9(cfg.model)
    assert {m.momentum for m in model.modules() if isinstance(m, GhostBatchNorm)} == {0.4}
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg

"""Selective TTA's calibration: the fixed target, ``auto`` fitted per run, and what a resumed run may change."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.common.device import DeviceChoice
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.train import trainer as trainer_mod
from dawnpipe.train.api import config_from_options
from dawnpipe.train.calibration import auto_target, calibrate_threshold, check_selective_target
from dawnpipe.train.checkpoint import load_checkpoint, resumed_precision
from dawnpipe.train.trainer import train
from tests.conftest import StopAfter


def test_auto_target_picks_the_smallest_fraction_keeping_90_percent_of_the_flip_gain():
    # 20 images by rising confidence; flip fixes images 0, 1, 2, 5 and breaks image 3: full gain 3 images
    confidence = np.linspace(0.3, 0.99, 20)
    plain = np.ones(20, bool)
    plain[[0, 1, 2, 5]] = False
    flip = np.ones(20, bool)
    flip[3] = False
    fitted = auto_target(confidence, plain, flip, min_gain=3)
    # gains by k: 0,1,2,3,2,2,3,...: the first k with gain >= 2.7 is 3
    assert fitted["target_fraction"] == 3 / 20 and fitted["full_flip_gain_images"] == 3
    assert fitted["selective_gain_images"] == 3 and not fitted["capped"] and not fitted["fell_back"]
    # shuffling the images changes nothing: the order comes from the confidences
    perm = np.random.default_rng(0).permutation(20)
    assert auto_target(confidence[perm], plain[perm], flip[perm], min_gain=3)["target_fraction"] == 3 / 20
    # the threshold at that fraction selects exactly those three images
    calibration = calibrate_threshold(confidence, fitted["target_fraction"])
    assert (confidence < calibration["threshold"]).sum() == 3


def test_auto_target_stops_at_the_cap():
    confidence = np.linspace(0.3, 0.99, 10)
    plain = np.ones(10, bool)
    plain[9] = False  # the only image flip fixes is the most confident one: reaching it needs every image
    fitted = auto_target(confidence, plain, np.ones(10, bool), cap=0.5, min_gain=1)
    assert fitted["capped"] and fitted["target_fraction"] == 0.5 and fitted["selective_gain_images"] == 0


def test_auto_target_falls_back_to_the_fixed_default_when_flips_holdout_gain_is_too_small_to_fit_on():
    # 1000 images; flip fixes the images at confidence ranks listed, so the curve reaches its full gain there
    confidence = np.linspace(0.2, 0.999, 1000)
    plain = np.ones(1000, bool)

    def fitted(fixed_ranks, **kw):
        wrong = plain.copy()
        wrong[fixed_ranks] = False
        return auto_target(confidence, wrong, np.ones(1000, bool), **kw)

    # 9 fixed images: under the 10-image floor, the default 0.2 is taken whatever the curve says
    few = fitted([1, 2, 3, 4, 5, 6, 7, 8, 400])
    assert few["fell_back"] and few["target_fraction"] == 0.2 and few["full_flip_gain_images"] == 9
    assert few["min_gain_images"] == 10 and few["fallback_fraction"] == 0.2 and "under 10 images" in few["rule"]
    # without the floor the last fixed image decides alone: "keep 90% of 9" is "keep all 9", at rank 400
    assert fitted([1, 2, 3, 4, 5, 6, 7, 8, 400], min_gain=1)["target_fraction"] == 401 / 1000
    # 10 fixed images: the curve decides; 90% of 10 is 9, reached at the ninth fixed image (rank 8)
    enough = fitted([0, 1, 2, 3, 4, 5, 6, 7, 8, 400])
    assert not enough["fell_back"] and enough["target_fraction"] == 9 / 1000
    # no gain, or a loss, is as uninformative as a tiny gain: the default again, never a silent 0
    same = auto_target(confidence, plain, plain)
    assert same["fell_back"] and same["target_fraction"] == 0.2 and same["full_flip_gain_images"] == 0
    broken = plain.copy()
    broken[:30] = False  # flip breaks 30 images plain gets right
    loss = auto_target(confidence, plain, broken)
    assert loss["fell_back"] and loss["target_fraction"] == 0.2 and loss["full_flip_gain_images"] == -30
    assert fitted([5], fallback=0.3)["target_fraction"] == 0.3


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan"), "x", True])
def test_selective_target_outside_the_open_interval_is_refused(value):
    with pytest.raises(DawnpipeError, match="strictly between 0 and 1"):
        check_selective_target(value)
    assert check_selective_target("auto") == "auto" and check_selective_target(0.2) == 0.2


@pytest.mark.parametrize("value", ["0", "1", "1.2", "nan", "automatic"])
def test_the_cli_refuses_a_bad_selective_target_before_reading_data(tmp_path, value):
    result = CliRunner().invoke(
        main, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path), "--selective-target", value]
    )
    assert result.exit_code == 2 and "strictly between 0 and 1" in result.stderr
    assert result.stderr.count("\n") == 1 and not any(tmp_path.iterdir())


def _tiny(image_folder, out, **overrides):
    options = dict(data=image_folder, epochs=2, batch_size=32, lr=2.0, width=0.125, out=out, device="cpu")
    options.update(overrides)
    return config_from_options(**options)


def test_auto_is_fitted_on_the_runs_own_holdout_and_recorded(image_folder, tmp_path):
    result = train(_tiny(image_folder, tmp_path, name="auto", selective_target="auto"), progress=False)
    selective = load_checkpoint(result.checkpoint)["selective"]
    fitted = selective["auto"]
    assert selective["target"] == "auto" and 0.0 <= fitted["target_fraction"] <= fitted["cap"] == 0.5
    assert selective["target_fraction"] == fitted["target_fraction"]
    assert selective["holdout_images"] == fitted["holdout_images"] == 25  # a tenth of 256 training images
    assert abs(selective["selected_fraction_holdout"] - fitted["target_fraction"]) <= 1 / 25
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["artifacts"]["checkpoint"]["selective"]["auto"] == fitted


def test_resume_refuses_options_that_change_training_and_takes_the_selective_target(
    image_folder, tmp_path, monkeypatch
):
    monkeypatch.setattr(trainer_mod, "graceful_interrupt", lambda: contextlib.nullcontext(StopAfter(3)))
    with pytest.raises(DawnpipeError, match="--resume"):
        train(_tiny(image_folder, tmp_path, name="cut"), progress=False)
    monkeypatch.undo()
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    before = ckpt.read_bytes()
    refused = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "cut"), "--width", "0.5", "--epochs", "9"])
    assert refused.exit_code == 1 and "--width 0.5 (run: 0.125)" in refused.stderr
    assert "--epochs 9 (run: 2)" in refused.stderr and refused.stderr.count("\n") == 1
    assert ckpt.read_bytes() == before  # nothing trained, nothing written
    # the same values as the run's, and the options that only act after the last step, are accepted
    done = CliRunner().invoke(
        main, ["train", "--resume", str(tmp_path / "cut"), "--width", "0.125", "--selective-target", "auto"]
    )
    assert done.exit_code == 0, done.output
    assert "--selective-target auto replaces the run's 0.2" in done.stderr
    saved = load_checkpoint(ckpt)
    assert saved["selective"]["target"] == "auto" and saved["train_config"]["selective_target"] == "auto"


def test_a_resumed_run_keeps_the_precision_it_started_in(capsys):
    cpu_fp32 = DeviceChoice(torch.device("cpu"), None, channels_last=True)
    kept = resumed_precision(cpu_fp32, {"device": "cpu", "autocast": "bf16"})
    assert kept.autocast_dtype == torch.bfloat16 and "started in bf16" in capsys.readouterr().err
    assert resumed_precision(cpu_fp32, {"device": "cpu", "autocast": "fp32"}) is cpu_fp32
    assert resumed_precision(cpu_fp32, None) is cpu_fp32  # older checkpoints: today's choice
    assert resumed_precision(cpu_fp32, {"device": "cuda", "autocast": "fp16"}) is cpu_fp32

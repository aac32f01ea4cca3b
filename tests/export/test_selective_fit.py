"""Each exported artifact fits its own selective thresholds on the run's hold-out, through the file itself."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.machine import cpu_summary
from dawnpipe.export.api import ExportConfig, export
from dawnpipe.export.config import Int8Spec
from dawnpipe.export.onnx_export import read_metadata, restamp
from dawnpipe.export.selective_fit import holdout_images
from dawnpipe.infer.backends import load
from dawnpipe.infer.modes import resolve_threshold
from dawnpipe.train.calibration import fit_thresholds
from dawnpipe.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def fitted(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("fitted")
    return {
        precision: export(
            ExportConfig(
                source=str(trained_run),
                precision=precision,
                out=str(out),
                check_images=128,
                int8=Int8Spec(calibration_images=64),
            )
        ).onnx  # fmt: skip
        for precision in ("fp32", "int8")
    }


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_each_artifact_selects_its_target_on_the_holdout_through_itself(fitted, trained_run, precision):
    meta = read_metadata(fitted[precision])["selective"]
    assert meta["fitted_through"].startswith("onnxruntime") and fitted[precision].name in meta["fitted_through"]
    assert cpu_summary() in meta["fitted_through"]  # int8 kernels differ by CPU, so the fit names the one it ran on
    assert set(meta["modes"]) == {f"selective-{m}" for m in ("flip", "translate", "flip-translate", "airbench94")}
    payload = load_checkpoint(trained_run)
    images, _ = holdout_images(payload)
    with load(fitted[precision]) as model:
        from dawnpipe.common.tta import softmax_confidence

        confidence = softmax_confidence(model.infer(images))
        for mode, record in meta["modes"].items():
            # the fraction the file's own threshold selects on the hold-out, run again by the backend that serves it
            selected = float((confidence < record["threshold"]).mean())
            assert abs(selected - record["target_fraction"]) <= 0.01, (mode, selected, record)
            assert resolve_threshold(model, None, mode)[1].startswith("fitted on the hold-out through onnxruntime")


def test_an_older_artifact_keeps_training_threshold_and_says_so(fitted, tmp_path):
    old = tmp_path / "old.onnx"
    shutil.copy(fitted["fp32"], old)
    restamp(old, {"selective": {"threshold": 0.5, "target_fraction": 0.2}})  # the record artifacts used to carry
    with load(old, allow_foreign=True) as model:
        assert resolve_threshold(model, None, "selective-translate") == (0.5, "threshold from training")


def test_export_without_the_runs_data_keeps_training_threshold_with_a_notice(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    payload = load_checkpoint(run / "checkpoint.pt")
    payload["data"]["source"] = str(tmp_path / "gone")  # the data is on another machine
    from dawnpipe.train.checkpoint import save_checkpoint

    save_checkpoint(run / "checkpoint.pt", payload)
    result = export(ExportConfig(source=str(run / "checkpoint.pt"), check_images=128, allow_foreign=True))
    meta = read_metadata(result.onnx)["selective"]
    assert "modes" not in meta and meta["threshold"] == payload["selective"]["threshold"]
    assert any("keeps the selective threshold from training" in note for note in result.notes)


def test_a_run_without_a_holdout_names_the_option(trained_run):
    payload = load_checkpoint(trained_run)
    payload["selective"] = None
    with pytest.raises(DawnpipeError, match="--holdout"):
        holdout_images(payload)


def test_auto_fits_each_mode_to_its_own_gain():
    rng = np.random.default_rng(0)
    confidence = rng.random(1000)
    plain = rng.random(1000) < 0.8
    order = np.argsort(confidence)
    flip = plain.copy()
    flip[order[:40]] = True  # flip fixes 40 of the least confident images
    translate = plain.copy()
    translate[order[:300]] = True  # translate fixes images well into the confident ones
    record = fit_thresholds(confidence, plain, {"flip": flip, "translate": translate}, "auto", "a test")
    fractions = {mode: r["target_fraction"] for mode, r in record["modes"].items()}
    assert fractions["selective-flip"] < fractions["selective-translate"], fractions
    fixed = fit_thresholds(confidence, plain, {"flip": flip, "translate": translate}, 0.2, "a test")
    assert {r["threshold"] for r in fixed["modes"].values()} == {fixed["threshold"]}  # one fraction, one threshold

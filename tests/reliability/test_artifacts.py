"""Artifacts that lie: swapped or dropped-in files, half-trained models, damaged checkpoints, graphs whose real
inputs differ from their metadata, and options that must be refused before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch

from dawnpipe.export.api import ExportConfig, export
from dawnpipe.export.onnx_export import META_PREFIX, read_metadata
from dawnpipe.train.checkpoint import load_checkpoint, save_checkpoint
from tests.reliability.helpers import refused


@pytest.fixture
def run(tmp_path, trained_run) -> Path:
    """A private copy of the finished tiny run with its fp32 ONNX exported."""
    copy = Path(shutil.copytree(trained_run, tmp_path / "runs" / "tiny"))
    export(ExportConfig(source=str(copy), check_images=128))
    return copy


def _onnx(run: Path) -> Path:
    return run / "resnet9-ema-none-fp32.onnx"


def _resave(path: Path, change) -> None:
    payload = load_checkpoint(path)
    change(payload)
    save_checkpoint(path, {k: v for k, v in payload.items() if k not in ("format", "version")})


def test_a_swapped_checkpoint_is_refused_and_the_manifest_keeps_its_evidence(run):
    _resave(
        run / "checkpoint.pt",
        lambda p: (
            p["ema"]["classifier.weight"].mul_(1.01) if "classifier.weight" in p["ema"] else p.update(run_id="other")
        ),
    )
    line = refused(["export", str(run)], protect=(run / "manifest.json", _onnx(run)))
    assert "checkpoint.pt" in line and "manifest.json" in line and "--allow-foreign" in line


def test_allow_foreign_exports_and_marks_the_artifact(run, tmp_path):
    _resave(run / "checkpoint.pt", lambda p: p.update(run_id="another-run"))
    from click.testing import CliRunner

    from dawnpipe.cli import main

    result = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "out"), "--allow-foreign"])
    assert result.exit_code == 0, result.output
    assert read_metadata(tmp_path / "out" / _onnx(run).name)["lineage"] == "override"


def test_an_onnx_dropped_into_a_run_folder_is_refused(run):
    stranger = run / "resnet9-from-elsewhere.onnx"
    shutil.copy(_onnx(run), stranger)
    line = refused(["eval", str(stranger), "--no-latency", "--test-limit", "8"], protect=(run,))
    assert "not listed" in line and "--allow-foreign" in line


def test_a_replaced_onnx_is_refused_by_eval_and_predict(run, tmp_path):
    model = onnx.load(str(_onnx(run)))
    model.doc_string = "edited after export"
    onnx.save(model, str(_onnx(run)))
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    for args in (["eval", str(_onnx(run)), "--no-latency"], ["predict", str(_onnx(run)), str(image)]):
        assert "sha256 differs" in refused(args, protect=(run,))


def test_a_half_trained_checkpoint_is_not_exported_unless_asked(run, tmp_path):
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(run / "checkpoint.pt", half / "checkpoint.pt")
    _resave(half / "checkpoint.pt", lambda p: p["state"].update(complete=False))
    line = refused(["export", str(half)], protect=(half,))
    assert "interrupted" in line and "--allow-incomplete" in line
    export(ExportConfig(source=str(half), check_images=128, allow_incomplete=True))
    assert read_metadata(half / "resnet9-ema-none-fp32.onnx")["complete"] is False


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p["model_config"].pop("width"), "lacks ['width']"),
        (lambda p: p["model_config"].update(depth=3), "unknown keys ['depth']"),
        (lambda p: p["model_config"].update(width=float("nan")), "not a finite float"),
        (lambda p: p["train_config"].update(mystery=1), "unknown keys ['mystery']"),
        (lambda p: p.update(classes=["only"]), "at least 2"),
        (lambda p: p["normalization"].update(std=[0.0, 1.0, 1.0]), "normalization 'std'"),
    ],
)
def test_a_damaged_checkpoint_is_named(tmp_path, trained_run, damage, message):
    folder = tmp_path / "damaged"
    folder.mkdir()
    shutil.copy(trained_run / "checkpoint.pt", folder / "checkpoint.pt")
    _resave(folder / "checkpoint.pt", damage)
    assert message in refused(["export", str(folder)], protect=(folder,))


class _FloatInput(torch.nn.Module):
    def forward(self, images):
        return images.mean(dim=(1, 2))[:, :1].repeat(1, 4)


@pytest.mark.parametrize("graph", ["float-input", "wrong-classes"])
def test_a_graph_that_differs_from_its_metadata_is_refused(run, tmp_path, graph):
    good = onnx.load(str(_onnx(run)))
    path = tmp_path / "lying.onnx"
    if graph == "float-input":
        torch.onnx.export(_FloatInput(), (torch.zeros(2, 32, 32, 3),), str(path), input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "b"}}, dynamo=False)  # fmt: skip
        model = onnx.load(str(path))
        model.metadata_props.extend(good.metadata_props)
    else:
        model = good
        for prop in model.metadata_props:
            if prop.key == META_PREFIX + "classes":
                prop.value = json.dumps(["a", "b", "c"])
    onnx.save(model, str(path))
    line = refused(["eval", str(path), "--no-latency", "--test-limit", "8"])
    assert ("uint8 input" in line) if graph == "float-input" else ("outputs 4 logits" in line)


@pytest.mark.parametrize(
    "args, message",
    [
        (["pipeline", "--tta", "bogus"], "unknown mode"),
        (["pipeline", "--widths", "0.5,nan"], "each value"),
        (["train", "--width", "nan"], "not a finite number"),
        (["train", "--lr", "inf"], "--lr"),
        (["train", "--seed", str(2**40)], "--seed"),
        (["eval", "x.onnx", "--tta", ","], "no mode given"),
        (["costs", "r", "--budget-gflops", "inf"], "--budget-gflops"),
    ],
)
def test_bad_options_are_refused_before_any_work(tmp_path, args, message):
    assert message in refused(args, protect=(tmp_path,))


def test_eval_out_pointing_at_a_file_is_refused_before_evaluating(run, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    refused(["eval", str(_onnx(run)), "--out", str(target)], protect=(target, run), expect=("is a file",))

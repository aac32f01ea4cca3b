"""BatchNorm folding: exact where it is folded, refused (and said) where a max-pool does not commute with it."""

from __future__ import annotations

import onnx
import pytest
import torch
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.export.api import ExportConfig, export
from dawnpipe.export.graph import build_deploy_model
from dawnpipe.export.onnx_export import read_metadata, run_onnxruntime
from dawnpipe.train.checkpoint import load_checkpoint, save_checkpoint
from dawnpipe.train.data import load_cifar
from tests.conftest import assert_logits_close


def _bn_count(path) -> int:
    return sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)


def test_folded_and_unfolded_graphs_agree_within_1e4_and_the_folded_one_has_no_batchnorm(
    trained_run, image_folder, tmp_path
):
    folded = export(ExportConfig(source=str(trained_run), out=str(tmp_path / "folded"), check_images=128)).onnx
    plain = export(
        ExportConfig(source=str(trained_run), out=str(tmp_path / "plain"), check_images=128, fold_bn=False)
    ).onnx
    assert _bn_count(folded) == 0 and _bn_count(plain) == 3  # the three BatchNorms after a max-pool
    images = load_cifar(str(image_folder)).test_x  # the test split of the data the run trained on
    a, b = run_onnxruntime(folded, images), run_onnxruntime(plain, images)
    assert_logits_close(a, b, 1e-4)
    assert (a.argmax(1) == b.argmax(1)).all()
    meta = read_metadata(folded)["batchnorm_folding"]
    assert meta == {"folded": 8, "across_pool": 3, "kept": []}
    assert read_metadata(plain)["batchnorm_folding"].startswith("not folded")


def _negative_scale_run(trained_run, tmp_path):
    """The tiny run with learnable BN scales, one channel of the BN after layer2's max-pool made negative."""
    payload = load_checkpoint(trained_run)
    payload["model_config"]["freeze_bn_scale"] = False
    for weights in ("ema", "model"):
        payload[weights]["layer2.2.weight"][3] = -0.5
    run = tmp_path / "negative"
    run.mkdir()
    save_checkpoint(run / "checkpoint.pt", payload)
    return run


def test_a_batchnorm_with_a_negative_scale_after_a_pool_is_kept_and_named(trained_run, tmp_path):
    run = _negative_scale_run(trained_run, tmp_path)
    payload = load_checkpoint(run / "checkpoint.pt")
    reference = build_deploy_model(payload, fold_bn=False)
    folded = build_deploy_model(payload)
    kept = folded.folding["kept"]
    assert [k["batchnorm"] for k in kept] == ["layer2.2"] and "channel 3" in kept[0]["reason"]
    assert folded.folding["folded"] == 7
    x = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert_logits_close(folded(x).numpy(), reference(x).numpy(), 1e-4)
    # folding it anyway would be wrong: max-pool and a negative scale do not commute (the rule is needed)
    from torch import nn

    from dawnpipe.export import fold

    blind = build_deploy_model(payload, fold_bn=False)
    fold._merge(blind.classifier.layer2[0], *fold._affine(blind.classifier.layer2[2]))
    blind.classifier.layer2[2] = nn.Identity()
    with torch.no_grad():
        assert (blind(x) - reference(x)).abs().max() > 1e-2


def test_export_says_which_batchnorm_it_did_not_fold(trained_run, tmp_path):
    run = _negative_scale_run(trained_run, tmp_path)
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "out"), "--allow-foreign"])
    assert result.exit_code == 0, result.output
    assert "notice: BatchNorm layer2.2 was not folded into layer2.0" in result.stderr
    assert "channel 3 has scale -0.3" in result.stderr  # -0.5 / sqrt(running var)
    assert _bn_count(tmp_path / "out" / "resnet9-ema-none-fp32.onnx") == 1


@pytest.mark.parametrize("precision", ["int8", "int8-asym"])
def test_int8_graphs_carry_no_batchnorm_between_their_quantize_pairs(trained_run, tmp_path, precision):
    from dawnpipe.export.config import Int8Spec

    cfg = ExportConfig(source=str(trained_run), precision=precision, out=str(tmp_path), check_images=128,
                       int8=Int8Spec(calibration_images=64, min_agreement=0.9))  # fmt: skip
    assert _bn_count(export(cfg).onnx) == 0

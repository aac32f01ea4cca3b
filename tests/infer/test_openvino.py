"""The OpenVINO backend on dawnpipe's own ONNX files: agreement with onnxruntime, honest settings, the int8 layers
its runtime model runs, a compiled-model cache that is checked before use, and one-line refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.export.api import ExportConfig, export
from dawnpipe.export.config import Int8Spec
from dawnpipe.infer.backends import load
from dawnpipe.infer.evaluate import EvalConfig, evaluate
from dawnpipe.infer.latency import Protocol
from tests.conftest import assert_logits_close, make_images

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install -e '.[openvino]')")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("ov") / "run"
    shutil.copytree(trained_run, run)
    for precision in ("fp32", "int8"):
        export(ExportConfig(source=str(run), precision=precision, check_images=128, int8=Int8Spec(64)))
    return run


def test_fp32_and_int8_agree_with_onnxruntime_and_describe_their_settings(exported):
    images = make_images(16, seed=31)[0]
    for precision in ("fp32", "int8"):
        path = exported / f"resnet9-ema-none-{precision}.onnx"
        with load(path, "openvino", threads=2) as ov, load(path, "onnxruntime", threads=2) as ort:
            got, want = ov.infer(images), ort.infer(images)
            info = ov.describe()
        assert info["backend"] == "openvino" and info["threads"] == 2 and info["precision"] == precision
        settings = info["openvino"]
        assert settings["version"] and settings["performance_hint"] == "LATENCY" and settings["threads"] == 2
        assert settings["inference_precision"] == "f32"
        layers = settings["int8_layers"]
        if precision == "fp32":
            assert_logits_close(got, want, 1e-4)
            assert layers["convolutions"] >= 8 and layers["convolutions_int8"] == 0
        else:
            assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
            assert layers["convolutions_int8"] >= layers["convolutions"] - 1 >= 7  # all but the whitening conv


def test_eval_rows_carry_the_agreement_with_onnxruntime_fp32(exported):
    quick = Protocol(rounds=1, calls=2, min_seconds=0.0, warmup=1)
    cfg = EvalConfig(artifact=str(exported / "resnet9-ema-none-int8.onnx"), backend="openvino", tta=("none",),
                     protocol=quick, throughput_batch=8)  # fmt: skip
    rows, _ = evaluate(cfg)
    agreement = rows[0]["agreement_with_onnxruntime_fp32"]
    assert agreement["reference"].endswith("resnet9-ema-none-fp32.onnx") and agreement["top1"] >= 0.9
    assert rows[0]["openvino"]["int8_layers"]["convolutions_int8"] >= 7 and rows[0]["latency"]["threads"] >= 1


def test_the_compiled_model_cache_is_used_only_when_it_matches(exported, tmp_path):
    path = tmp_path / "m.onnx"
    shutil.copy(exported / "resnet9-ema-none-fp32.onnx", path)
    with load(path, "openvino", allow_foreign=True) as first:
        assert first.cache == "written"
    with load(path, "openvino", allow_foreign=True) as again:
        assert again.cache == "used (checked)"
    record = tmp_path / "openvino-cache" / "m.onnx.json"
    saved = json.loads(record.read_text())
    record.write_text(json.dumps({**saved, "artifact_sha256": "0" * 64}))  # the cache of another file of that name
    with load(path, "openvino", allow_foreign=True) as other:
        assert other.cache == "written"
    blob = tmp_path / "openvino-cache" / "m.onnx.blob"
    blob.write_bytes(blob.read_bytes()[:100])  # damaged
    images = make_images(4, seed=3)[0]
    with load(path, "openvino", allow_foreign=True) as damaged, load(path, allow_foreign=True) as ort:
        assert damaged.cache == "written"
        assert_logits_close(damaged.infer(images), ort.infer(images), 1e-4)


def test_a_graph_openvino_cannot_compile_is_one_line(exported, tmp_path):
    model = onnx.load(str(exported / "resnet9-ema-none-fp32.onnx"))
    last = model.graph.node[-1]
    odd = onnx.helper.make_node("NoSuchOp", [last.output[0]], ["odd"], domain="com.example")
    model.graph.node.append(odd)
    model.graph.output[0].name = "odd"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    with pytest.raises(DawnpipeError, match=r"OpenVINO [0-9.]+ cannot compile odd.onnx \("):
        load(path, "openvino", allow_foreign=True)
    result = CliRunner().invoke(main, ["eval", str(path), "--backend", "openvino", "--allow-foreign"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "cannot compile odd.onnx" in result.stderr


def test_asking_for_openvino_without_it_names_the_install_command(image_folder, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    args = ["pipeline", "--data", str(image_folder), "--out", str(tmp_path), "--backends", "openvino"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "OpenVINO is not installed (pip install 'dawnpipe[openvino]'" in result.stderr
    assert not any(tmp_path.iterdir())


def test_serve_and_predict_take_the_openvino_backend(exported, tmp_path):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image)
    path = exported / "resnet9-ema-none-int8.onnx"
    result = CliRunner().invoke(main, ["predict", str(path), str(image), "--backend", "openvino"])
    assert result.exit_code == 0 and result.output.startswith(f"{image}: c"), result.output
    from dawnpipe.infer.server import ServeConfig, create_app

    app = create_app(ServeConfig(str(path), backend="openvino"))
    assert app.state.predictor.backend.name == "openvino"
    app.state.predictor.close()

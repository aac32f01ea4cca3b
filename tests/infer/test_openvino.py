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
        settings = info["openvino"]  # read back from the compiled model
        assert settings["version"] and settings["performance_hint"] == "LATENCY" and settings["threads"] == 2
        assert settings["inference_precision"] == "f32" and settings["streams"] == 1
        assert settings["cpu_pinning"] is False  # as onnxruntime's explicitly counted threads: the OS places both
        # hyper-threading is asked for (every logical core this process may use, as onnxruntime); read back, OpenVINO
        # says whether it applies (False on a CPU without SMT siblings)
        assert settings["asked"]["ENABLE_HYPER_THREADING"] is True and isinstance(settings["hyper_threading"], bool)
        assert settings["compute_precision"] == ("f32" if precision == "fp32" else "i8")
        assert info["cores"] == ort.describe()["cores"] and ort.describe()["cpu_pinning"] is False
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


def test_a_row_reports_what_openvino_runs_not_what_was_asked(exported):
    # 64 threads asked on a machine with fewer cores: OpenVINO runs with the cores it has, and the row says that
    path = exported / "resnet9-ema-none-fp32.onnx"
    with load(path, "openvino", threads=64) as ov:
        info = ov.describe()
    assert info["openvino"]["asked"]["INFERENCE_NUM_THREADS"] == 64
    assert info["threads"] == info["openvino"]["threads"] <= len(info["cores"]) < 64


def test_an_fp16_export_says_it_was_computed_in_f32(exported, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    path = export(ExportConfig(source=str(run), precision="fp16", check_images=64)).onnx
    with load(path, "openvino") as ov:
        info = ov.describe()
    assert info["precision"] == "fp16" and info["openvino"]["compute_precision"] == "f32"


def test_bf16_is_refused_in_one_line_on_a_cpu_without_it(exported, monkeypatch):
    from dawnpipe.common import machine

    no_bf16 = {**machine.cpu_features(), "bf16_native": False}
    monkeypatch.setattr(machine, "cpu_features", lambda: no_bf16)
    with pytest.raises(DawnpipeError, match="needs a CPU with native bf16"):
        load(exported / "resnet9-ema-none-fp32.onnx", "openvino", precision="bf16")
    with pytest.raises(DawnpipeError, match="compiles resnet9-ema-none-int8.onnx .int8. as exported"):
        load(exported / "resnet9-ema-none-int8.onnx", "openvino", precision="bf16")


@pytest.mark.skipif(not __import__("dawnpipe.common.machine").common.machine.cpu_features().get("bf16_native"),
                    reason="this CPU has no native bf16 (the refusal is tested above on every CPU)")  # fmt: skip
def test_bf16_on_a_bf16_cpu_computes_in_bf16_and_agrees(exported):
    images = make_images(32, seed=32)[0]
    path = exported / "resnet9-ema-none-fp32.onnx"
    with load(path, "openvino", precision="bf16") as ov, load(path, "onnxruntime") as ort:
        got, want = ov.infer(images), ort.infer(images)
        info = ov.describe()
    assert info["precision"] == "bf16" and info["openvino"]["inference_precision"] == "bf16"
    assert info["openvino"]["compute_precision"] == "bf16"
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    # the f32 and bf16 compilations of one file are cached apart, so neither replaces the other on every run: after
    # one pass (which may rebuild what other tests cached with other settings) both are used as cached
    for round_ in range(2):
        for precision in ("fp32", "bf16"):
            with load(path, "openvino", precision=precision) as again:
                assert round_ == 0 or again.cache == "used (checked)", (precision, again.cache)


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
        assert other.cache == "rewritten (it was made for another artifact_sha256)"
    # a blob compiled on a CPU with other instruction sets (a VM can hide AVX-512 under the same model name)
    saved = json.loads(record.read_text())
    record.write_text(
        json.dumps({**saved, "cpu_flags": {**saved["cpu_flags"], "avx512f": not saved["cpu_flags"]["avx512f"]}})
    )
    with load(path, "openvino", allow_foreign=True) as moved:
        assert moved.cache == "rewritten (it was made for another cpu_flags)"
    blob = tmp_path / "openvino-cache" / "m.onnx.blob"
    blob.write_bytes(blob.read_bytes()[:100])  # damaged
    images = make_images(4, seed=3)[0]
    with load(path, "openvino", allow_foreign=True) as damaged, load(path, allow_foreign=True) as ort:
        assert damaged.cache == "rewritten (its blob was damaged)"
        assert_logits_close(damaged.infer(images), ort.infer(images), 1e-4)


def test_a_blob_openvino_cannot_import_disables_the_cache_instead_of_rewriting_it(exported, tmp_path):
    import hashlib

    path = tmp_path / "m.onnx"
    shutil.copy(exported / "resnet9-ema-none-fp32.onnx", path)
    load(path, "openvino", allow_foreign=True).close()
    blob, record = tmp_path / "openvino-cache" / "m.onnx.blob", tmp_path / "openvino-cache" / "m.onnx.json"
    junk = b"not an OpenVINO blob, yet its record vouches for it"
    blob.write_bytes(junk)
    record.write_text(json.dumps({**json.loads(record.read_text()), "blob_sha256": hashlib.sha256(junk).hexdigest()}))
    with load(path, "openvino", allow_foreign=True) as first:
        assert first.cache.startswith("disabled: OpenVINO") and "could not import its own blob" in first.cache
    with load(path, "openvino", allow_foreign=True) as again:  # said again, and the files are left alone
        assert again.cache == first.cache
    assert blob.read_bytes() == junk and json.loads(record.read_text())["disabled"] == first.cache


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


class _BrokenOpenVino:
    """A meta-path finder for an installed OpenVINO whose import fails (a wheel whose shared library is missing):
    ``find_spec`` sees it, ``import openvino`` raises OSError."""

    def find_spec(self, name, path=None, target=None):
        import importlib.machinery

        if name != "openvino":
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise OSError("libopenvino.so.2640: cannot open shared object file")


@pytest.fixture
def broken_openvino(monkeypatch):
    import sys

    for name in [n for n in sys.modules if n == "openvino" or n.startswith("openvino.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_BrokenOpenVino(), *sys.meta_path])


def test_a_broken_install_is_one_line_for_eval(exported, broken_openvino):
    path = exported / "resnet9-ema-none-fp32.onnx"
    result = CliRunner().invoke(main, ["eval", str(path), "--backend", "openvino", "--no-latency"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert "OpenVINO is installed but fails to import (libopenvino.so.2640" in result.stderr
    assert "pip install 'dawnpipe[openvino]'" in result.stderr


@pytest.mark.slow
def test_a_family_with_a_broken_install_finishes_on_the_other_backends(image_folder, tmp_path, broken_openvino):
    args = ["pipeline", "--data", str(image_folder), "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path),
            "--name", "b", "--device", "cpu", "--width", "0.125", "--latency-rounds", "3", "--latency-calls", "2",
            "--throughput-batch", "8", "--tta", "none,flip"]  # fmt: skip
    result = CliRunner().invoke(main, args)  # --backends auto: the CPU default set, OpenVINO's two among them
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert {r["backend"] for r in rows["rows"]} >= {"torch", "onnxruntime"}
    skipped = {s["backend"]: s["reason"] for s in rows["skipped"]}
    for name in ("openvino", "openvino-int8"):
        assert skipped[name].startswith("OpenVINO is installed but fails to import (libopenvino.so.2640")
    report = (tmp_path / "b" / "report.md").read_text()
    assert "- openvino: skipped: OpenVINO is installed but fails to import" in report

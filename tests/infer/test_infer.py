"""Backends against the PyTorch reference, TTA equivalences, selective TTA, latency, evaluation, bad input."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.tta import TTA_MODES, apply_view, backend_logits, views
from dawnpipe.export.api import ExportConfig, export
from dawnpipe.infer.backends import OnnxRuntimeBackend, TorchBackend, load
from dawnpipe.infer.evaluate import EvalConfig, evaluate, wilson_interval
from dawnpipe.infer.latency import measure
from dawnpipe.infer.selective import select, selective_logits
from tests.conftest import make_images, write_image_folder


@pytest.fixture(scope="module")
def images():
    return make_images(10, seed=21)[0]


@pytest.fixture(scope="module")
def onnx_plain(trained_run):
    return export(ExportConfig(source=str(trained_run), check_images=128)).onnx


def test_view_definitions():
    assert [len(views(m)) for m in TTA_MODES] == [1, 2, 3, 6]
    for mode in TTA_MODES:
        assert abs(sum(v.weight for v in views(mode)) - 1.0) < 1e-12
    x = np.arange(2 * 32 * 32 * 3, dtype=np.int64).reshape(2, 32, 32, 3).astype(np.uint8)
    flip = views("flip")[1]
    assert np.array_equal(apply_view(x, flip), x[:, :, ::-1])
    assert np.array_equal(apply_view(torch.from_numpy(x), flip).numpy(), x[:, :, ::-1])
    shifted = apply_view(x, views("translate")[1])  # (+1, +1): out[y, x] = in[y + 1, x + 1], reflected at the edge
    assert np.array_equal(shifted[:, :31, :31], x[:, 1:, 1:]) and np.array_equal(shifted[:, 31, :31], x[:, 30, 1:])
    with pytest.raises(DawnpipeError, match="unknown TTA mode"):
        views("rotate")


def test_onnxruntime_backend_matches_torch(trained_run, onnx_plain, images):
    with load(trained_run, precision="fp32") as reference, load(onnx_plain) as deployed:
        assert isinstance(reference, TorchBackend) and isinstance(deployed, OnnxRuntimeBackend)
        assert reference.classes == deployed.classes == ["c0", "c1", "c2", "c3"]
        assert np.abs(reference.infer(images) - deployed.infer(images)).max() < 1e-4


@pytest.mark.trt
@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available(),
    reason="needs TensorRT and a CUDA GPU (neither can be installed on the CPU CI machine)",
)
def test_tensorrt_backend_matches_torch(trained_run, images):
    result = export(ExportConfig(source=str(trained_run), trt=True, precision="fp16", check_images=128))
    with load(result.engine) as engine, load(trained_run, device="cpu", precision="fp32") as reference:
        assert (engine.infer(images).argmax(1) == reference.infer(images).argmax(1)).mean() >= 0.95


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_backend_on_cuda_matches_cpu(trained_run, images):
    with load(trained_run, device="cuda") as gpu, load(trained_run, device="cpu", precision="fp32") as cpu:
        assert (gpu.infer(images).argmax(1) == cpu.infer(images).argmax(1)).mean() >= 0.95


@pytest.mark.parametrize("mode", ["flip", "translate", "flip-translate"])
def test_host_side_tta_equals_baked_in_graph(trained_run, onnx_plain, images, mode, tmp_path):
    baked = export(ExportConfig(source=str(trained_run), tta=mode, out=str(tmp_path), check_images=128)).onnx
    with load(onnx_plain) as plain, load(baked) as graph:
        host = backend_logits(plain, images, mode)
        inside = backend_logits(graph, images, mode)  # recognised as already inside: run once, not twice
        assert np.abs(host - inside).max() < 1e-5
        assert np.abs(inside - graph.infer(images)).max() == 0
        with pytest.raises(DawnpipeError, match="inside its graph"):
            backend_logits(graph, images, "none")


def test_selective_extremes(onnx_plain, images):
    with load(onnx_plain) as model:
        none, full = backend_logits(model, images, "none"), backend_logits(model, images, "flip")
        zero = selective_logits(model, images, "flip", fraction=0.0)
        one = selective_logits(model, images, "flip", fraction=1.0)
        half = selective_logits(model, images, "flip-translate", fraction=0.5)
    assert np.abs(zero.logits - none).max() == 0 and zero.views_per_image == 1.0
    assert np.abs(one.logits - full).max() < 1e-5 and one.views_per_image == 2.0
    assert half.views_per_image == pytest.approx(1 + 5 * 0.5)


def test_select_rules():
    confidence = np.array([0.9, 0.2, 0.5, 0.99])
    assert select(confidence, fraction=0.5).tolist() == [False, True, True, False]
    assert select(confidence, threshold=0.6).tolist() == [False, True, True, False]
    with pytest.raises(DawnpipeError):
        select(confidence, fraction=1.5)
    with pytest.raises(DawnpipeError):
        select(confidence, fraction=0.5, threshold=0.5)


def test_latency_harness_percentiles():
    calls = []
    timing = measure(
        lambda x: calls.append(len(x)) or np.sort(np.random.rand(20000)),
        np.zeros((3, 32, 32, 3), np.uint8),
        batch=8,
        warmup=2,
        iters=15,
    )
    assert calls[0] == 8 and len(calls) == 17 and timing.calls == 15
    assert 0 < timing.p50_ms <= timing.p90_ms <= timing.p99_ms and timing.images_per_s > 0


def test_wilson_interval():
    low, high = wilson_interval(90, 100)
    assert low < 0.9 < high and 0.82 < low < 0.84
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0


def test_evaluate_writes_rows_and_manifest(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    path = export(ExportConfig(source=str(run), check_images=128)).onnx
    rows, out = evaluate(
        EvalConfig(artifact=str(path), tta=("all",), latency_iters=3, throughput_batch=16, throughput_iters=1)
    )
    modes = [r["tta"] for r in rows]
    assert modes == [
        "none",
        "flip",
        "selective-flip",
        "translate",
        "selective-translate",
        "flip-translate",
        "selective-flip-translate",
    ]
    data = json.loads(out.read_text())
    assert out == run / "eval.json" and len(data["rows"]) == 7
    row = data["rows"][1]
    assert row["ci95"][0] <= row["accuracy"] <= row["ci95"][1] and row["views_per_image"] == 2.0
    assert row["gflops_per_image"] == pytest.approx(2 * rows[0]["gflops_per_image"])
    assert set(row["per_class"]) == {"c0", "c1", "c2", "c3"} and row["latency"]["batch1"]["p50_ms"] > 0
    assert "eval.json" in json.loads((run / "manifest.json").read_text())["artifacts"]
    # a second backend's rows are merged, not overwritten
    evaluate(EvalConfig(artifact=str(run), tta=("none",), latency_iters=0, selective_fraction=None))
    assert {r["backend"] for r in json.loads(out.read_text())["rows"]} == {"onnxruntime", "torch"}


def test_eval_cli_prints_table(trained_run, onnx_plain, tmp_path):
    result = CliRunner().invoke(
        main, ["eval", str(onnx_plain), "--tta", "none,flip", "--latency-iters", "2", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "selective-flip" in result.output and (tmp_path / "eval.json").exists()


def test_eval_classes_differ(onnx_plain, tmp_path):
    other = write_image_folder(
        tmp_path / "other", {"train": make_images(2, 1, 3), "test": make_images(2, 2, 3)}, classes=["x", "y", "z"]
    )
    with pytest.raises(DawnpipeError, match="differ from the model"):
        evaluate(EvalConfig(artifact=str(onnx_plain), data=str(other), latency_iters=0))


def test_bad_artifacts(onnx_plain, tmp_path):
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(onnx_plain.read_bytes()[:1000])
    with pytest.raises(DawnpipeError, match="not a readable ONNX"):
        load(truncated)
    foreign = tmp_path / "foreign.onnx"
    model = onnx.load(str(onnx_plain))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    with pytest.raises(DawnpipeError, match="not exported by dawnpipe"):
        load(foreign)
    with pytest.raises(DawnpipeError, match="does not exist"):
        load(tmp_path / "missing.onnx")
    with pytest.raises(DawnpipeError, match="unknown artifact type"):
        load(truncated.with_suffix(".txt").touch() or truncated.with_suffix(".txt"))
    with pytest.raises(DawnpipeError, match="unknown backend"):
        load(onnx_plain, "tvm")
    with pytest.raises(DawnpipeError, match="cannot run"):
        load(onnx_plain, "torch")


def test_engine_without_manifest_entry(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 64)
    with pytest.raises(DawnpipeError, match="not listed in its run folder's manifest"):
        load(engine)


def test_provider_not_installed_names_installed_ones(onnx_plain):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider is installed here")
    with pytest.raises(DawnpipeError, match="CPUExecutionProvider") as info:
        load(onnx_plain, provider="cuda")
    assert "not installed" in str(info.value)


def test_large_inputs_are_split_into_bounded_calls(onnx_plain, images):
    with load(onnx_plain) as model:
        whole = model.infer(images)
        model.max_batch = 3
        assert np.abs(model.infer(images) - whole).max() < 1e-5

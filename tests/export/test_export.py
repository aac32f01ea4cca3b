"""Export round trips for every TTA mode and precision, the uint8 contract, metadata, and bad input."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.tta import TTA_MODES
from dawnpipe.export.api import ExportConfig, export
from dawnpipe.export.onnx_export import read_metadata
from dawnpipe.export.triton import config_pbtxt
from dawnpipe.infer.backends import OnnxRuntimeBackend
from dawnpipe.infer.modes import run_mode
from dawnpipe.infer.torch_backend import TorchBackend
from tests.conftest import assert_logits_close, make_images


@pytest.fixture(scope="module")
def images():
    return make_images(8, seed=11)[0]


@pytest.fixture(scope="module")
def exports(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    results = {}
    for mode in TTA_MODES:
        for precision in ("fp32", "fp16"):
            results[mode, precision] = export(
                ExportConfig(source=str(trained_run), tta=mode, precision=precision, out=str(out), check_images=256)
            )
    return results


@pytest.mark.parametrize("mode", TTA_MODES)
def test_graph_tta_matches_pytorch_host_side_tta(exports, trained_run, images, mode):
    with (
        TorchBackend(trained_run, device="cpu", precision="fp32") as reference,
        OnnxRuntimeBackend(exports[mode, "fp32"].onnx) as deployed,
    ):
        want = run_mode(reference, images, mode).logits  # host-side TTA through the shared view definitions
        got = deployed.infer(images)  # TTA inside the graph
    assert_logits_close(got, want, 1e-4)
    assert exports[mode, "fp32"].checks["fp32"]["max_abs_diff"] <= 1e-3


@pytest.mark.parametrize("mode", TTA_MODES)
def test_fp16_agrees_with_fp32(exports, images, mode):
    with OnnxRuntimeBackend(exports[mode, "fp16"].onnx) as half, OnnxRuntimeBackend(exports[mode, "fp32"].onnx) as full:
        a, b = half.infer(images), full.infer(images)
    assert half.precision == "fp16" and a.dtype == np.float32
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95
    assert_logits_close(a, b, 0.05)
    weights = [i for i in onnx.load(str(exports[mode, "fp16"].onnx)).graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)


def test_batch_sizes_one_and_seven(exports, images):
    with OnnxRuntimeBackend(exports["flip", "fp32"].onnx) as model:
        one, seven = model.infer(images[:1]), model.infer(images[:7])
    assert one.shape == (1, 4) and seven.shape == (7, 4)
    assert_logits_close(one[0], seven[0], 1e-5)


def test_uint8_contract_enforced(exports, images):
    path = exports["none", "fp32"].onnx
    with OnnxRuntimeBackend(path) as model:
        with pytest.raises(DawnpipeError, match="uint8"):
            model.infer(images.astype(np.float32))
        with pytest.raises(DawnpipeError, match="shape"):
            model.infer(images[:, :16])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)" and session.get_outputs()[0].type == "tensor(float)"
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):  # the graph itself refuses floats
        session.run(None, {"images": images.astype(np.float32)})


def test_metadata_and_self_contained(exports, trained_run):
    from dawnpipe import __version__
    from dawnpipe.common.files import sha256_file
    from dawnpipe.train.checkpoint import load_checkpoint

    result = exports["flip-translate", "fp32"]
    meta = read_metadata(result.onnx)
    payload = load_checkpoint(trained_run)
    assert meta["classes"] == ["c0", "c1", "c2", "c3"] and meta["tta_mode"] == "flip-translate"
    assert meta["tta_views"] == 6 and abs(sum(meta["tta_weights"]) - 1) < 1e-9
    assert meta["source_checkpoint_sha256"] == sha256_file(trained_run / "checkpoint.pt")
    assert meta["input_contract"]["dtype"] == "uint8" and meta["input_contract"]["layout"] == "NHWC"
    assert meta["dawnpipe_version"] == __version__ and meta["run_id"] == payload["run_id"] and meta["complete"]
    assert meta["selective"]["threshold"] == payload["selective"]["threshold"]
    assert meta["data"]["sha256"] == payload["data"]["sha256"]
    model = onnx.load(str(result.onnx), load_external_data=False)
    assert model.producer_name == "dawnpipe" and model.producer_version == __version__ and model.doc_string
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim][1] == 4  # static class dim
    assert all(i.data_location != onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    written = [p.name for p in result.onnx.parent.iterdir() if p.suffix not in (".onnx", ".json")]
    assert written == [".lock"]  # the folder's lock file, nothing else


@pytest.mark.parametrize("mode", TTA_MODES)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_consumer_of_the_uint8_input_is_a_cast(exports, mode, precision):
    # onnx-tensorrt takes UINT8 only as a network input feeding a Cast directly (NVIDIA/TensorRT#3985)
    graph = onnx.load(str(exports[mode, precision].onnx)).graph
    uint8_inputs = [i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8]
    consumers = [n for n in graph.node if set(n.input) & set(uint8_inputs)]
    assert uint8_inputs == ["images"] and consumers and all(n.op_type == "Cast" for n in consumers)


def test_manifest_lineage(trained_run, tmp_path):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = export(ExportConfig(source=str(run), check_images=128))

    manifest = json.loads((run / "manifest.json").read_text())
    entry = manifest["artifacts"][result.onnx.name]
    assert entry["made_from"]["sha256"] == manifest["artifacts"]["checkpoint"]["sha256"]
    assert entry["metrics"]["check"]["top1_agreement"] == 1.0 and entry["input_contract"]["dtype"] == "uint8"


def test_export_out_folder_holds_its_own_manifest_and_evaluates_without_data(trained_run, tmp_path):
    import json

    from dawnpipe.infer.evaluate import EvalConfig, evaluate

    before = (trained_run / "manifest.json").read_bytes()
    result = export(ExportConfig(source=str(trained_run), out=str(tmp_path / "deploy"), check_images=128))

    manifest = json.loads((tmp_path / "deploy" / "manifest.json").read_text())
    assert result.onnx.name in manifest["artifacts"] and manifest["runs"]["export"]["source_sha256"]
    assert (trained_run / "manifest.json").read_bytes() == before  # the source run is not rewritten
    rows, path = evaluate(EvalConfig(artifact=str(result.onnx), tta=("none",), latency=False))
    assert path == tmp_path / "deploy" / "eval.json" and rows[0]["accuracy"] >= 0.75  # data from the ONNX metadata


def test_engine_record_and_sidecar_without_tensorrt(exports, tmp_path):
    from dawnpipe.export.tensorrt_build import engine_name, engine_record, read_sidecar, write_sidecar

    onnx_path = exports["flip", "fp16"].onnx
    meta = read_metadata(onnx_path)
    build = {
        "tensorrt": "10.9.0.34",
        "gpu": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "precision": "fp16",
        "typing": "strong",
        "profile": {"min": 1, "opt": 64, "max": 256},
    }
    record = engine_record(meta, build, onnx_path.name, "ab" * 32)
    assert record["precision"] == "fp16" and record["tta_mode"] == "flip" and record["classes"] == meta["classes"]
    assert record["made_from"] == {"onnx": onnx_path.name, "sha256": "ab" * 32} and record["profile"]["max"] == 256
    assert not set(record) & {"path", "sha256", "bytes"}  # artifact_entry's own keywords: no duplicates
    name = engine_name("resnet9-ema-flip-fp16", build)
    assert name.endswith("-NVIDIA_H100_80GB_HBM3-sm90-trt10.9.0.34.engine")
    engine = tmp_path / name
    engine.write_bytes(b"serialized engine bytes")
    from dawnpipe.common.manifest import artifact_entry

    entry = artifact_entry(tmp_path, engine, kind="tensorrt-engine", **record)  # raised TypeError before
    assert entry["precision"] == "fp16" and entry["made_from"]["onnx"] == onnx_path.name
    write_sidecar(engine, record)
    assert read_sidecar(engine)["input_contract"] == meta["input_contract"]
    engine.write_bytes(b"another engine")
    with pytest.raises(DawnpipeError, match="sha256 differs"):
        read_sidecar(engine)
    (tmp_path / (name + ".json")).unlink()
    with pytest.raises(DawnpipeError, match="no sidecar"):
        read_sidecar(engine)


def test_triton_repository(trained_run, tmp_path):
    def run(precision="fp32"):
        return export(
            ExportConfig(
                source=str(trained_run),
                out=str(tmp_path / "o"),
                triton=str(tmp_path / "repo"),
                precision=precision,
                check_images=128,
            )
        )

    result = run()
    config = tmp_path / "repo" / "resnet9_ema_none_fp32_onnx" / "config.pbtxt"
    assert config in result.triton and (config.parent / "1" / "model.onnx").exists()
    assert (config.parent / "labels.txt").read_text().split() == ["c0", "c1", "c2", "c3"]
    text = config.read_text()
    assert 'platform: "onnxruntime_onnx"' in text and "TYPE_UINT8" in text and "dynamic_batching" in text
    assert 'label_filename: "labels.txt"' in text
    assert "dims: [ 4 ]" in text and "max_batch_size: 1024" in config_pbtxt("m", "tensorrt_plan", 1024, 10)
    run("fp16")  # a second precision keeps its own model
    models = {p.name for p in (tmp_path / "repo").iterdir() if p.is_dir()}
    assert {"resnet9_ema_none_fp32_onnx", "resnet9_ema_none_fp16_onnx"} <= models
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    for model in models:  # Triton's own schema: an unknown or misspelt field raises ParseError
        parsed = text_format.Parse(
            (tmp_path / "repo" / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        assert parsed.name == model and parsed.input[0].data_type == model_config_pb2.TYPE_UINT8
        assert list(parsed.input[0].dims) == [32, 32, 3] and list(parsed.output[0].dims) == [4]
        assert parsed.output[0].label_filename == "labels.txt" and parsed.dynamic_batching.preferred_batch_size
    import json

    manifest = json.loads((tmp_path / "repo" / "manifest.json").read_text())["artifacts"]
    assert {k for k in manifest if k.startswith("triton:")} == {
        f"triton:{tmp_path / 'repo' / m / 'config.pbtxt'}" for m in models
    }  # keyed by repository path: the second export did not erase the first record
    (config.parent / "1" / "model.onnx").write_bytes(b"someone else's model")
    with pytest.raises(DawnpipeError, match="already holds a different model"):
        run()
    forced = export(ExportConfig(source=str(trained_run), out=str(tmp_path / "o"), triton=str(tmp_path / "repo"),
                                 check_images=128, force=True))  # fmt: skip
    assert (config.parent / "1" / "model.onnx").read_bytes() == forced.onnx.read_bytes()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available(),
    reason="TensorRT and a GPU are present; the trt-marked test builds a real engine instead",
)
def test_trt_without_tensorrt_still_writes_onnx(trained_run, tmp_path):
    with pytest.raises(DawnpipeError) as info:
        export(ExportConfig(source=str(trained_run), trt=True, out=str(tmp_path), check_images=128))
    message = str(info.value)
    assert ("TensorRT is not installed" in message) or ("no CUDA GPU" in message)
    assert (tmp_path / "resnet9-ema-none-fp32.onnx").exists()


@pytest.mark.trt
@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available(),
    reason="needs TensorRT and a CUDA GPU (neither can be installed on the CPU CI machine)",
)
def test_trt_engine_matches_onnxruntime(trained_run, tmp_path, images):
    from dawnpipe.infer.backends import TensorRTBackend

    result = export(
        ExportConfig(source=str(trained_run), trt=True, precision="fp16", out=str(trained_run), check_images=128)
    )
    with TensorRTBackend(result.engine) as engine, OnnxRuntimeBackend(result.onnx) as reference:
        assert (engine.infer(images).argmax(1) == reference.infer(images).argmax(1)).mean() >= 0.95


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_truncated_or_garbage_checkpoint(tmp_path, content):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(content)
    with pytest.raises(DawnpipeError, match="not a readable checkpoint"):
        export(ExportConfig(source=str(bad)))


def test_truncated_real_checkpoint(trained_run, tmp_path):
    data = (trained_run / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DawnpipeError, match="truncated"):
        export(ExportConfig(source=str(tmp_path)))


def test_foreign_checkpoint(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(DawnpipeError, match="not made by dawnpipe"):
        export(ExportConfig(source=str(tmp_path / "other.pt")))


def test_incompatible_version(trained_run, tmp_path):
    payload = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(DawnpipeError, match="version 99"):
        export(ExportConfig(source=str(tmp_path / "future.pt")))


def test_unwritable_output_folder(trained_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(DawnpipeError, match="--out .*sub lies under .*file, which is a file, where a folder belongs"):
        export(ExportConfig(source=str(trained_run), out=str(blocker / "sub")))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tta", "mirror"], "'mirror' is not one of"),
        (["--precision", "int4"], "'int4' is not one of"),
        (["--opset", "99"], "opset 99"),
    ],
)
def test_cli_bad_options_one_line(trained_run, args, message):
    result = CliRunner().invoke(main, ["export", str(trained_run), *args])
    assert result.exit_code in (1, 2) and message in result.output and "Traceback" not in result.output
    assert "Usage:" not in result.output  # usage errors are one line too
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1


def test_cli_export_prints_checks(trained_run, tmp_path):
    result = CliRunner().invoke(main, ["export", str(trained_run), "--out", str(tmp_path), "--tta", "flip"])
    assert result.exit_code == 0, result.output
    assert "max |logit diff|" in result.output and (tmp_path / "resnet9-ema-flip-fp32.onnx").exists()


def test_a_model_with_every_recipe_switch_exports_and_matches_pytorch(image_folder, tmp_path, images):
    """Pre-activation branches and the whitening bias change the graph; stochastic depth must vanish from it."""
    from dawnpipe.train.api import config_from_options
    from dawnpipe.train.trainer import train

    switches = {"preact": True, "stochastic_depth": 0.2, "whiten_bias": True, "bn_momentum": 0.4}
    cfg = config_from_options(data=image_folder, epochs=2, batch_size=32, lr=2.0, width=0.125, out=tmp_path,
                              name="switches", device="cpu", **switches)  # fmt: skip
    run = train(cfg, progress=False).run_dir
    result = export(ExportConfig(source=str(run), check_images=128))
    assert result.checks["fp32"]["top1_agreement"] == 1.0 and result.checks["fp32"]["max_abs_diff"] < 1e-3
    ops = {n.op_type for n in onnx.load(str(result.onnx)).graph.node}
    assert not ops & {"RandomUniformLike", "Bernoulli", "RandomUniform"}  # evaluation is the plain network
    assert read_metadata(result.onnx)["model_config"]["preact"] is True
    session = ort.InferenceSession(str(result.onnx), providers=["CPUExecutionProvider"])
    twice = [session.run(None, {"images": images})[0] for _ in range(2)]
    np.testing.assert_array_equal(twice[0], twice[1])  # deterministic

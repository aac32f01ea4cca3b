"""`dawnpipe import`: a foreign ONNX classifier adapted to dawnpipe's contract, checked, and refused in one line when
it cannot be judged. Every model here is a real ONNX file built in the test (torch's exporter or onnx.helper); the
logit checks are about fp32."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from dawnpipe.cli import main
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.export.adapter import ForeignContract, reference_inputs
from dawnpipe.export.entrant import IMPORTED_NAME, ImportConfig, import_model
from dawnpipe.export.flops import count_onnx
from dawnpipe.infer.backends import load
from tests.conftest import CLASSES

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


class _Net(torch.nn.Module):
    """A small CNN taking NCHW (or NHWC) float images: what a foreign entrant looks like to the exporter."""

    def __init__(self, classes: int = len(CLASSES), nhwc: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.nhwc = nhwc
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 16, 3),
            torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, classes),
        )  # fmt: skip

    def forward(self, x):
        return self.body(x.permute(0, 3, 1, 2) if self.nhwc else x)


def _export(path: Path, net: torch.nn.Module, shape=(2, 3, 32, 32), dynamic: bool = True, **kwargs) -> Path:
    axes = {"x": {0: "n"}, "y": {0: "n"}} if dynamic else None
    images = torch.zeros(*shape, dtype=next(net.parameters()).dtype)  # a float16 net takes float16 images
    torch.onnx.export(
        net.eval(), (images,), str(path), input_names=["x"], output_names=["y"], dynamic_axes=axes,
        opset_version=17, dynamo=False, **kwargs,
    )  # fmt: skip
    return path


def _import(model: Path, data: Path, out: Path, **options) -> object:
    contract = options.pop("contract", ForeignContract(mean=MEAN, std=STD))
    return import_model(ImportConfig(model=str(model), data=str(data), out=str(out), contract=contract, **options))


def _images(n: int = 40) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_an_nchw_model_is_adapted_and_its_logits_equal_the_foreign_models_fp32(tmp_path, image_folder):
    net = _Net()
    foreign = _export(tmp_path / "entrant.onnx", net)
    result = _import(foreign, image_folder, tmp_path / "runs", holdout=20)
    assert result.check["max_abs_diff"] <= 1e-4 and result.check["images"] == 256 + result.check["real_images"]
    images = _images()
    with torch.no_grad():  # the foreign model itself, given its own preprocessing
        want = net(torch.from_numpy(reference_inputs(images, ForeignContract(mean=MEAN, std=STD)))).numpy()
    with load(result.onnx) as backend:
        got = backend.infer(images)
        assert backend.lineage == "manifest" and backend.classes == CLASSES
    assert np.abs(got - want).max() < 1e-4
    meta = backend.meta
    assert meta["entrant"]["foreign_sha256"] and meta["weights"] == "foreign" and meta["lineage"] == "imported"
    assert meta["input_contract"]["normalization"]["mean"] == pytest.approx([m * 255 for m in MEAN])
    assert set(meta["selective"]["modes"]) == {
        "selective-flip", "selective-translate", "selective-flip-translate", "selective-airbench94"
    }  # fmt: skip
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    entry = manifest["artifacts"][IMPORTED_NAME]
    assert entry["made_from"]["sha256"] == manifest["runs"]["import"]["entrant"]["foreign_sha256"]
    assert entry["lineage"] == "imported" and manifest["runs"]["import"]["holdout"]["images"] == 20
    # FLOPs counted from the graph: the adapter adds elementwise work only, the model FLOPs are the foreign graph's
    assert count_onnx(result.onnx).model_flops == count_onnx(foreign).model_flops > 0
    assert result.gflops == pytest.approx(count_onnx(foreign).model_flops / 1e9)


def test_an_nhwc_0_255_model_and_a_model_in_another_class_order(tmp_path, image_folder):
    net = _Net(nhwc=True)
    foreign = _export(tmp_path / "nhwc.onnx", net, shape=(2, 32, 32, 3))
    contract = ForeignContract(layout="NHWC", input_range="0-255", mean=(120.0, 110.0, 100.0), std=(60.0, 61, 62))
    order = list(reversed(CLASSES))  # the model's logit k scores class order[k]
    result = _import(foreign, image_folder, tmp_path / "runs", contract=contract, classes=",".join(order), holdout=0)
    images = _images()
    with torch.no_grad():
        raw = net(torch.from_numpy(reference_inputs(images, contract))).numpy()
    with load(result.onnx) as backend:
        got = backend.infer(images)
        assert backend.selective is None  # --holdout 0: no selective modes
    assert np.abs(got - raw[:, ::-1]).max() < 1e-4  # logits in the data's class order
    assert backend.meta["entrant"]["model_classes"] == order and backend.meta["entrant"]["reordered_to_data_classes"]


def _two_inputs(path: Path) -> Path:
    class Two(torch.nn.Module):
        def forward(self, a, b):
            return (a + b).mean(dim=(2, 3))[:, :1].repeat(1, len(CLASSES))

    torch.onnx.export(Two(), (torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32)), str(path), dynamo=False,
                      input_names=["a", "b"], dynamic_axes={"a": {0: "n"}, "b": {0: "n"}})  # fmt: skip
    return path


def _two_outputs(path: Path) -> Path:
    class Two(torch.nn.Module):
        def forward(self, x):
            y = x.mean(dim=(2, 3))[:, :1].repeat(1, len(CLASSES))
            return y, y * 2

    torch.onnx.export(Two(), (torch.zeros(2, 3, 32, 32),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})  # fmt: skip
    return path


def _flat_input(path: Path) -> Path:
    return _export(path, torch.nn.Linear(3 * 32 * 32, len(CLASSES)), shape=(2, 3 * 32 * 32))


def _wrong_output(path: Path) -> Path:
    return _export(path, torch.nn.Conv2d(3, len(CLASSES), 1), shape=(2, 3, 32, 32))  # [N, classes, 32, 32]


def _external(path: Path) -> Path:
    model = onnx.load(str(_export(path.with_name("inline.onnx"), _Net())))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)  # fmt: skip
    return path


def _unloadable(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", len(CLASSES)])
    node = helper.make_node("NoSuchClassifier", ["x"], ["y"], domain="com.example.nowhere")
    graph = helper.make_graph([node], "g", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.nowhere", 1)]
    )
    onnx.save_model(model, str(path))
    return path


def _ir3(path: Path) -> Path:
    model = onnx.load(str(_export(path.with_name("current.onnx"), _Net())))
    model.graph.input.extend(  # IR 3: every initializer is also a graph input
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer
    )
    model.ir_version = 3
    onnx.save_model(model, str(path))
    return path


def _symbolic_classes(path: Path) -> Path:
    """10 classes behind a symbolic class dimension: the graph's shapes cannot tell, running it can."""
    torch.onnx.export(
        _Net(classes=10).eval(), (torch.zeros(2, 3, 32, 32),), str(path), input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n", 1: "classes"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    return path


REFUSALS = {
    "two inputs": (_two_inputs, {}, "has 2 inputs"),
    "two outputs": (_two_outputs, {}, "has 2 outputs"),
    "non-image input": (_flat_input, {}, "not an image batch"),
    "28x28 images": (
        lambda p: _export(p, _Net(), shape=(2, 3, 28, 28)),
        {},
        "takes 28x28 images; the data's are 32x32",
    ),
    "fixed batch": (lambda p: _export(p, _Net(), dynamic=False), {}, "fixed batch of 2"),
    "output not [N, classes]": (_wrong_output, {}, "not [N, classes] logits"),
    "class count": (lambda p: _export(p, _Net(classes=10)), {}, "scores 10 classes; the data has 4"),
    "symbolic class count": (_symbolic_classes, {}, "scores 10 classes; the data has 4"),  # known by running it
    "external data": (_external, {}, "external data files"),
    "unloadable": (_unloadable, {}, "onnxruntime cannot load"),
    "IR version 3": (_ir3, {}, "IR version 4 or later|onnxruntime cannot load"),
    "wrong layout": (lambda p: _export(p, _Net()), {"contract": ForeignContract(layout="NHWC")}, "--layout NCHW"),
    "unknown class names": (lambda p: _export(p, _Net()), {"classes": "c0,c1,c2,cat"}, "unknown ['cat']"),
    "std zero": (lambda p: _export(p, _Net()), {"contract": ForeignContract(std=(1, 0, 1))}, "not positive"),
    "mean outside range": (lambda p: _export(p, _Net()), {"contract": ForeignContract(mean=(120, 0, 0))}, "outside"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_model_dawnpipe_cannot_judge_is_refused_in_one_line_and_nothing_is_written(case, tmp_path, image_folder):
    build, options, message = REFUSALS[case]
    model = build(tmp_path / "foreign.onnx")
    with pytest.raises(DawnpipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _import(model, image_folder, tmp_path / "runs", **options)
    assert not (tmp_path / "runs" / "foreign").exists()


def test_the_import_command_prints_where_the_run_went_and_refuses_in_one_line(tmp_path, image_folder):
    foreign = _export(tmp_path / "entrant.onnx", _Net())
    common = ["import", str(foreign), "--data", str(image_folder), "--out", str(tmp_path / "runs"), "--holdout", "20"]
    contract = ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]
    done = CliRunner().invoke(main, [*common, *contract, "--check-images", "16", "--tolerance", "5e-4"])
    assert done.exit_code == 0, done.output
    assert f"onnx:     {tmp_path / 'runs' / 'entrant' / IMPORTED_NAME}" in done.output
    check = json.loads((tmp_path / "runs" / "entrant" / "manifest.json").read_text())["runs"]["import"]["check"]
    assert check["random_images"] == 16 and check["tolerance"] == 5e-4 and check["tolerance_rule"].startswith("float32")
    again = CliRunner().invoke(main, common)
    assert again.exit_code == 1 and again.output.count("\n") == 1 and "already holds a finished run" in again.output
    bad = CliRunner().invoke(main, [*common, "--name", "x", "--mean", "1,2"])
    assert bad.exit_code == 1 and "--mean needs 3 numbers" in bad.output and bad.output.count("\n") == 1


def test_downstream_stages_take_an_imported_model(tmp_path, image_folder):
    """eval with airbench94's views and a selective mode, int8 from the imported file (calibrated on the data's
    training images, its own thresholds), and predict: the imported folder works as an exported one does."""
    foreign = _export(tmp_path / "entrant.onnx", _Net())
    result = _import(foreign, image_folder, tmp_path / "runs", holdout=20)
    runner = CliRunner()
    done = runner.invoke(main, ["export", str(result.run_dir), "--precision", "int8", "--calibration-images", "32"])
    assert done.exit_code == 0, done.output
    assert "int8 check vs model-fp32.onnx (fp32)" in done.output
    int8 = result.run_dir / "model-int8.onnx"
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert (
        manifest["artifacts"]["model-int8.onnx"]["made_from"]["sha256"]
        == manifest["artifacts"][IMPORTED_NAME]["sha256"]
    )
    with load(int8) as backend:
        assert backend.precision == "int8" and "selective-airbench94" in backend.selective["modes"]
        assert backend.meta["quantization"]["calibration_images"] == 32
    refused = runner.invoke(main, ["export", str(result.run_dir), "--precision", "fp16"])
    assert refused.exit_code == 1 and "already its own file (model-fp32.onnx)" in refused.output
    modes = "none,airbench94,selective-airbench94"
    done = runner.invoke(
        main, ["eval", str(result.onnx), str(int8), "--data", str(image_folder), "--tta", modes, "--no-latency"]
    )
    assert done.exit_code == 0, done.output
    rows = json.loads((result.run_dir / "eval.json").read_text())["rows"]
    assert {(r["precision"], r["tta"]) for r in rows} == {(p, m) for p in ("fp32", "int8") for m in modes.split(",")}
    assert all(r["views_per_image"] == 6.0 for r in rows if r["tta"] == "airbench94")
    from tests.conftest import png_bytes

    image = tmp_path / "one.png"
    image.write_bytes(png_bytes(_images(1)[0]))
    folder = str(result.run_dir)  # an imported folder stands for its fp32 file
    done = runner.invoke(main, ["predict", folder, str(image), "--tta", "airbench94", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["results"][0]["predictions"][0]["class"] in CLASSES


def test_a_float16_model_is_imported_as_fp16_checked_in_fp16_units_and_quantizes(tmp_path, image_folder):
    """A real float16 ONNX model (torch's exporter on a half-precision net): the adapted file is named and stamped
    fp16, its logit check runs at fp16 resolution (onnxruntime's CPU runs a float16 graph in mixed precision, so a
    float32 tolerance would refuse a correct adapter), its logits match the foreign net's own float16 forward, the
    run folder stands for the file, and int8 is made from it and checked against it. About float16."""
    net = _Net().half()
    foreign = _export(tmp_path / "half.onnx", net)
    assert onnx.load(str(foreign)).graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    result = _import(foreign, image_folder, tmp_path / "runs", holdout=20)
    check = result.check
    assert result.onnx.name == "model-fp16.onnx" and check["tolerance_rule"].startswith("float16 model")
    assert check["max_abs_diff"] <= check["tolerance"] <= 0.05  # 8 fp16 units of logits of order 1, not a blank check
    images = _images()
    with torch.no_grad():  # the foreign net itself in float16, given its own preprocessing
        want = net(torch.from_numpy(reference_inputs(images, ForeignContract(mean=MEAN, std=STD), float16=True)))
    with load(result.run_dir) as backend:  # the folder stands for its adapted file
        assert backend.path == result.onnx and backend.precision == "fp16"
        got = backend.infer(images)
    assert np.abs(got - want.float().numpy()).max() <= check["tolerance"]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["runs"]["import"]["file"] == "model-fp16.onnx" and "model-fp16.onnx" in manifest["artifacts"]
    if importlib.util.find_spec("openvino") is not None:  # the dev extra brings it; the row says what ran
        with load(result.onnx, "openvino", threads=1) as backend:
            ran = backend.describe()
        assert ran["precision"] == "fp16" and ran["openvino"]["compute_precision"] == "f32"  # as exported: f32 hint
    done = CliRunner().invoke(
        main, ["export", str(result.run_dir), "--precision", "int8", "--calibration-images", "32"]
    )
    assert done.exit_code == 0, done.output
    assert "int8 check vs model-fp16.onnx (fp16)" in done.output
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    entry = manifest["artifacts"]["model-int8.onnx"]
    assert entry["made_from"]["sha256"] == manifest["artifacts"]["model-fp16.onnx"]["sha256"]
    assert entry["metrics"]["model_gflops_per_image"] == pytest.approx(result.gflops)
    refused = CliRunner().invoke(main, ["export", str(result.run_dir), "--precision", "fp16"])
    assert refused.exit_code == 1 and "already its own file (model-fp16.onnx)" in refused.output


def test_a_manifest_naming_another_imported_file_is_refused_in_one_line(tmp_path, image_folder):
    """The import record's file name is read from JSON an earlier run wrote (untrusted): only the two names
    `dawnpipe import` writes are taken, so an edited manifest cannot point a folder at a file elsewhere."""
    result = _import(_export(tmp_path / "entrant.onnx", _Net()), image_folder, tmp_path / "runs", holdout=0)
    manifest_path = result.run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["runs"]["import"]["file"] == IMPORTED_NAME
    manifest["runs"]["import"]["file"] = "../elsewhere.onnx"
    manifest_path.write_text(json.dumps(manifest))
    done = CliRunner().invoke(main, ["eval", str(result.run_dir), "--tta", "none", "--no-latency"])
    assert done.exit_code == 1 and done.output.count("\n") == 1
    assert "names '../elsewhere.onnx' as the imported file" in done.output

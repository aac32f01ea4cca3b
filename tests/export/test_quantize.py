"""INT8 export: the QDQ graph keeps the uint8 contract and the metadata, agrees with fp32, counts the same
FLOPs, and refuses bad calibration options with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from dawnpipe.common.errors import BackendRefused, DawnpipeError
from dawnpipe.export.api import ExportConfig, export
from dawnpipe.export.config import Int8Spec
from dawnpipe.export.flops import count_onnx
from dawnpipe.export.onnx_export import read_metadata
from dawnpipe.export.quantize import check_not_quantized
from dawnpipe.infer.backends import load
from tests.conftest import make_images


@pytest.fixture(scope="module")
def pair(trained_run, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("int8")
    made = {}
    for precision in ("fp32", "int8"):
        cfg = ExportConfig(source=str(trained_run), precision=precision, out=str(out), check_images=256,
                           int8=Int8Spec(calibration_images=64))  # fmt: skip
        made[precision] = export(cfg).onnx
    return made


def test_int8_graph_contract_and_metadata(pair):
    model = onnx.load(str(pair["int8"]))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    (inp,) = model.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1:] == [32, 32, 3]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = read_metadata(pair["int8"])
    assert meta["precision"] == "int8" and meta["classes"] == ["c0", "c1", "c2", "c3"]
    assert (
        meta["quantization"]["calibration_images"] == 64 and "never test" in meta["quantization"]["calibration_source"]
    )
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert producers.get(first_conv.input[1]) != "DequantizeLinear"  # the whitening conv keeps fp32 weights


def test_int8_agrees_with_fp32_and_counts_the_same_flops(pair):
    images = make_images(32, seed=21)[0]
    with load(pair["fp32"]) as fp32, load(pair["int8"]) as int8:
        assert int8.precision == "int8"
        a, b = fp32.infer(images), int8.infer(images)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9
    assert np.abs(a - b).max() < 2.0
    assert count_onnx(pair["int8"]).model_flops == count_onnx(pair["fp32"]).model_flops


def test_quantizing_twice_is_refused(pair):
    with pytest.raises(DawnpipeError, match="already quantized"):
        check_not_quantized(pair["int8"])
    check_not_quantized(pair["fp32"])


@pytest.mark.parametrize(
    "spec, message",
    [
        (Int8Spec(calibration_images=0), "leaves nothing"),
        (Int8Spec(calibration_images=10**6), "more than the"),
        (Int8Spec(calibration_method="magic"), "unknown calibration method"),
        (Int8Spec(calibration_data="/nonexistent/cifar"), "--calibration-data"),
    ],
)
def test_bad_calibration_options_are_refused_before_writing(trained_run, tmp_path, spec, message):
    with pytest.raises(DawnpipeError, match=message) as info:
        export(ExportConfig(source=str(trained_run), precision="int8", out=str(tmp_path), int8=spec))
    assert "\n" not in str(info.value)
    assert not list(tmp_path.glob("*.onnx"))


def test_an_int8_graph_that_disagrees_is_refused_naming_another_range_method(trained_run, tmp_path):
    # an agreement no graph reaches stands in for a model whose minmax ranges are stretched by rare activations
    spec = Int8Spec(calibration_images=64, min_agreement=1.01)
    with pytest.raises(BackendRefused) as info:
        export(ExportConfig(source=str(trained_run), precision="int8", out=str(tmp_path), check_images=128, int8=spec))
    assert "agrees with fp32 on only" in info.value.problem and "was not kept" in info.value.problem
    assert "--calibration-method percentile (this was minmax)" in info.value.fix
    assert not list(tmp_path.glob("*.onnx"))

"""Every graph dawnpipe exports is held to TensorRT 10's ONNX rules, and each rule can fail: hand-built graphs that
break one rule each are named by node, op and rule, through the API and through `dawnpipe check-trt`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from dawnpipe.cli import main
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.tta import TTA_MODES
from dawnpipe.export.api import ExportConfig, export
from dawnpipe.export.config import Int8Spec
from dawnpipe.export.trt_rules import (
    check_tensorrt,
    parse_with_tensorrt,
    require_tensorrt,
    tensorrt_violations,
)


@pytest.fixture(scope="module")
def every_export(trained_run, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """fp32, fp16 and both int8 schemes, each with every TTA mode baked into the graph."""
    out = tmp_path_factory.mktemp("trt-rules")
    made = {}
    for precision in ("fp32", "fp16", "int8", "int8-asym"):
        for mode in TTA_MODES:
            cfg = ExportConfig(source=str(trained_run), tta=mode, precision=precision, out=str(out), check_images=128,
                               int8=Int8Spec(calibration_images=64, min_agreement=0.9))  # fmt: skip
            made[precision, mode] = export(cfg).onnx
    return made


@pytest.mark.parametrize("mode", TTA_MODES)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_tensorrt_bound_export_passes_the_rules(every_export, precision, mode):
    path = every_export[precision, mode]
    assert tensorrt_violations(onnx.load(str(path))) == []
    manifest = json.loads((path.parent / "manifest.json").read_text())
    recorded = manifest["artifacts"][path.name]["metrics"]["check"]["tensorrt_rules"]
    assert recorded["passed"] and "10.1-GA" in recorded["rules"]


@pytest.mark.parametrize("mode", TTA_MODES)
def test_the_int8_graph_is_symmetric_signed_and_keeps_biases_in_float(every_export, mode):
    model = onnx.load(str(every_export["int8", mode]))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero = init[node.input[2]]
        assert zero.dtype == np.int8 and not zero.any(), node.name
        if node.op_type == "DequantizeLinear" and node.input[0] in init:
            assert init[node.input[0]].dtype == np.int8  # weights only: no int32 bias dequantization
            axis = [a.i for a in node.attribute if a.name == "axis"]
            assert init[node.input[1]].size == 1 or axis in ([0], [1])  # per output channel (Conv 0, MatMul 1)
        elif init[node.input[1]].size != 1:
            pytest.fail(f"{node.name}: per-channel scale on an activation")


def test_the_asymmetric_graph_is_named_as_onnxruntime_only(every_export, trained_run, tmp_path):
    result = check_tensorrt(every_export["int8-asym", "none"])
    assert not result["passed"] and any("uint8" in v or "int32" in v for v in result["violations"])
    with pytest.raises(DawnpipeError, match="breaks TensorRT 10's ONNX rules: node '.*' \\(.*Linear\\)"):
        require_tensorrt(every_export["int8-asym", "none"])
    # the TensorRT path refuses it before any work: nothing is written
    with pytest.raises(DawnpipeError, match="use --precision int8"):
        export(ExportConfig(source=str(trained_run), precision="int8-asym", trt=True, out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


# ---- one broken rule per hand-built graph


def _model(nodes, inputs, initializers=(), opset=17, outputs=None):
    outputs = outputs or [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


_X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
_U8 = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 8, 8, 3])


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


_CASES = {
    "indices output": (
        _model([helper.make_node("MaxPool", ["x"], ["y", "idx"], name="pool", kernel_shape=[2, 2])], [_X]),
        ("pool", "MaxPool", "Indices"),
    ),
    "uint8 zero point": (
        _model(
            [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q")],
            [_X],
            [_const("s", np.float32(0.1)), _const("z", np.uint8(128))],
            outputs=[helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        ),
        ("q", "QuantizeLinear", "signed int8 only"),
    ),
    "nonzero zero point": (
        _model(
            [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q")],
            [_X],
            [_const("s", np.float32(0.1)), _const("z", np.int8(3))],
            outputs=[helper.make_tensor_value_info("y", TensorProto.INT8, None)],
        ),
        ("q", "QuantizeLinear", "not 0"),
    ),
    "missing zero point": (
        _model(
            [helper.make_node("QuantizeLinear", ["x", "s"], ["y"], name="q")],
            [_X],
            [_const("s", np.float32(0.1))],
            outputs=[helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        ),
        ("q", "QuantizeLinear", "no y_zero_point"),
    ),
    "per-channel activation": (
        _model(
            [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q", axis=1)],
            [_X],
            [_const("s", np.full(4, 0.1, np.float32)), _const("z", np.zeros(4, np.int8))],
            outputs=[helper.make_tensor_value_info("y", TensorProto.INT8, None)],
        ),
        ("q", "QuantizeLinear", "weights only"),
    ),
    "integer conv": (
        _model(
            [helper.make_node("ConvInteger", ["x", "w"], ["y"], name="ci")],
            [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 4, 8, 8])],
            [_const("w", np.zeros((4, 4, 1, 1), np.int8))],
            outputs=[helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        ),
        ("ci", "ConvInteger", "integer-arithmetic"),
    ),
    "uint8 input not into a Cast": (
        _model(
            [helper.make_node("Identity", ["x"], ["y"], name="id")],
            [_U8],
            outputs=[helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        ),
        ("id", "Identity", "may feed only a Cast"),
    ),
    "opset too new": (
        _model([helper.make_node("Relu", ["x"], ["y"], name="r")], [_X], opset=21),
        ("(model)", "opset", "outside TensorRT 10's 9-20"),
    ),
    "unsupported op": (
        _model([helper.make_node("Unique", ["x"], ["y"], name="u")], [_X]),
        ("u", "Unique", "not in TensorRT 10's ONNX operator support list"),
    ),
    "another domain": (
        _model([helper.make_node("QLinearAdd", ["x"], ["y"], name="m", domain="com.microsoft")], [_X]),
        ("m", "QLinearAdd", "domain 'com.microsoft'"),
    ),
}


@pytest.mark.parametrize("case", list(_CASES))
def test_each_rule_names_the_node_the_op_and_the_rule(case, tmp_path):
    model, (node, op, rule) = _CASES[case]
    found = tensorrt_violations(model)
    assert any(v.node == node and v.op == op and rule in v.rule for v in found), [v.line() for v in found]
    path = tmp_path / f"{case.replace(' ', '-')}.onnx"
    onnx.save(model, str(path))
    before = path.read_bytes()
    result = CliRunner().invoke(main, ["check-trt", str(path)])
    assert result.exit_code == 1 and f"node '{node}' ({op})" in result.stderr and rule in result.stderr
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty (0 bytes)"), (b"not a protobuf \xff\xfe", "not a readable ONNX model"), (None, "does not exist")],
)
def test_check_trt_on_a_file_that_is_not_onnx_says_so_in_one_line(tmp_path, content, message):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(main, ["check-trt", str(path)])
    assert result.exit_code == 1 and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_check_trt_passes_a_good_file_and_says_whether_tensorrt_parsed_it(every_export):
    path = every_export["int8", "flip"]
    result = CliRunner().invoke(main, ["check-trt", str(path)])
    assert result.exit_code == 0 and "passes TensorRT 10's ONNX rules" in result.output
    assert parse_with_tensorrt(path).split(":")[0] in result.output


@pytest.mark.trt
def test_tensorrt_own_parser_accepts_every_tensorrt_bound_export(every_export):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (it cannot be on the CPU CI machine)")
    for (precision, _mode), path in every_export.items():
        verdict = parse_with_tensorrt(path)
        if verdict.startswith("not run"):
            pytest.skip(verdict)
        assert verdict.startswith("passed") == (precision != "int8-asym"), (path.name, verdict)

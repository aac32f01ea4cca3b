"""FLOP counts of hand-built graphs against hand arithmetic, the ResNet-9 count, and the torch cross-check."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dawnpipe.costs.reference import resnet18_cifar, resnet18_flops
from dawnpipe.export.flops import count_onnx, count_torch
from dawnpipe.export.graph import build_deploy_model
from dawnpipe.export.onnx_export import onnx_graph
from dawnpipe.train.model import ModelConfig, ResNet9


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_one_conv_by_hand():
    w = np.zeros((8, 3, 3, 3), np.float32)
    b = np.zeros(8, np.float32)
    model = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
        [_input("x", ["n", 3, 10, 10])],
        [_input("y", ["n", 8, 10, 10])],
        {"w": w, "b": b},
    )
    count = count_onnx(model)
    macs = 8 * 10 * 10 * (3 * 3 * 3)  # output elements x (Cin x kh x kw)
    assert count.macs == macs and count.by_category["conv"] == 2 * macs
    assert count.by_category["elementwise"] == 8 * 10 * 10  # the bias adds
    assert count.model_flops == 2 * macs


def test_one_gemm_by_hand():
    model = _model(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        [_input("x", ["n", 64])],
        [_input("y", ["n", 10])],
        {"w": np.zeros((10, 64), np.float32)},
    )
    assert count_onnx(model).by_category["linear"] == 2 * 64 * 10


@pytest.mark.parametrize(("kernel", "stride", "side"), [(2, 2, 4), (3, 1, 6)])
def test_pooling_counts_each_output_window(kernel, stride, side):
    # 2x2 stride 2 reads every input element once (8x8 -> 4x4); 3x3 stride 1 reads most of them 9 times (8x8 -> 6x6)
    model = _model(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride])],
        [_input("x", ["n", 5, 8, 8])],
        [_input("y", ["n", 5, side, side])],
        {},
    )
    assert count_onnx(model).by_category["pooling"] == 5 * side * side * kernel * kernel
    assert count_onnx(model).model_flops == 0


def test_tta_graph_counts_every_view():
    # the TTA pattern: views concatenated along the batch, one conv over all of them, then averaged
    w = np.zeros((4, 3, 3, 3), np.float32)
    nodes = [
        helper.make_node("Concat", ["x", "x", "x"], ["v"], axis=0),
        helper.make_node("Conv", ["v", "w"], ["y"], pads=[1, 1, 1, 1]),
    ]
    model = _model(nodes, [_input("x", ["n", 3, 8, 8])], [_input("y", ["m", 4, 8, 8])], {"w": w})
    assert count_onnx(model).by_category["conv"] == 3 * 2 * (4 * 8 * 8 * 27)


def test_unknown_op_is_listed_not_zeroed_silently():
    model = _model([helper.make_node("Det", ["x"], ["y"])], [_input("x", ["n", 3, 3])], [_input("y", ["n"])], {})
    count = count_onnx(model)
    assert count.unknown_ops == ["Det"] and count.to_dict()["unknown_ops"] == ["Det"]


def test_resnet9_exported_graph(tmp_path):
    payload = {
        "model_config": ModelConfig().to_dict(),
        "ema": ResNet9(ModelConfig()).state_dict(),
        "normalization": {"mean": [125.0] * 3, "std": [63.0] * 3},
    }
    path = tmp_path / "r9.onnx"
    onnx.save(onnx_graph(build_deploy_model(payload)), str(path))  # the graph every export writes
    count = count_onnx(path)
    assert count.model_flops == pytest.approx(0.7585e9, rel=0.01)
    assert count.unknown_ops == []
    reference = count_torch(ResNet9(ModelConfig()).eval(), torch.zeros(1, 3, 32, 32))
    assert count.by_category["conv"] == reference["conv"] and count.by_category["linear"] == reference["linear"]
    onnx.checker.check_model(str(path))


def test_resnet18_reference_is_computed():
    flops = resnet18_flops()
    assert 1.0e9 < flops < 1.2e9  # CIFAR ResNet-18: about 0.56 GMACs
    assert sum(p.numel() for p in resnet18_cifar().parameters()) == pytest.approx(11.17e6, rel=0.01)

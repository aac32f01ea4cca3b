"""FLOPs counted from the deployed ONNX graph itself, per node and per category, per image.

The graph is shape-inferred at batch 1, so a graph with TTA views inside (which stacks the views along the
batch) counts every view without being told. Categories:

- ``conv`` and ``linear`` (Gemm/MatMul): 2 FLOPs per multiply-accumulate, bias excluded. These are the
  "model FLOPs" a benchmark rule compares; they match torch.utils.flop_counter exactly.
- ``elementwise`` (one FLOP per output element, biases of Conv/Gemm included), ``pooling`` (one per element of
  each output window), ``normalization`` (two per element), ``data`` (indexing and layout ops: zero FLOPs).
- ``unknown``: ops this counter has no rule for; listed by name in every report, never silently zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError

_ELEMENTWISE = {
    "QuantizeLinear",  # int8 graphs: one scale-and-round per element
    "DequantizeLinear",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "Celu",
    "Elu",
    "LeakyRelu",
    "Exp",
    "Log",
    "Sqrt",
    "Neg",
    "Abs",
    "Where",
    "Clip",
    "Max",
    "Min",
    "Sigmoid",
    "Tanh",
    "Greater",
    "Less",
    "Equal",
    "Pow",
    "Softmax",
    "Erf",
    "Reciprocal",
    "HardSigmoid",
    "HardSwish",
    "PRelu",
    "Not",
    "And",
    "Or",
    "Floor",
    "Ceil",
}
_POOLING = {
    "MaxPool",
    "AveragePool",
    "GlobalMaxPool",
    "GlobalAveragePool",
    "ReduceMax",
    "ReduceMean",
    "ReduceSum",
    "ReduceMin",
}
_NORMALIZATION = {"BatchNormalization", "InstanceNormalization", "LayerNormalization"}
_DATA = {
    "Gather",
    "Transpose",
    "Reshape",
    "Concat",
    "Cast",
    "Shape",
    "Slice",
    "Unsqueeze",
    "Squeeze",
    "Constant",
    "Identity",
    "Flatten",
    "Split",
    "Expand",
    "ConstantOfShape",
    "Range",
    "Tile",
    "Pad",
    "Size",
    "GatherND",
    "GatherElements",
    "ScatterND",
    "ArgMax",
    "TopK",
    "NonZero",
    "Dropout",
}


@dataclass
class FlopCount:
    """Per-image counts of one graph."""

    by_category: dict[str, int] = field(default_factory=dict)
    macs: int = 0  # multiply-accumulates in conv and linear layers
    unknown_ops: list[str] = field(default_factory=list)

    @property
    def model_flops(self) -> int:
        """Conv + linear FLOPs per image: the figure budgets compare."""
        return self.by_category.get("conv", 0) + self.by_category.get("linear", 0)

    @property
    def total_flops(self) -> int:
        """Every counted FLOP per image."""
        return sum(self.by_category.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for reports."""
        out = {
            "model_flops": self.model_flops,
            "model_gflops": self.model_flops / 1e9,
            "macs": self.macs,
            "total_flops": self.total_flops,
            "by_category": dict(self.by_category),
            "unknown_ops": sorted(set(self.unknown_ops)),
        }
        return out


def count_onnx(path_or_model: str | Path | Any) -> FlopCount:
    """Count FLOPs per image of an ONNX file or ModelProto (batch dimension fixed to 1)."""
    import onnx

    model = path_or_model
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(path_or_model))
        except Exception as err:
            raise DawnpipeError(
                f"{path_or_model} is not a readable ONNX model ({type(err).__name__})",
                "re-export it with `cli.py export`",
            ) from None
    model = _with_batch_one(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as err:
        raise DawnpipeError(
            f"ONNX shape inference failed ({str(err).splitlines()[0][:200]})", "export with a supported opset"
        ) from None
    shapes = _value_shapes(model)
    count = FlopCount()
    for node in model.graph.node:
        category, flops, macs = _node_flops(node, shapes)
        if category == "unknown":
            count.unknown_ops.append(node.op_type)
        for cat, value in ((category, flops), *((("elementwise", b),) if (b := _bias_adds(node, shapes)) else ())):
            count.by_category[cat] = count.by_category.get(cat, 0) + value
        count.macs += macs
    return count


def _with_batch_one(model):
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    for value in model.graph.output:  # let inference derive outputs: a TTA graph's inner batch is views x 1
        value.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    return model


def _value_shapes(model) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:  # the shape is in the proto: the weights need not be decoded
        shapes[init.name] = tuple(init.dims)
    return shapes


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else (a.i if a.type == a.INT else default)
    return default


def _numel(shape: tuple[int, ...] | None) -> int:
    return int(np.prod(shape)) if shape is not None else 0


def _node_flops(node, shapes) -> tuple[str, int, int]:
    op = node.op_type
    out = shapes.get(node.output[0]) if node.output else None
    if op == "Conv":
        w = shapes.get(node.input[1])
        if out is None or w is None:
            return "unknown", 0, 0
        macs = _numel(out) * int(np.prod(w[1:]))  # every output element: Cin/groups x kh x kw MACs
        return "conv", 2 * macs, macs
    if op in ("Gemm", "MatMul"):
        a = shapes.get(node.input[0])
        if out is None or a is None:
            return "unknown", 0, 0
        k = a[0] if (op == "Gemm" and _attr(node, "transA", 0)) else a[-1]
        macs = _numel(out) * k
        return "linear", 2 * macs, macs
    if op in _ELEMENTWISE:
        return "elementwise", _numel(out), 0
    if op in _POOLING:  # one FLOP per element of each output's window
        return "pooling", _pooling_reads(node, shapes, out), 0
    if op in _NORMALIZATION:
        return "normalization", 2 * _numel(out), 0
    if op in _DATA:
        return "data", 0, 0
    return "unknown", 0, 0


def _pooling_reads(node, shapes, out) -> int:
    """Elements read by a pooling or reduction: output elements x window size. A windowed pool's window is its
    kernel_shape (overlapping windows read an element more than once); a global pool's and a reduction's windows
    tile the input, so their reads are the input's elements."""
    kernel = _attr(node, "kernel_shape", None)
    if node.op_type in ("MaxPool", "AveragePool") and kernel and out is not None:
        return _numel(out) * int(np.prod(kernel))
    return _numel(shapes.get(node.input[0]))


def _bias_adds(node, shapes) -> int:
    """Bias additions of Conv/Gemm (one per output element), counted as elementwise work."""
    if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:
        return _numel(shapes.get(node.output[0]))
    return 0


def count_torch(model, example) -> dict[str, int]:
    """Conv and linear FLOPs of a PyTorch model per torch.utils.flop_counter (the cross-check)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(example)
    table = counter.get_flop_counts().get("Global", {})
    conv = sum(v for k, v in table.items() if "convolution" in str(k))
    linear = sum(v for k, v in table.items() if any(s in str(k) for s in ("mm", "addmm", "matmul", "linear")))
    return {"conv": int(conv), "linear": int(linear)}


def artifact_flops(path: str | Path) -> FlopCount:
    """FLOPs per image of a deployable artifact: an ONNX file directly, an engine through the ONNX it was built
    from (manifest lineage), a checkpoint through its exported graph built in memory."""
    path = Path(path)
    if path.suffix == ".onnx":
        return count_onnx(path)
    if path.suffix in (".engine", ".plan", ".trt"):
        from dawnpipe.common.files import sha256_file
        from dawnpipe.export.tensorrt_build import read_sidecar

        lineage = read_sidecar(path)["made_from"]
        source = path.parent / lineage["onnx"]
        if not source.exists() or sha256_file(source) != lineage["sha256"]:
            raise DawnpipeError(
                f"{path.name} was built from {lineage['onnx']} (sha256 {lineage['sha256'][:12]}...), which is not "
                "beside it, so its FLOPs cannot be counted",
                "keep the engine's source ONNX in the same folder",
            )
        return count_onnx(source)
    return _checkpoint_flops(path)


def _checkpoint_flops(path: Path) -> FlopCount:
    from dawnpipe.export.graph import build_deploy_model
    from dawnpipe.export.onnx_export import onnx_graph
    from dawnpipe.train.checkpoint import load_checkpoint

    # the graph export writes, made by the same exporter and counted in memory
    return count_onnx(onnx_graph(build_deploy_model(load_checkpoint(path))))

"""TensorRT's ONNX rules, checked statically: what the TensorRT 10 parser accepts, without TensorRT or a GPU.

TensorRT cannot be installed on this project's machines, so nothing would notice an exported graph that the first
GPU with TensorRT refuses (the uint8 int8 export was one). Every export is held to the rules below, and
``dawnpipe check-trt FILE.onnx`` holds any ONNX file to them. Where ``tensorrt`` imports, the real ONNX parser
runs as well (``parse_with_tensorrt``).

Source of the rules: onnx/onnx-tensorrt ``docs/operators.md`` on branch ``10.1-GA`` (commit 96e7811, 2024-06-17),
the operator support matrix of the TensorRT 10 ONNX parser: opsets 9 to 20 inclusive; the operators marked Y;
MaxPool without its ``Indices`` output and with unit dilations; QuantizeLinear "y_zero_point must be 0" and
DequantizeLinear "x_zero_point must be zero" over INT8/FP8/INT4 only; UINT8 "only supported as network input or
output tensor types"; ``axes`` of ReduceMax/ReduceSum/Slice/Squeeze as initializers. TensorRT's
developer guide (explicit quantization) adds that Q/DQ scales are per-tensor for activations, per-channel only
for weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError

RULES_SOURCE = "onnx/onnx-tensorrt docs/operators.md, branch 10.1-GA (commit 96e7811): TensorRT 10"
OPSETS = (9, 20)  # inclusive range of default-domain opsets the TensorRT 10 parser reads
SUPPORTED_OPS = frozenset(
    """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
    Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements
    GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
    GroupNormalization HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN
    LSTM LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool
    Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad
    ParametricSoftplus Pow QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
    Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round ScaledTanh Scan Scatter ScatterElements
    ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
    Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor""".split()
)
INTEGER_QUANT_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"})
_AXES_INPUT = {"ReduceMax": 1, "ReduceSum": 1, "ReduceMean": 1, "ReduceMin": 1, "Squeeze": 1, "Unsqueeze": 1,
               "Slice": 3}  # fmt: skip
_CAST_TARGETS = ("FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "UINT8", "BOOL")


@dataclass(frozen=True)
class Violation:
    """One broken rule: the node (or graph input) that breaks it, its op, and the rule."""

    node: str
    op: str
    rule: str

    def line(self) -> str:
        """The node, the op and the rule, as an error line names them."""
        return f"node {self.node!r} ({self.op}): {self.rule}"


def tensorrt_violations(model: Any) -> list[Violation]:
    """Every rule ``model`` (an onnx.ModelProto) breaks, in graph order; empty when TensorRT 10 can parse it."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    found: list[Violation] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSETS[0] <= opset <= OPSETS[1]:
        found.append(Violation("(model)", "opset", f"opset {opset} is outside TensorRT 10's {OPSETS[0]}-{OPSETS[1]}"))
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attr.t)
    types = _tensor_types(model)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    for graph_input in graph.input:
        if graph_input.name in constants:
            continue
        if graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8:
            bad = [n for n in consumers.get(graph_input.name, []) if n.op_type != "Cast"]
            for node in bad:
                found.append(
                    Violation(
                        node.name or node.output[0],
                        node.op_type,
                        f"the uint8 network input {graph_input.name!r} may feed only a Cast (TensorRT reads "
                        "UINT8 only at the network's inputs and outputs)",
                    )  # fmt: skip
                )
    for node in graph.node:
        name, op = node.name or (node.output[0] if node.output else "?"), node.op_type
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.domain not in ("", "ai.onnx"):
            found.append(Violation(name, op, f"op of domain {node.domain!r}: TensorRT 10 reads the ONNX domain only"))
            continue
        if op in INTEGER_QUANT_OPS:
            found.append(Violation(name, op, "integer-arithmetic quantized op: TensorRT takes int8 only as Q/DQ pairs"))
            continue
        if op not in SUPPORTED_OPS:
            found.append(Violation(name, op, "not in TensorRT 10's ONNX operator support list"))
            continue
        if op == "MaxPool":
            if len([o for o in node.output if o]) > 1:
                found.append(Violation(name, op, "MaxPool with an Indices output (unsupported)"))
            if any(d != 1 for d in attrs.get("dilations", [])):
                found.append(Violation(name, op, "MaxPool dilations must be empty or all ones"))
        elif op in ("QuantizeLinear", "DequantizeLinear"):
            found += _qdq_violations(node, name, constants, types)
        elif op == "Cast":
            target = onnx.TensorProto.DataType.Name(attrs.get("to", 0))
            if target not in _CAST_TARGETS:
                found.append(Violation(name, op, f"Cast to {target}, not a TensorRT type ({', '.join(_CAST_TARGETS)})"))
        if op in _AXES_INPUT and len(node.input) > _AXES_INPUT[op] and node.input[_AXES_INPUT[op]]:
            if node.input[_AXES_INPUT[op]] not in constants:
                found.append(Violation(name, op, f"{op}'s axes input must be an initializer or Constant"))
    return found


def _qdq_violations(node: Any, name: str, constants: dict[str, Any], types: dict[str, int]) -> list[Violation]:
    """TensorRT's explicit-quantization rules for one QuantizeLinear/DequantizeLinear node."""
    import numpy as np
    import onnx

    op, out = node.op_type, []
    zero = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if zero is None:
        if op == "QuantizeLinear":  # ONNX's default output type without a zero point is uint8
            out.append(
                Violation(name, op, "no y_zero_point: the output defaults to uint8; TensorRT needs int8, zero 0")
            )
    elif zero not in constants:
        out.append(Violation(name, op, "its zero point is computed at run time; TensorRT needs an int8 constant 0"))
    else:
        z = constants[zero]
        if z.dtype != np.int8:
            out.append(Violation(name, op, f"zero point of type {z.dtype}: TensorRT quantizes to signed int8 only"))
        elif np.any(z != 0):
            out.append(Violation(name, op, "zero point is not 0: TensorRT's Q/DQ are symmetric (zero point 0)"))
    if op == "DequantizeLinear":
        source = node.input[0]
        kind = constants[source].dtype if source in constants else None
        if kind is None and types.get(source) is not None:
            kind = onnx.helper.tensor_dtype_to_np_dtype(types[source])
        if kind is not None and kind != np.int8:
            out.append(Violation(name, op, f"dequantizes {np.dtype(kind)}: TensorRT's DequantizeLinear takes int8"))
    scale = constants.get(node.input[1]) if len(node.input) > 1 else None
    if scale is not None and scale.size > 1 and node.input[0] not in constants:
        out.append(Violation(name, op, "per-channel scales on an activation: TensorRT takes them on weights only"))
    return out


def _tensor_types(model: Any) -> dict[str, int]:
    """Element type of every tensor shape inference can name (graph inputs, outputs, intermediates)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph too broken to infer: the op checks above still run
        inferred = model
    graph = inferred.graph
    return {
        v.name: v.type.tensor_type.elem_type
        for v in [*graph.input, *graph.value_info, *graph.output]
        if v.type.HasField("tensor_type")
    }


def check_tensorrt(path: str | Path, *, parse: bool = True) -> dict[str, Any]:
    """The static check of one ONNX file (plus TensorRT's own parser where it imports): a summary dict."""
    model = load_onnx(path)
    violations = tensorrt_violations(model)
    return {
        "rules": RULES_SOURCE,
        "passed": not violations,
        "violations": [v.line() for v in violations],
        "nodes": len(model.graph.node),
        "parser": parse_with_tensorrt(path) if parse else "not run",
    }


def require_tensorrt(path: str | Path, *, parse: bool = True) -> dict[str, Any]:
    """check_tensorrt, raising the one-line error that names the first broken rule's node, op and rule."""
    result = check_tensorrt(path, parse=parse)
    if result["violations"]:
        more = len(result["violations"]) - 1
        raise DawnpipeError(
            f"{Path(path).name} breaks TensorRT 10's ONNX rules: {result['violations'][0]}"
            + (f" (and {more} more)" if more else ""),
            "export it with dawnpipe (precision fp32, fp16 or int8; int8-asym is for onnxruntime only)",
        )
    if str(result["parser"]).startswith("failed"):
        raise DawnpipeError(f"TensorRT's own parser refused {Path(path).name}: {result['parser']}", "report this")
    return result


def check_files(paths, say=print) -> list[tuple[Path, dict[str, Any]]]:
    """``require_tensorrt`` over several files: each broken file's one line goes to ``say`` and the others are
    still checked; the results of those that pass, or one error counting the broken ones. A single file's error
    is raised as it is."""
    paths = [Path(p) for p in paths]
    passed, failed = [], 0
    for path in paths:
        try:
            passed.append((path, require_tensorrt(path)))
        except DawnpipeError as err:
            if len(paths) == 1:
                raise
            failed += 1
            say(f"error: {err}")
    if failed:
        raise DawnpipeError(f"{failed} of {len(paths)} file(s) break TensorRT's rules", "see the lines above")
    return passed


def load_onnx(path: str | Path) -> Any:
    """onnx.load with one-line errors for a missing, empty, truncated or non-ONNX file."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise DawnpipeError(f"{path} does not exist", "pass the path of an .onnx file")
    if not path.is_file():
        raise DawnpipeError(f"{path} is not a file", "pass the path of an .onnx file")
    if path.stat().st_size == 0:
        raise DawnpipeError(f"{path} is empty (0 bytes)", "re-export it; the file was never written out")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and others for truncated or foreign files
        raise DawnpipeError(
            f"{path} is not a readable ONNX model ({type(err).__name__})", "pass an .onnx file"
        ) from None
    if not model.graph.node:
        raise DawnpipeError(f"{path} holds no ONNX graph", "pass an exported .onnx model")
    return model


def parse_with_tensorrt(path: str | Path) -> str:
    """TensorRT's ONNX parser on the file where ``tensorrt`` imports: "passed", "failed: ...", or why not run."""
    try:
        import tensorrt as trt
    except ImportError:
        return "not run: TensorRT is not installed"
    try:
        logger = trt.Logger(trt.Logger.ERROR)
        builder = trt.Builder(logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
    except Exception as err:  # no GPU or no driver: the parser cannot be created
        return f"not run: TensorRT {trt.__version__} could not start ({type(err).__name__})"
    if parser.parse_from_file(str(path)):
        return f"passed (TensorRT {trt.__version__})"
    errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
    return f"failed: {errors[:300]}"

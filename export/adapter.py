"""A foreign ONNX image classifier given dawnpipe's contract by a small adapter graph in front of it (and behind it).

    contract = ForeignContract(layout="NCHW", input_range="0-1", mean=(0.4914, 0.4822, 0.4465), std=(...))
    foreign = inspect_foreign(model, contract, classes=10)     # one-line refusals, before anything is written
    adapted = adapt(model, foreign, contract, order)            # uint8 NHWC ``images`` -> float32 ``logits``

The adapter does what the foreign model's own preprocessing did, in the same float32 operations a reference run
uses (``reference_inputs``), so the adapted graph's logits equal the foreign graph's: Cast to float, divide by 255
for a 0-1 model, subtract the mean and divide by the std per channel, transpose to NCHW if the model wants it, cast
to float16 for a float16 model; behind the model, logits cast to float32 and, where the model's class order is not
the data's, gathered into the data's order. Every foreign name is prefixed (``entrant/``) so no adapter name can
collide with one of the model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError

LAYOUTS = ("NCHW", "NHWC")
INPUT_RANGES = ("0-1", "0-255")
PREFIX = "entrant/"  # every name of the foreign graph, so the adapter's names never collide with its own
_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT, FLOAT16


@dataclass(frozen=True)
class ForeignContract:
    """What the foreign model takes: layout, pixel range, and per-channel mean and std in that range's units
    (as torchvision's ``Normalize`` after ``ToTensor`` gives them for a 0-1 model)."""

    layout: str = "NCHW"
    input_range: str = "0-1"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def check(self) -> ForeignContract:
        """Return the contract or raise the one-line error naming the bad option."""
        if self.layout not in LAYOUTS:
            raise DawnpipeError(f"--layout {self.layout!r} is not a layout", f"use --layout {' or '.join(LAYOUTS)}")
        if self.input_range not in INPUT_RANGES:
            raise DawnpipeError(
                f"--input-range {self.input_range!r} is not a pixel range",
                f"use --input-range {' or '.join(INPUT_RANGES)}",
            )
        top = 1.0 if self.input_range == "0-1" else 255.0
        for name, values, low in (("mean", self.mean, -top), ("std", self.std, 0.0)):
            if len(values) != 3 or not all(np.isfinite(v) for v in values):
                raise DawnpipeError(f"--{name} needs 3 numbers (R,G,B), got {values!r}", f"pass --{name} R,G,B")
            if name == "std" and min(values) <= 0:
                raise DawnpipeError(f"--std {values!r} holds a value that is not positive", "pass 3 positive numbers")
            if not all(low <= v <= top for v in values):
                raise DawnpipeError(
                    f"--{name} {values!r} lies outside the {self.input_range} pixel range",
                    f"give --{name} in the units of --input-range {self.input_range}, or change --input-range",
                )
        return self

    @property
    def scale(self) -> float:
        """What a uint8 pixel is divided by before the mean is subtracted."""
        return 255.0 if self.input_range == "0-1" else 1.0

    def pixel_normalization(self) -> dict[str, list[float]]:
        """Mean and std in uint8 pixel units, as dawnpipe's own artifacts record them."""
        return {"mean": [m * self.scale for m in self.mean], "std": [s * self.scale for s in self.std]}


@dataclass(frozen=True)
class ForeignGraph:
    """The checked facts of a foreign graph: its one input and output, their element types, and its class count."""

    input_name: str
    output_name: str
    input_type: int  # onnx.TensorProto element type: FLOAT or FLOAT16
    output_type: int
    classes: int | None  # None where the graph leaves the class dimension symbolic (checked by running it)
    opset: int

    @property
    def float16_input(self) -> bool:
        """The model takes float16 images (the adapter casts to it; the reference feeds it)."""
        return self.input_type == _FLOAT16


def inspect_foreign(model: Any, contract: ForeignContract, classes: int, size: tuple[int, int] = (32, 32)):
    """The foreign graph's input and output checked against the data (``classes`` labels of ``size`` images):
    one-line refusals for external data, several inputs, non-image shapes, another spatial size, a fixed batch,
    outputs that are not [N, classes], and a class count that differs from the data's."""
    import onnx

    _refuse_external_data(model)
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise DawnpipeError(
            f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs) or 'none'}); dawnpipe judges "
            "image classifiers that take one batch of images",
            "export the model with a single image input (other inputs folded in as constants)",
        )
    if len(graph.output) != 1:
        raise DawnpipeError(
            f"the model has {len(graph.output)} outputs ({', '.join(o.name for o in graph.output)}); dawnpipe needs "
            "one [N, classes] logits output",
            "export the model with only its logits as output",
        )
    image, out = inputs[0], graph.output[0]
    in_type, out_type = image.type.tensor_type.elem_type, out.type.tensor_type.elem_type
    if in_type not in (_FLOAT, _FLOAT16):
        name = onnx.TensorProto.DataType.Name(in_type) if in_type else "not a tensor"
        raise DawnpipeError(
            f"the model's input {image.name!r} is {name}; dawnpipe adapts float32 or float16 image inputs",
            "export the model with a float input (its own preprocessing after the cast)",
        )
    dims = _dims(image)
    want = "[N, 3, H, W]" if contract.layout == "NCHW" else "[N, H, W, 3]"
    if dims is None or len(dims) != 4:
        raise DawnpipeError(
            f"the model's input {image.name!r} has shape {_show(dims)}, not an image batch {want}",
            "import an image classifier whose input is a 4-d batch of RGB images",
        )
    channel, spatial = (dims[1], dims[2:]) if contract.layout == "NCHW" else (dims[3], dims[1:3])
    if isinstance(channel, int) and channel != 3:
        other = "NHWC" if contract.layout == "NCHW" else "NCHW"
        raise DawnpipeError(
            f"the model's input {image.name!r} has shape {_show(dims)}: {channel} channels where {contract.layout} "
            f"puts them, not 3",
            f"pass --layout {other} if that is the model's layout; dawnpipe's data is RGB",
        )
    fixed = [d for d in spatial if isinstance(d, int)]
    if fixed and tuple(spatial) != tuple(size):
        raise DawnpipeError(
            f"the model's input {image.name!r} takes {spatial[0]}x{spatial[1]} images; the data's are "
            f"{size[0]}x{size[1]}",
            "import a model made for this data's image size",
        )
    if isinstance(dims[0], int):
        raise DawnpipeError(
            f"the model's input {image.name!r} has a fixed batch of {dims[0]}; evaluation sends batches of any size",
            "export it with a dynamic batch dimension (torch.onnx.export's dynamic_axes or dynamic_shapes)",
        )
    out_dims = _dims(out)
    if out_dims is not None and len(out_dims) != 2:
        raise DawnpipeError(
            f"the model's output {out.name!r} has shape {_show(out_dims)}, not [N, classes] logits",
            "export the model with its [N, classes] logits as the only output",
        )
    count = out_dims[1] if out_dims and isinstance(out_dims[1], int) else None
    if count is not None and count != classes:
        raise DawnpipeError(
            f"the model scores {count} classes; the data has {classes}",
            "import a model trained on this data's classes, or pass the data it was trained on",
        )
    if out_type not in (_FLOAT, _FLOAT16):
        raise DawnpipeError(
            f"the model's output {out.name!r} is not float logits ({onnx.TensorProto.DataType.Name(out_type)})",
            "export the model with float logits as its output",
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ForeignGraph(image.name, out.name, in_type, out_type, count, opset)


def adapt(model: Any, foreign: ForeignGraph, contract: ForeignContract, order: list[int] | None = None) -> Any:
    """The adapted model (a new ModelProto): uint8 NHWC ``images`` [batch, 32, 32, 3] -> float32 ``logits``.
    ``order``: for each of the data's classes, the index of the model's logit that scores it (None: same order)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    prefixed = onnx.compose.add_prefix(model, PREFIX)
    graph = prefixed.graph
    image_in, logits_out = PREFIX + foreign.input_name, PREFIX + foreign.output_name
    keep = [i for i in graph.input if i.name != image_in]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 32, 32, 3]), *keep])

    def const(name: str, values: Any, dtype: Any = np.float32) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), "adapter/" + name))
        return "adapter/" + name

    front, x = [], "images"

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> None:
        nonlocal x
        front.append(helper.make_node(op, inputs, ["adapter/" + name], name="adapter/" + name, **attrs))
        x = "adapter/" + name

    node("Cast", [x], "float", to=TensorProto.FLOAT)
    if contract.scale != 1.0:
        node("Div", [x, const("scale", contract.scale)], "scaled")
    node("Sub", [x, const("mean", np.reshape(contract.mean, (1, 1, 1, 3)))], "centred")
    node("Div", [x, const("std", np.reshape(contract.std, (1, 1, 1, 3)))], "normalized")
    if contract.layout == "NCHW":
        node("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    if foreign.float16_input:
        node("Cast", [x], "float16", to=TensorProto.FLOAT16)
    front.append(helper.make_node("Identity", [x], [image_in], name="adapter/into_model"))

    back, y = [], logits_out
    if foreign.output_type == _FLOAT16:
        back.append(
            helper.make_node("Cast", [y], ["adapter/logits_float"], name="adapter/logits_float", to=TensorProto.FLOAT)
        )
        y = "adapter/logits_float"
    if order is not None and list(order) != list(range(len(order))):
        idx = const("class_order", order, np.int64)
        back.append(helper.make_node("Gather", [y, idx], ["adapter/reordered"], name="adapter/reordered", axis=1))
        y = "adapter/reordered"
    back.append(helper.make_node("Identity", [y], ["logits"], name="adapter/logits"))
    nodes = [*front, *graph.node, *back]
    del graph.node[:]
    graph.node.extend(nodes)
    classes = len(order) if order is not None else foreign.classes
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]))
    return prefixed


def reference_inputs(images: np.ndarray, contract: ForeignContract, float16: bool = False) -> np.ndarray:
    """What the foreign model's own preprocessing makes of uint8 NHWC images: the adapter's float32 operations in
    its order, so the foreign graph fed these and the adapted graph fed the pixels run the same numbers."""
    x = images.astype(np.float32)
    if contract.scale != 1.0:
        x = x / np.float32(contract.scale)
    x = (x - np.asarray(contract.mean, np.float32)) / np.asarray(contract.std, np.float32)
    if contract.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x.astype(np.float16) if float16 else x)


def _refuse_external_data(model: Any) -> None:
    from onnx import TensorProto

    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            raise DawnpipeError(
                f"the model keeps its weights in external data files (initializer {tensor.name!r}); dawnpipe imports "
                "one self-contained file",
                "save it as one file: onnx.save_model(onnx.load(path), out, save_as_external_data=False)",
            )


def _dims(value: Any) -> list[int | str] | None:
    """A value's shape (int for fixed dimensions, the symbol or '?' otherwise), or None without a shape."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]


def _show(dims: list | None) -> str:
    return "unknown" if dims is None else "[" + ", ".join(str(d) for d in dims) + "]"

"""1-D convolutions and pools as 2-D ones of height 1: TFLite has only 2-D kernels.

[N, C, L] is stored [N, L, C], which a RESHAPE turns into the NHWC map [N, 1, L, C] of the ONNX
tensor [N, C, 1, L]; the 2-D rule runs on a copy of the node with 2-D attributes and weights, and its
[N, 1, L', C'] result is stored back as [N, L', C'] by another RESHAPE (the ONNX layout (0, 2, 1)).
"""
from __future__ import annotations

from onnx import helper

from ..context import Value
from ..padding import NHWC

# Attributes with one entry per spatial axis, and what the added height axis gets.
PER_AXIS = {"kernel_shape": 1, "strides": 1, "dilations": 1, "output_padding": 0}


def attrs_2d(attrs: dict) -> dict:
    out = dict(attrs)
    for name, unit in PER_AXIS.items():
        if name in attrs:
            out[name] = [unit] + list(attrs[name])
    if "pads" in attrs:
        out["pads"] = [0, attrs["pads"][0], 0, attrs["pads"][1]]
    if "output_shape" in attrs:
        out["output_shape"] = [1] + list(attrs["output_shape"])
    return out


def convert_as_2d(ctx, node, attrs, convert) -> None:
    x_name, y_name = node.input[0], node.output[0]
    n, c, length = ctx.shape(x_name)
    x_2d = f"{x_name}/as_2d"
    x_ir = ctx.reshape_storage(ctx.stored(x_name, (0, 2, 1)), (n, 1, length, c), x_2d)
    ctx.alias(x_2d, Value(x_ir, NHWC, (n, c, 1, length), ctx.dtype(x_name)))
    inputs = [x_2d] + list(node.input[1:])
    if len(inputs) > 1 and inputs[1] and ctx.is_const(inputs[1]):
        weights = ctx.const(inputs[1])
        inputs[1] = f"{inputs[1]}/as_2d"
        ctx.constants[inputs[1]] = weights.reshape(weights.shape[:2] + (1,) + weights.shape[2:])
    y_n, y_c, y_length = ctx.shape(y_name)
    y_2d = f"{y_name}/as_2d"
    ctx.shapes[y_2d] = (y_n, y_c, 1, y_length)
    attrs = attrs_2d(attrs)
    convert(ctx, helper.make_node(node.op_type, inputs, [y_2d], name=node.name or y_name, **attrs), attrs)
    result = ctx.value(y_2d)
    src = ctx.stored_value(result, NHWC, key=y_2d)
    out = ctx.define(y_name, (0, 2, 1))
    shape = list(ctx.graph[out].shape)
    ctx.emit("RESHAPE", [src, ctx.int32_tensor(f"{out}/shape", shape)], [out], {"new_shape": shape}, node)


def is_1d(ctx, node) -> bool:
    return len(ctx.shape(node.input[0])) == 3


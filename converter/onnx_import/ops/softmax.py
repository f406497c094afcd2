"""Softmax / LogSoftmax -> SOFTMAX / LOG_SOFTMAX, which work on the last storage axis.

When the ONNX axis is already stored last (channels of an NHWC map) no data moves; otherwise the
input is laid out with that axis last, which costs one TRANSPOSE unless only unit axes move.
Before opset 13 softmax normalizes over all axes from ``axis`` on, flattened.
"""
from __future__ import annotations

import numpy as np

from .. import layout
from ..context import Value
from . import rule

TFLITE = {"Softmax": "SOFTMAX", "LogSoftmax": "LOG_SOFTMAX"}


def axis_last(perm: tuple, axis: int) -> tuple:
    return tuple(a for a in perm if a != axis) + (axis,)


@rule("Softmax", "LogSoftmax")
def convert_softmax(ctx, node, attrs):
    value = ctx.value(node.input[0])
    rank = value.rank
    default_axis = -1 if ctx.opset >= 13 else 1
    axis = layout.normalize_axis(int(attrs.get("axis", default_axis)), rank)
    options = {"beta": 1.0} if node.op_type == "Softmax" else {}
    trailing = [d for d in value.shape[axis + 1:] if d != 1]
    if ctx.opset < 13 and trailing and value.shape[axis] != 1:
        emit_flattened_softmax(ctx, node, value, axis, options)
        return
    if ctx.opset < 13 and trailing:
        axis = axis + 1 + next(i for i, d in enumerate(value.shape[axis + 1:]) if d != 1)
    perm = value.perm if value.perm[-1] == axis else axis_last(value.perm, axis)
    x_ir = ctx.stored_value(value, perm, key=node.input[0])
    out = ctx.define(node.output[0], perm)
    ctx.emit(TFLITE[node.op_type], [x_ir], [out], options, node)


def emit_flattened_softmax(ctx, node, value: Value, axis: int, options: dict):
    """Old-opset semantics: softmax over the flattened axes axis.. in ONNX order."""
    x_ir = ctx.stored_value(value, layout.identity(value.rank), key=node.input[0])
    flat_shape = (int(np.prod(value.shape[:axis])), int(np.prod(value.shape[axis:])))
    flat = ctx.reshape_storage(x_ir, flat_shape, f"{node.output[0]}/flat")
    soft = ctx.temp(f"{node.output[0]}/flat_softmax", flat_shape)
    ctx.emit(TFLITE[node.op_type], [flat], [soft], options, node)
    out = ctx.define(node.output[0], layout.identity(value.rank))
    shape = list(ctx.graph[out].shape)
    ctx.emit("RESHAPE", [soft, ctx.int32_tensor(f"{out}/shape", shape)], [out], {"new_shape": shape}, node)

"""ArgMax / ArgMin -> ARG_MAX / ARG_MIN over the storage axis the ONNX axis lives in (a segmentation
head's ArgMax over channels is the last axis of an NHWC map: no TRANSPOSE); keepdims=1 adds the unit
axis back with a RESHAPE. TFLite writes the int64 indices directly (output_type INT64)."""
from __future__ import annotations

import numpy as np

from edgeq.runtime.ir import ModelError

from .. import layout
from . import node_label, rule
from .elementwise import operand_as
from .reduce import reduced_perm

# Input types TFLite's ARG_MAX/ARG_MIN read; narrower integers are compared in int32, exactly.
ARG_INPUT_TYPES = {"float32", "int32", "int8", "uint8", "bool"}
ARG_WIDER_TYPE = {"int16": "int32", "uint16": "int32", "float16": "float32"}


def arg_input_dtype(node, dtype) -> np.dtype:
    name = np.dtype(dtype).name
    if name in ARG_INPUT_TYPES:
        return np.dtype(name)
    if name in ARG_WIDER_TYPE:
        return np.dtype(ARG_WIDER_TYPE[name])
    raise ModelError(f"{node_label(node)}: {name} input: TFLite's ARG_MAX/ARG_MIN read float32, int32, int8, uint8, bool")


@rule("ArgMax", "ArgMin")
def convert_arg_min_max(ctx, node, attrs):
    if attrs.get("select_last_index", 0):
        raise ModelError(f"{node_label(node)}: select_last_index=1 is not supported (TFLite returns the first "
                         f"of equal values)")
    value = ctx.value(node.input[0])
    axis = layout.normalize_axis(int(attrs.get("axis", 0)), value.rank)
    keep = bool(attrs.get("keepdims", 1))
    storage_axis = layout.storage_axis(value.perm, axis)
    reduced = reduced_perm(value.perm, [axis])
    reduced_shape = tuple(d for i, d in enumerate(value.shape) if i != axis)
    if keep:
        out = ctx.define(node.output[0], value.perm)
        result = ctx.temp(f"{out}/reduced", layout.storage_shape(reduced_shape, reduced), np.int64)
    else:
        out = result = ctx.define(node.output[0], reduced, reduced_shape)
    x_ir = operand_as(ctx, value.ir, arg_input_dtype(node, value.dtype), f"{out}/input", node)
    tfl_type = "ARG_MAX" if node.op_type == "ArgMax" else "ARG_MIN"
    ctx.emit(tfl_type, [x_ir, ctx.int32_tensor(f"{out}/axis", [storage_axis])], [result], {"output_type": "INT64"}, node)
    if keep:
        shape = list(ctx.graph[out].shape)
        ctx.emit("RESHAPE", [result, ctx.int32_tensor(f"{out}/shape", shape)], [out], {"new_shape": shape}, node)

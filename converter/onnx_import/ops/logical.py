"""Comparisons and boolean logic on activations: Equal, Greater, Less, GreaterOrEqual, LessOrEqual ->
EQUAL, GREATER, LESS, GREATER_EQUAL, LESS_EQUAL; And, Or, Xor -> LOGICAL_AND, LOGICAL_OR, NOT_EQUAL; IsNaN -> NOT_EQUAL(x, x).

All broadcast as ONNX does and give bool; the result takes the layout of the highest-rank activation.
TFLite's comparison kernels read int8/uint8 as quantized values (they rescale through the zero point
and scale), so narrow integers are compared in int32, where every value is exact; float16 is compared
in float32, which holds every float16 exactly.
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime.ir import ModelError

from .. import layout
from . import node_label, rule
from .elementwise import WIDER_TYPE, broadcast_shape, operand_as, reference_perm

COMPARISONS = {"Equal": "EQUAL", "Greater": "GREATER", "Less": "LESS", "GreaterOrEqual": "GREATER_EQUAL",
               "LessOrEqual": "LESS_EQUAL"}
LOGICAL = {"And": "LOGICAL_AND", "Or": "LOGICAL_OR", "Xor": "NOT_EQUAL"}
# The types TFLite's comparison kernels compare plainly (bool only for (in)equality).
COMPARED_TYPES = {"float32", "int32", "int64"}
WIDER_FOR_COMPARISON = {**WIDER_TYPE, "uint32": "int64"}


def comparison_dtype(node, dtype) -> np.dtype:
    name = np.dtype(dtype).name
    if name in COMPARED_TYPES or (name == "bool" and node.op_type == "Equal"):
        return np.dtype(name)
    if name in WIDER_FOR_COMPARISON:
        return np.dtype(WIDER_FOR_COMPARISON[name])
    raise ModelError(f"{node_label(node)}: comparing {name} values is not supported "
                     f"(TFLite compares float32, int32 and int64; narrower types are widened)")


def emit_broadcasting(ctx, node, tfl_type: str, dtype) -> None:
    names = list(node.input)
    perm = reference_perm(ctx, names)
    shape = broadcast_shape(ctx, names)
    if len(shape) != len(perm):
        perm = layout.identity(len(shape))
    out = ctx.define(node.output[0], perm, shape, np.bool_)
    operands = [operand_as(ctx, ctx.broadcast_operand(n, perm), dtype, f"{out}/operand{i}", node)
                for i, n in enumerate(names)]
    ctx.emit(tfl_type, operands, [out], {}, node)


@rule(*COMPARISONS)
def convert_comparison(ctx, node, attrs):
    emit_broadcasting(ctx, node, COMPARISONS[node.op_type], comparison_dtype(node, ctx.dtype(node.input[0])))


@rule(*LOGICAL)
def convert_logical(ctx, node, attrs):
    """Xor of two bools is their inequality."""
    emit_broadcasting(ctx, node, LOGICAL[node.op_type], np.dtype(np.bool_))


@rule("IsNaN")
def convert_isnan(ctx, node, attrs):
    """NaN is the one value unequal to itself, so IsNaN(x) is NOT_EQUAL(x, x). torch's exporter guards
    scaled_dot_product_attention's softmax with Where(IsNaN(p), 0, p) for fully masked rows."""
    name = node.input[0]
    dtype = np.dtype(ctx.dtype(name))
    if dtype.kind != "f":
        raise ModelError(f"{node_label(node)}: IsNaN of {dtype.name} values is not supported (float only)")
    value = ctx.value(name)
    out = ctx.define(node.output[0], value.perm, value.shape, np.bool_)
    operand = operand_as(ctx, value.ir, comparison_dtype(node, dtype), f"{out}/operand", node)
    ctx.emit("NOT_EQUAL", [operand, operand], [out], {}, node)

"""Broadcasting binary and n-ary arithmetic: Add, Sub, Mul, Div, Sum, Max, Min, Pow.

The result takes the layout of the highest-rank activation operand; constants are laid out to match
it, so a per-channel constant on an NHWC feature map becomes a [1, 1, 1, C] tensor.
"""
from __future__ import annotations

import numpy as np

from runtime.model import ModelError

from .. import layout
from . import node_label, rule

BINARY = {"Add": "ADD", "Sub": "SUB", "Mul": "MUL", "Div": "DIV", "Max": "MAXIMUM", "Min": "MINIMUM", "Sum": "ADD"}
FUSABLE = {"ADD", "SUB", "MUL", "DIV"}


def reference_perm(ctx, names: list) -> tuple:
    """Layout of the result: that of the first activation of the highest rank."""
    rank = max(len(ctx.shape(n)) for n in names)
    for n in names:
        if not ctx.is_const(n) and ctx.value(n).rank == rank:
            return ctx.value(n).perm
    for n in names:
        if not ctx.is_const(n):
            return layout.identity(rank)
    raise ModelError("internal: an all-constant op reached the importer")


def broadcast_shape(ctx, names: list) -> tuple:
    return tuple(np.broadcast_shapes(*[tuple(ctx.shape(n)) for n in names]))


def emit_binary(ctx, tfl_type: str, a_ir: str, b_ir: str, out: str, node) -> None:
    options = {"fused_activation_function": "NONE"} if tfl_type in FUSABLE else {}
    if tfl_type in ("ADD", "SUB"):
        options["pot_scale_int16"] = False
    ctx.emit(tfl_type, [a_ir, b_ir], [out], options, node)


def constant_operand(ctx, node, name: str, transform) -> str:
    """Register a transformed copy of constant ``name`` (e.g. 1/x for Div) under a fresh ONNX-level name."""
    new_name = f"{name}/{node.output[0]}/{transform.__name__}"
    ctx.constants[new_name] = transform(ctx.const(name))
    return new_name


def reciprocal(x):
    return (1.0 / x).astype(x.dtype)


@rule("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum")
def convert_arithmetic(ctx, node, attrs):
    names = [n for n in node.input if n]
    tfl_type = BINARY[node.op_type]
    if node.op_type == "Div" and ctx.is_const(names[1]) and np.issubdtype(ctx.const(names[1]).dtype, np.floating):
        # Multiplying by a constant reciprocal is what TFLite kernels and int8 quantization handle best.
        names = [names[0], constant_operand(ctx, node, names[1], reciprocal)]
        tfl_type = "MUL"
    if len(names) == 1:
        ctx.alias(node.output[0], ctx.value(names[0]))
        return
    perm = reference_perm(ctx, names)
    shape = broadcast_shape(ctx, names)
    if len(shape) != len(perm):
        perm = layout.identity(len(shape))
    operands = [ctx.broadcast_operand(n, perm) for n in names]
    out = ctx.define(node.output[0], perm, shape)
    acc = operands[0]
    for i, operand in enumerate(operands[1:]):
        last = i == len(operands) - 2
        target = out if last else ctx.temp(f"{out}/partial{i}", ctx.graph[out].shape, ctx.graph[out].dtype)
        emit_binary(ctx, tfl_type, acc, operand, target, node)
        acc = target


@rule("Pow")
def convert_pow(ctx, node, attrs):
    x_name, e_name = node.input
    if ctx.is_const(e_name) and ctx.const(e_name).size == 1:
        exponent = float(ctx.const(e_name).reshape(()))
        value = ctx.value(x_name)
        if exponent == 1.0:
            ctx.alias(node.output[0], value)
            return
        if exponent in (2.0, 0.5):
            out = ctx.define(node.output[0], value.perm)
            if exponent == 2.0:
                ctx.emit("MUL", [value.ir, value.ir], [out], {"fused_activation_function": "NONE"}, node)
            else:
                ctx.emit("SQRT", [value.ir], [out], {}, node)
            return
    if ctx.is_const(x_name) and ctx.is_const(e_name):
        raise ModelError(f"{node_label(node)}: internal: constant Pow was not folded")
    perm = reference_perm(ctx, [x_name, e_name])
    shape = broadcast_shape(ctx, [x_name, e_name])
    operands = [ctx.broadcast_operand(n, perm) for n in (x_name, e_name)]
    out = ctx.define(node.output[0], perm, shape)
    ctx.emit("POW", operands, [out], {}, node)

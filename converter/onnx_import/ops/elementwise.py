"""Broadcasting binary and n-ary arithmetic: Add, Sub, Mul, Div, Sum, Max, Min, Pow.

The result takes the layout of the highest-rank activation operand; constants are laid out to match
it, so a per-channel constant on an NHWC feature map becomes a [1, 1, 1, C] tensor.

TFLite's ADD/SUB/MUL/DIV treat int8/uint8/int16 tensors as quantized (they need quantization
parameters and saturate), while ONNX integer arithmetic wraps; and TFLite has no float16 arithmetic.
Such operands are computed in a wider type TFLite has a plain kernel for and CAST back: the wide
result is exact, and TFLite's CAST narrows integers modulo 2^bits (a C++ cast), as ONNX wraps; a
float32 result rounded to float16 equals float16 arithmetic rounded once (24 >= 2 * 11 + 2 bits).
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime.ir import ModelError

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


# The integer and float types each TFLite kernel computes on plainly (no quantization parameters).
PLAIN_KERNEL_TYPES = {
    "ADD": {"float32", "int32", "int64"},
    "SUB": {"float32", "int32", "int64"},
    "MUL": {"float32", "int32", "int64"},
    "DIV": {"float32", "int32"},
    "MAXIMUM": {"float32", "int8", "uint8", "int32", "int64"},
    "MINIMUM": {"float32", "int8", "uint8", "int32", "int64"},
    "POW": {"float32", "int32"},
}
# Where a type without a plain kernel is computed instead; every value of the type is exact there.
WIDER_TYPE = {"int8": "int32", "uint8": "int32", "int16": "int32", "uint16": "int32", "uint32": "int64",
              "float16": "float32"}


def compute_dtype(node, tfl_type: str, dtype) -> np.dtype:
    """The dtype ``tfl_type`` runs in for ONNX operands of ``dtype``, or a ModelError naming why none."""
    name = np.dtype(dtype).name
    plain = PLAIN_KERNEL_TYPES[tfl_type]
    if name in plain:
        return np.dtype(name)
    wider = WIDER_TYPE.get(name)
    if wider in plain:
        return np.dtype(wider)
    kernels = ", ".join(sorted(plain))
    raise ModelError(f"{node_label(node)}: {name} operands: TFLite's {tfl_type} computes only on {kernels}, "
                     f"and no wider type among them holds every {name} value")


def operand_as(ctx, ir: str, dtype, base: str, node) -> str:
    """IR tensor ``ir`` converted to ``dtype``: a converted copy of a constant, else a CAST."""
    tensor = ctx.graph[ir]
    if tensor.dtype == dtype:
        return ir
    if tensor.data is not None:
        return ctx.const_tensor(f"{base}/{dtype.name}", tensor.data.astype(dtype))
    out = ctx.temp(f"{base}/{dtype.name}", tensor.shape, dtype)
    emit_cast(ctx, ir, out, node)
    return out


def emit_cast(ctx, src: str, dst: str, node) -> None:
    options = {"in_data_type": tflite_type_name(ctx.graph[src].dtype), "out_data_type": tflite_type_name(ctx.graph[dst].dtype)}
    ctx.emit("CAST", [src], [dst], options, node)


def wide_output(ctx, out: str, dtype, node) -> str:
    """Where an op computing in ``dtype`` writes: ``out`` itself, or a temporary CAST into ``out``."""
    if ctx.graph[out].dtype == dtype:
        return out
    return ctx.temp(f"{out}/{dtype.name}", ctx.graph[out].shape, dtype)


def tflite_type_name(dtype) -> str:
    names = {"float32": "FLOAT32", "float16": "FLOAT16", "int32": "INT32", "int64": "INT64", "int8": "INT8",
             "uint8": "UINT8", "int16": "INT16", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
             "bool": "BOOL", "float64": "FLOAT64"}
    name = np.dtype(dtype).name
    if name not in names:
        raise ModelError(f"tensor type {name} has no TFLite equivalent")
    return names[name]


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
    out = ctx.define(node.output[0], perm, shape)
    dtype = compute_dtype(node, tfl_type, ctx.graph[out].dtype)
    operands = [operand_as(ctx, ctx.broadcast_operand(n, perm), dtype, f"{out}/operand{i}", node)
                for i, n in enumerate(names)]
    result = wide_output(ctx, out, dtype, node)
    acc = operands[0]
    for i, operand in enumerate(operands[1:]):
        last = i == len(operands) - 2
        target = result if last else ctx.temp(f"{out}/partial{i}", ctx.graph[result].shape, dtype)
        emit_binary(ctx, tfl_type, acc, operand, target, node)
        acc = target
    if result != out:
        emit_cast(ctx, result, out, node)


@rule("Pow")
def convert_pow(ctx, node, attrs):
    x_name, e_name = node.input
    if ctx.is_const(e_name) and ctx.const(e_name).size == 1:
        exponent = float(ctx.const(e_name).reshape(()))
        value = ctx.value(x_name)
        if exponent == 1.0:
            ctx.alias(node.output[0], value)
            return
        if exponent in (2.0, 0.5) and value.dtype == np.float32:
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
    out = ctx.define(node.output[0], perm, shape)
    # ONNX Pow's result has the base's type whatever the exponent's; TFLite's POW wants one type. An
    # integer base with a float exponent is computed in float32 and truncated, as ONNX's reference does.
    base_dtype, exponent_dtype = ctx.dtype(x_name), ctx.dtype(e_name)
    if base_dtype.kind in "iu" and exponent_dtype.kind == "f":
        dtype = np.dtype(np.float32)
        if base_dtype.name not in ("int8", "uint8", "int16", "uint16", "int32"):
            raise ModelError(f"{node_label(node)}: a base of type {base_dtype.name} with a float exponent is not exact in float32")
    else:
        dtype = compute_dtype(node, "POW", base_dtype)
    operands = [operand_as(ctx, ctx.broadcast_operand(n, perm), dtype, f"{out}/operand{i}", node)
                for i, n in enumerate((x_name, e_name))]
    result = wide_output(ctx, out, dtype, node)
    ctx.emit("POW", operands, [result], {}, node)
    if result != out:
        emit_cast(ctx, result, out, node)

"""Gemm and MatMul with a constant right operand -> FULLY_CONNECTED; MatMul of two activations -> BATCH_MATMUL."""
from __future__ import annotations

import numpy as np

from edgeq.runtime.ir import ModelError

from .. import layout
from ..context import Value
from . import node_label, rule
from .shape_ops import emit_reshape


def fc_input(ctx, name: str, weight: np.ndarray) -> tuple:
    """(IR input, weight [O, I] with columns in the input's storage order, output layout)."""
    value = ctx.value(name)
    if value.feature_order is not None:
        return value.ir, np.take(weight, value.feature_order, axis=1), layout.identity(2)
    rank = value.rank
    if value.perm[-1] == rank - 1:
        return value.ir, weight, value.perm
    return ctx.stored(name, layout.identity(rank)), weight, layout.identity(rank)


def emit_fully_connected(ctx, node, a_name: str, weight: np.ndarray, bias: np.ndarray, out_name=None) -> None:
    a_ir, weight, out_perm = fc_input(ctx, a_name, weight)
    base = out_name or node.output[0]
    w_ir = ctx.const_tensor(f"{base}/weights", np.ascontiguousarray(weight, dtype=np.float32))
    b_ir = ctx.const_tensor(f"{base}/bias", bias.astype(np.float32))
    out = ctx.define(base, out_perm)
    options = {
        "fused_activation_function": "NONE",
        "weights_format": "DEFAULT",
        "keep_num_dims": len(out_perm) != 2,
        "asymmetric_quantize_inputs": False,
    }
    ctx.emit("FULLY_CONNECTED", [a_ir, w_ir, b_ir], [out], options, node)


@rule("Gemm")
def convert_gemm(ctx, node, attrs):
    label = node_label(node)
    a_name, b_name = node.input[0], node.input[1]
    if ctx.is_const(a_name) or not ctx.is_const(b_name):
        raise ModelError(f"{label}: only Gemm with a constant B (weights) is supported")
    if attrs.get("transA", 0):
        # A transposed is only a layout; FULLY_CONNECTED then reads it through one TRANSPOSE.
        value = ctx.value(a_name)
        a_name = f"{a_name}/transposed"
        ctx.alias(a_name, Value(value.ir, layout.after_transpose(value.perm, (1, 0)), value.shape[::-1], value.dtype))
    b = ctx.const(b_name).astype(np.float32, copy=False)
    weight = b if attrs.get("transB", 0) else b.T
    alpha = float(attrs.get("alpha", 1.0))
    if alpha != 1.0:
        weight = weight * np.float32(alpha)
    out_features = weight.shape[0]
    bias = np.zeros(out_features, np.float32)
    c = None
    if len(node.input) > 2 and node.input[2]:
        c = ctx.const(node.input[2]).astype(np.float32) * np.float32(attrs.get("beta", 1.0))
    if c is not None and c.size in (1, out_features) and not (c.ndim == 2 and c.shape[0] != 1):
        bias = np.broadcast_to(c.reshape(-1), (out_features,)).astype(np.float32)
        c = None
    if c is None:
        emit_fully_connected(ctx, node, a_name, weight, bias)
        return
    # C varies per row: FULLY_CONNECTED without bias, then an ADD of C.
    product = f"{node.output[0]}/product"
    ctx.shapes[product] = ctx.shape(node.output[0])
    emit_fully_connected(ctx, node, a_name, weight, bias, out_name=product)
    value = ctx.value(product)
    out = ctx.define(node.output[0], value.perm)
    c_ir = ctx.broadcast_operand(scaled_constant(ctx, node.input[2], c), value.perm)
    ctx.emit("ADD", [value.ir, c_ir], [out], {"fused_activation_function": "NONE", "pot_scale_int16": False}, node)


def scaled_constant(ctx, name: str, data: np.ndarray) -> str:
    """Register C times beta under a fresh ONNX-level name."""
    scaled = f"{name}/times_beta"
    ctx.constants[scaled] = data
    return scaled


@rule("MatMul")
def convert_matmul(ctx, node, attrs):
    a_name, b_name = node.input
    out_name = node.output[0]
    vector_a, vector_b = len(ctx.shape(a_name)) == 1, len(ctx.shape(b_name)) == 1
    if vector_a or vector_b:
        # ONNX (as numpy) treats a 1-D A as a row [1, K] and a 1-D B as a column [K, 1], then drops
        # that axis from the result: the same with explicit RESHAPEs around a 2-D product.
        a_name = as_matrix(ctx, a_name, (1, -1)) if vector_a else a_name
        b_name = as_matrix(ctx, b_name, (-1, 1)) if vector_b else b_name
        out_name = f"{node.output[0]}/as_matrix"
        ctx.shapes[out_name] = np.matmul(np.empty(ctx.shape(a_name), np.bool_), np.empty(ctx.shape(b_name), np.bool_)).shape
    if ctx.is_const(b_name) and ctx.const(b_name).ndim == 2 and not ctx.is_const(a_name):
        weight = ctx.const(b_name).astype(np.float32).T
        bias = np.zeros(weight.shape[0], np.float32)
        emit_fully_connected(ctx, node, a_name, weight, bias, out_name=out_name)
    else:
        emit_batch_matmul(ctx, node, a_name, b_name, out_name=out_name)
    if out_name != node.output[0]:
        emit_reshape(ctx, node, out_name, node.output[0])


def as_matrix(ctx, name: str, shape: tuple) -> str:
    """ONNX-level name of 1-D ``name`` reshaped to a row (1, -1) or a column (-1, 1)."""
    matrix = f"{name}/as_matrix{shape}"
    if ctx.is_const(name):
        ctx.constants[matrix] = ctx.const(name).reshape(shape)
        return matrix
    value = ctx.value(name)
    ir = ctx.reshape_storage(value.ir, tuple(value.shape[0] if d == -1 else 1 for d in shape), matrix)
    ctx.alias(matrix, Value(ir, layout.identity(2), ctx.graph[ir].shape, value.dtype))
    return matrix


def batch_matmul_operand(ctx, name: str, rank: int) -> tuple:
    """(IR name, adjoint flag): a layout with the last two axes swapped is absorbed as adj_x/adj_y."""
    if ctx.is_const(name):
        return ctx.broadcast_operand(name, layout.identity(rank)), False
    value = ctx.value(name)
    if value.rank == rank:
        swapped = layout.identity(rank - 2) + (rank - 1, rank - 2)
        if value.perm == swapped:
            return value.ir, True
    return ctx.broadcast_operand(name, layout.identity(rank)), False


def emit_batch_matmul(ctx, node, a_name, b_name, out_name=None):
    rank = max(len(ctx.shape(a_name)), len(ctx.shape(b_name)))
    a_ir, adj_x = batch_matmul_operand(ctx, a_name, rank)
    b_ir, adj_y = batch_matmul_operand(ctx, b_name, rank)
    out = ctx.define(out_name or node.output[0], layout.identity(rank))
    options = {"adj_x": adj_x, "adj_y": adj_y, "asymmetric_quantize_inputs": False}
    ctx.emit("BATCH_MATMUL", [a_ir, b_ir], [out], options, node)

"""Gemm and MatMul with a constant right operand -> FULLY_CONNECTED; MatMul of two activations -> BATCH_MATMUL."""
from __future__ import annotations

import numpy as np

from runtime.model import ModelError

from .. import layout
from . import node_label, rule


def fc_input(ctx, name: str, weight: np.ndarray) -> tuple:
    """(IR input, weight [O, I] with columns in the input's storage order, output layout)."""
    value = ctx.value(name)
    if value.feature_order is not None:
        return value.ir, np.take(weight, value.feature_order, axis=1), layout.identity(2)
    rank = value.rank
    if value.perm[-1] == rank - 1:
        return value.ir, weight, value.perm
    return ctx.stored(name, layout.identity(rank)), weight, layout.identity(rank)


def emit_fully_connected(ctx, node, a_name: str, weight: np.ndarray, bias: np.ndarray) -> None:
    a_ir, weight, out_perm = fc_input(ctx, a_name, weight)
    base = node.output[0]
    w_ir = ctx.const_tensor(f"{base}/weights", np.ascontiguousarray(weight, dtype=np.float32))
    b_ir = ctx.const_tensor(f"{base}/bias", bias.astype(np.float32))
    out = ctx.define(node.output[0], out_perm)
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
        raise ModelError(f"{label}: transA=1 is not supported")
    b = ctx.const(b_name).astype(np.float32, copy=False)
    weight = b if attrs.get("transB", 0) else b.T
    alpha = float(attrs.get("alpha", 1.0))
    if alpha != 1.0:
        weight = weight * np.float32(alpha)
    out_features = weight.shape[0]
    bias = np.zeros(out_features, np.float32)
    if len(node.input) > 2 and node.input[2]:
        c = ctx.const(node.input[2]).astype(np.float32) * np.float32(attrs.get("beta", 1.0))
        if c.size not in (1, out_features) or (c.ndim == 2 and c.shape[0] != 1):
            raise ModelError(f"{label}: C of shape {c.shape} varies per row; only a bias vector is supported")
        bias = np.broadcast_to(c.reshape(-1), (out_features,)).astype(np.float32)
    emit_fully_connected(ctx, node, a_name, weight, bias)


@rule("MatMul")
def convert_matmul(ctx, node, attrs):
    a_name, b_name = node.input
    if ctx.is_const(b_name) and ctx.const(b_name).ndim == 2 and not ctx.is_const(a_name):
        weight = ctx.const(b_name).astype(np.float32).T
        bias = np.zeros(weight.shape[0], np.float32)
        if ctx.value(a_name).rank == 1:
            raise ModelError(f"{node_label(node)}: 1-D MatMul input is not supported")
        emit_fully_connected(ctx, node, a_name, weight, bias)
        return
    emit_batch_matmul(ctx, node, a_name, b_name)


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


def emit_batch_matmul(ctx, node, a_name, b_name):
    rank = max(len(ctx.shape(a_name)), len(ctx.shape(b_name)))
    if rank < 2 or min(len(ctx.shape(a_name)), len(ctx.shape(b_name))) < 2:
        raise ModelError(f"{node_label(node)}: 1-D MatMul operands are not supported")
    a_ir, adj_x = batch_matmul_operand(ctx, a_name, rank)
    b_ir, adj_y = batch_matmul_operand(ctx, b_name, rank)
    out = ctx.define(node.output[0], layout.identity(rank))
    options = {"adj_x": adj_x, "adj_y": adj_y, "asymmetric_quantize_inputs": False}
    ctx.emit("BATCH_MATMUL", [a_ir, b_ir], [out], options, node)

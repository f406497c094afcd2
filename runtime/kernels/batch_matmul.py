"""BATCH_MATMUL: broadcasting matmul over leading axes, with adj_x / adj_y transposing the last two.

int8 follows LiteRT's reference kernel: per-tensor params on both operands and the output, the int32
sum of (lhs - lhs_zero_point) * (rhs - rhs_zero_point), requantized by float32(lhs_scale * rhs_scale) /
output_scale (in double) and saturated to int8 (BATCH_MATMUL has no fused activation).

int16 (16x8) is batch_matmul.cc's EvalInt16 / EvalInt16Int8: an int16 lhs with an int16 or int8 rhs, every
zero point 0, the products summed in int64 and requantized by the int64 overload of
MultiplyByQuantizedMultiplier (a Q15-reduced multiplier), saturated to int16.
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime.fixedpoint import multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_int64
from edgeq.runtime.kernels import register
from edgeq.runtime.kernels.common import require_float
from edgeq.runtime.kernels.requantize import (exact_matmul_dtype_for, per_tensor_product_multiplier, saturate,
                                         scale_and_zero_point)
from edgeq.runtime.ir import ModelError


@register("BATCH_MATMUL")
def prepare_batch_matmul(op, graph):
    adj_x = bool(op.options.get("adj_x", False))
    adj_y = bool(op.options.get("adj_y", False))
    if graph[op.inputs[0]].dtype == np.int8:
        return _prepare_int8(op, graph, adj_x, adj_y)
    if graph[op.inputs[0]].dtype == np.int16:
        return _prepare_int16(op, graph, adj_x, adj_y)
    require_float(op, graph, (0, 1))
    rhs = graph[op.inputs[1]]
    constant_rhs = None
    if rhs.data is not None:
        constant_rhs = rhs.data.astype(np.float32)
        if adj_y:
            constant_rhs = np.ascontiguousarray(np.swapaxes(constant_rhs, -1, -2))

    def batch_matmul(a, b):
        if adj_x:
            a = np.swapaxes(a, -1, -2)
        if constant_rhs is not None:
            b = constant_rhs
        elif adj_y:
            b = np.swapaxes(b, -1, -2)
        return np.matmul(a, b)

    return batch_matmul


def _prepare_int8(op, graph, adj_x: bool, adj_y: bool):
    lhs, rhs, out = graph[op.inputs[0]], graph[op.inputs[1]], graph[op.outputs[0]]
    if rhs.dtype != np.int8 or out.dtype != np.int8:
        raise ModelError(f"op {op}: int8 BATCH_MATMUL needs int8 operands and output, not {rhs.dtype} -> {out.dtype}")
    (lhs_scale, lhs_zero_point), (rhs_scale, rhs_zero_point), (out_scale, out_zero_point) = (
        scale_and_zero_point(t, op) for t in (lhs, rhs, out))
    multiplier, shift = per_tensor_product_multiplier(lhs_scale, rhs_scale, out_scale)
    depth = lhs.shape[-2] if adj_x else lhs.shape[-1]
    # Operands minus their zero points lie in [-255, 255]; the float GEMM below is exact for them.
    dtype = exact_matmul_dtype_for(depth, 255, 255)

    def centered(values, zero_point, adjoint):
        values = values.astype(dtype) - dtype(zero_point)
        return np.swapaxes(values, -1, -2) if adjoint else values

    constant_rhs = centered(rhs.data, rhs_zero_point, adj_y) if rhs.data is not None else None

    def batch_matmul_int8(a, b):
        b = constant_rhs if constant_rhs is not None else centered(b, rhs_zero_point, adj_y)
        total = np.matmul(centered(a, lhs_zero_point, adj_x), b).astype(np.int64)
        scaled = multiply_by_quantized_multiplier(total, multiplier, shift).astype(np.int64) + out_zero_point
        return saturate(scaled, -128, 127, np.int8)

    return batch_matmul_int8


# float64 sums of int16 x int16 products (each below 2^30 in magnitude) are exact up to this depth.
FLOAT64_EXACT_INT16_DEPTH = 1 << 22


def _prepare_int16(op, graph, adj_x: bool, adj_y: bool):
    lhs, rhs, out = graph[op.inputs[0]], graph[op.inputs[1]], graph[op.outputs[0]]
    if rhs.dtype not in (np.int16, np.int8) or out.dtype != np.int16:
        raise ModelError(f"op {op}: int16 BATCH_MATMUL needs an int16 or int8 rhs and an int16 output, "
                         f"not {rhs.dtype} -> {out.dtype}")
    params = [scale_and_zero_point(t, op) for t in (lhs, rhs, out)]
    for tensor, (_, zero_point) in zip((lhs, rhs, out), params):
        if zero_point != 0:
            raise ModelError(f"op {op}: int16 BATCH_MATMUL needs zero point 0 on '{tensor.name}'")
    (lhs_scale, _), (rhs_scale, _), (out_scale, _) = params
    multiplier, shift = per_tensor_product_multiplier(lhs_scale, rhs_scale, out_scale)
    depth = lhs.shape[-2] if adj_x else lhs.shape[-1]
    if depth >= FLOAT64_EXACT_INT16_DEPTH:
        raise ModelError(f"op {op}: int16 BATCH_MATMUL depth {depth} is beyond what this kernel sums exactly")

    def as_float64(values, adjoint):
        values = values.astype(np.float64)
        return np.swapaxes(values, -1, -2) if adjoint else values

    constant_rhs = as_float64(rhs.data, adj_y) if rhs.data is not None else None

    def batch_matmul_int16(a, b):
        b = constant_rhs if constant_rhs is not None else as_float64(b, adj_y)
        total = np.matmul(as_float64(a, adj_x), b).astype(np.int64)  # exact: integers below 2^53
        scaled = multiply_by_quantized_multiplier_int64(total, multiplier, shift).astype(np.int64)
        return saturate(scaled, -32768, 32767, np.int16)

    return batch_matmul_int16

"""FULLY_CONNECTED: weights [O, I]; the input is flattened to [-1, I] as TFLite does."""
from __future__ import annotations

import numpy as np

from edgeq.runtime.kernels import check, native_int8, register
from edgeq.runtime.kernels.buffers import SCRATCH
from edgeq.runtime.kernels.common import fused_activation, input_tensor, require_float, with_activation
from edgeq.runtime.kernels.common import constant_input
from edgeq.runtime.fixedpoint import round_half_away
from edgeq.runtime.kernels.requantize import (
    check_quantized_tensors,
    activation_range,
    asymmetric_quantize_rows,
    double_to_int32,
    exact_float32_chunks,
    exact_gemm,
    exact_gemm_dtype,
    exact_matmul_dtype_for,
    int16_bias,
    saturate,
    scale_and_zero_point,
    symmetric_quantize_rows,
)
from edgeq.runtime.ir import ModelError


@check("FULLY_CONNECTED")
def check_fully_connected(op, graph):
    if op.options.get("weights_format", "DEFAULT") not in ("DEFAULT", 0):
        raise ModelError(f"weights format {op.options['weights_format']} is not supported (DEFAULT is)")
    # A per-tensor int8 weight may have a zero point: the kernel offsets the weights by it.
    check_quantized_tensors(op, graph, symmetric_weights=False)


@register("FULLY_CONNECTED")
def prepare_fully_connected(op, graph):
    input_dtype, weights_dtype = graph[op.inputs[0]].dtype, graph[op.inputs[1]].dtype
    if input_dtype == np.int8:
        return _prepare_int8(op, graph)
    if input_dtype == np.int16:
        return _prepare_int16x8(op, graph)
    if input_dtype == np.float32 and weights_dtype == np.int8:
        return _prepare_hybrid(op, graph)
    require_float(op, graph)
    return _prepare_float(op, graph)


def _prepare_float(op, graph):
    weights_tensor = graph[op.inputs[1]]
    out_c, in_c = weights_tensor.shape
    keep_num_dims = op.options.get("keep_num_dims", False)
    bias_tensor = input_tensor(op, graph, 2)
    constant_bias = None
    if bias_tensor is not None and bias_tensor.data is not None:
        constant_bias = bias_tensor.data.astype(np.float32)
    constant_weights_t = None
    if weights_tensor.data is not None:
        # A transposed view (BLAS reads it as is): no second copy of the weights.
        constant_weights_t = weights_tensor.data.astype(np.float32, copy=False).T
        if not constant_weights_t.flags.aligned:
            constant_weights_t = np.ascontiguousarray(constant_weights_t)

    def fully_connected(x, weights, bias=None):
        weights_t = constant_weights_t if constant_weights_t is not None else weights.T
        out = x.reshape(-1, in_c) @ weights_t
        bias = constant_bias if constant_bias is not None else bias
        if bias is not None:
            out += bias
        if keep_num_dims:
            return out.reshape(x.shape[:-1] + (out_c,))
        return out

    return with_activation(fully_connected, fused_activation(op))


def _output_shape(x, in_c, out_c, keep_num_dims):
    if keep_num_dims:
        return x.shape[:-1] + (out_c,)
    return (x.size // in_c, out_c)


# -- int8 ------------------------------------------------------------------------------------------
# LiteRT's reference int8 FullyConnected (per-tensor and per-channel): acc = sum (w + weights_offset)
# * (x + input_offset) + bias, then round(double(acc) * effective_scale) with std::round (ties away
# from zero) and effective_scale = double(input_scale) * double(filter_scale) / double(output_scale),
# plus output_offset, clamped. One rounding, from the float scales rather than a Q31 multiplier.

def _prepare_int8(op, graph):
    input_tensor_, weights_tensor = graph[op.inputs[0]], graph[op.inputs[1]]
    output_tensor = graph[op.outputs[0]]
    out_c, in_c = weights_tensor.shape
    keep_num_dims = op.options.get("keep_num_dims", False)
    input_scale, input_zero_point = scale_and_zero_point(input_tensor_, op)
    output_scale, output_offset = scale_and_zero_point(output_tensor, op)
    input_offset = -input_zero_point
    quant = weights_tensor.quant
    filter_scales = quant.scale.astype(np.float32)
    weights_offset = 0 if filter_scales.size > 1 else -int(quant.zero_point[0])
    raw_weights = constant_input(op, graph, 1, "weights")
    bias = constant_input(op, graph, 2, "bias").astype(np.int64) if input_tensor(op, graph, 2) is not None else None
    effective_scale = (np.float64(input_scale) * filter_scales.astype(np.float64)) / np.float64(output_scale)
    activation_min, activation_max = activation_range(op, output_scale, output_offset)
    if weights_offset == 0:
        native_fc = native_int8.prepare_fully_connected(
            raw_weights, bias, input_zero_point, effective_scale, output_offset, activation_min, activation_max,
            lambda x: _output_shape(x, in_c, out_c, keep_num_dims))
        if native_fc is not None:
            return native_fc
    weights = raw_weights.astype(np.int64) + weights_offset
    # Raw int8 inputs (|x| <= 128) times the offset weights: exact float32 GEMM pieces.
    chunks = exact_float32_chunks(weights, 128)
    gemm = exact_gemm(np.ascontiguousarray(weights.T, dtype=np.float32), chunks)
    accumulator_dtype = exact_gemm_dtype(chunks)
    scratch = SCRATCH
    constant_term = input_offset * weights.sum(axis=1)
    if bias is not None:
        constant_term = constant_term + bias

    def fully_connected_int8(x, _weights=None, _bias=None):
        acc = _exact_product(x, in_c, out_c, gemm, accumulator_dtype, scratch).astype(np.int64)
        acc += constant_term
        scaled = double_to_int32(round_half_away(acc.astype(np.float64) * effective_scale))
        out = saturate(scaled + output_offset, activation_min, activation_max, np.int8)
        return out.reshape(_output_shape(x, in_c, out_c, keep_num_dims))

    return fully_connected_int8


# 16x8 (int16 input, int8 weights, int64 bias): acc = sum w * x in int64, + bias, then, as LiteRT's
# reference int8 kernel does (and unlike the Q31 multiplier of its conv kernels), round(double(acc) *
# effective_scale) with ties away from zero, per channel with per-channel weights, clamped. Tested
# against BUILTIN_REF. A float64 GEMM gives acc exactly (int16 x int8 products over any real depth stay
# below 2^53).

def _prepare_int16x8(op, graph):
    input_tensor_, weights_tensor = graph[op.inputs[0]], graph[op.inputs[1]]
    out_c, in_c = weights_tensor.shape
    keep_num_dims = op.options.get("keep_num_dims", False)
    input_scale, _ = scale_and_zero_point(input_tensor_, op)
    if np.any(weights_tensor.quant.zero_point != 0):
        raise ModelError(f"op {op}: 16x8 weights '{weights_tensor.name}' must be symmetric (zero point 0)")
    weights_t = np.ascontiguousarray(constant_input(op, graph, 1, "weights").astype(np.float64).T)
    bias = int16_bias(op, graph, 2, out_c)
    output_scale, _ = scale_and_zero_point(graph[op.outputs[0]], op)
    filter_scales = weights_tensor.quant.scale.astype(np.float32).astype(np.float64)
    effective_scale = np.float64(input_scale) * filter_scales / np.float64(output_scale)
    activation_min, activation_max = activation_range(op, output_scale, 0, np.int16)

    def fully_connected_int16x8(x, _weights=None, _bias=None):
        acc = (x.reshape(-1, in_c).astype(np.float64) @ weights_t).astype(np.int64)
        if bias is not None:
            acc += bias
        scaled = double_to_int32(round_half_away(acc.astype(np.float64) * effective_scale))
        out = saturate(scaled, activation_min, activation_max, np.int16)
        return out.reshape(_output_shape(x, in_c, out_c, keep_num_dims))

    return fully_connected_int16x8


def _exact_product(x, in_c, out_c, gemm, accumulator_dtype, scratch):
    """x [.., in_c] int8 @ the prepared weights, as exact integers in float scratch [rows, out_c]."""
    rows = x.size // in_c
    lhs = scratch.get("fc_input", (rows, in_c), np.float32)
    np.copyto(lhs, x.reshape(rows, in_c), casting="unsafe")
    return gemm(lhs, scratch.get("accumulators", (rows, out_c), accumulator_dtype))


# -- hybrid (dynamic range): int8 weights, float input and output -------------------------------
# LiteRT's EvalHybrid: each input row is quantized (symmetric, or asymmetric when the op's
# asymmetric_quantize_inputs is set), out = bias + dot(w, q - offset) * (row_scale * filter_scale),
# the filter scale per output channel when the weights have several.

def _prepare_hybrid(op, graph):
    weights_tensor = graph[op.inputs[1]]
    out_c, in_c = weights_tensor.shape
    keep_num_dims = op.options.get("keep_num_dims", False)
    asymmetric = bool(op.options.get("asymmetric_quantize_inputs", False))
    filter_scales = weights_tensor.quant.scale.astype(np.float32)
    per_channel = filter_scales.size > 1
    gemm_dtype = exact_matmul_dtype_for(in_c, 256 if asymmetric else 128, 128)
    weights_t = np.ascontiguousarray(constant_input(op, graph, 1, "weights").astype(gemm_dtype).T)
    bias = None
    if input_tensor(op, graph, 2) is not None:
        bias = constant_input(op, graph, 2, "bias").astype(np.float32)
    activation = fused_activation(op)

    def fully_connected_hybrid(x, _weights=None, _bias=None):
        rows = x.reshape(-1, in_c)
        if asymmetric:
            q, scaling, offsets = asymmetric_quantize_rows(rows)
            q -= offsets[:, None]
        else:
            q, scaling = symmetric_quantize_rows(rows)
        acc = (q.astype(gemm_dtype) @ weights_t).astype(np.float32)
        if per_channel:
            scale = scaling[:, None] * filter_scales
        else:
            scale = (scaling * filter_scales[0])[:, None]
        out = acc * scale
        if bias is not None:
            out = bias + out
        out = out.astype(np.float32, copy=False)
        if activation is not None:
            out = activation(out)
        return out.reshape(_output_shape(x, in_c, out_c, keep_num_dims))

    return fully_connected_hybrid

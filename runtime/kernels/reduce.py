"""Reductions over the axes given by a constant axis tensor: MEAN, SUM, REDUCE_MAX/MIN/PROD."""
from __future__ import annotations

import numpy as np

from edgeq.runtime import native
from edgeq.runtime.fixedpoint import round_half_away
from edgeq.runtime.kernels import check, register
from edgeq.runtime.kernels.common import constant_input, require_float
from edgeq.runtime.ir import ModelError

_REDUCERS = {
    "MEAN": np.mean,
    "SUM": np.sum,
    "REDUCE_MAX": np.max,
    "REDUCE_MIN": np.min,
    "REDUCE_PROD": np.prod,
}


_QUANTIZED_REDUCERS = ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN")


def _is_quantized(tensor) -> bool:
    return tensor.dtype in (np.int8, np.uint8, np.int16) and tensor.quant is not None


@check(*_REDUCERS)
def check_reduce(op, graph):
    if _is_quantized(graph[op.inputs[0]]) and op.type not in _QUANTIZED_REDUCERS:
        raise ModelError(f"quantized {op.type} is not supported ({', '.join(_QUANTIZED_REDUCERS)} are)")


@register(*_REDUCERS)
def prepare_reduce(op, graph):
    if _is_quantized(graph[op.inputs[0]]):
        return _prepare_quantized(op, graph)
    require_float(op, graph)
    rank = len(graph[op.inputs[0]].shape)
    axes = np.atleast_1d(constant_input(op, graph, 1, "axis")).astype(np.int64)
    # TFLite accepts repeated and negative axes.
    axes = tuple(sorted({int(a) % rank for a in axes})) if rank else ()
    keep_dims = bool(op.options.get("keep_dims", False))
    reducer = _REDUCERS[op.type]

    def reduce(x, _axes=None):
        return np.asarray(reducer(x, axis=axes, keepdims=keep_dims), dtype=np.float32)

    return reduce


# -- quantized (int8 / uint8 / int16) ------------------------------------------------------------
# MEAN mirrors LiteRT's reference_ops::QuantizedMeanOrSum (reduce.cc EvalQuantizedMean, BUILTIN_REF's
# MEAN), all in integers: the input-to-output scale ratio as a Q31 multiplier with 1/count folded
# into it (multiplier << s / count with s = floor(log2(count)), s <= 32 and s <= 31 + shift); then
# MultiplyByQuantizedMultiplier(sum - input_zero_point * count) + output_zero_point, clamped.
# SUM mirrors another kernel, which rescales in float32 (see _prepare_quantized_sum).
# REDUCE_MAX/MIN compare the stored integers (input and output share params).

def _quantized_axes(op, graph):
    rank = len(graph[op.inputs[0]].shape)
    axes = np.atleast_1d(constant_input(op, graph, 1, "axis")).astype(np.int64)
    return tuple(sorted({int(a) % rank for a in axes})) if rank else ()


def _prepare_quantized(op, graph):
    from edgeq.runtime.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
    from edgeq.runtime.kernels.requantize import saturate, scale_and_zero_point

    input_tensor, output_tensor = graph[op.inputs[0]], graph[op.outputs[0]]
    axes = _quantized_axes(op, graph)
    keep_dims = bool(op.options.get("keep_dims", False))
    dtype = output_tensor.dtype
    if op.type in ("REDUCE_MAX", "REDUCE_MIN"):
        reducer = np.max if op.type == "REDUCE_MAX" else np.min

        def reduce_extreme(x, _axes=None):
            return reducer(x, axis=axes, keepdims=keep_dims)

        return reduce_extreme
    input_scale, input_zero_point = scale_and_zero_point(input_tensor, op)
    output_scale, output_zero_point = scale_and_zero_point(output_tensor, op)
    count = int(np.prod([input_tensor.shape[a] for a in axes], dtype=np.int64)) if axes else 1
    info = np.iinfo(dtype)
    if op.type == "SUM":
        return _prepare_quantized_sum(axes, keep_dims, count, input_scale, input_zero_point,
                                      output_scale, output_zero_point, info, dtype)
    multiplier, shift = quantize_multiplier(np.float64(input_scale) / np.float64(output_scale))
    if count > 0:
        fold = min(count.bit_length() - 1, 32, 31 + shift)
        multiplier = (multiplier << fold) // count
        shift -= fold
    zero_point_term = input_zero_point * count
    if native.isa() is not None and dtype == np.int8 and input_tensor.dtype == np.int8:
        native_mean = _native_mean_int8(input_tensor.shape, axes, tuple(output_tensor.shape[1:]), count,
                                        zero_point_term, multiplier, shift, output_zero_point)
        if native_mean is not None:
            return native_mean

    def reduce_mean(x, _axes=None):
        total = np.sum(x, axis=axes, keepdims=keep_dims, dtype=np.int64)
        scaled = multiply_by_quantized_multiplier(total - zero_point_term, multiplier, shift)
        return saturate(scaled.astype(np.int64) + output_zero_point, info.min, info.max, dtype)

    return reduce_mean


def _native_mean_int8(shape, axes, shape_tail, count, zero_point_term, multiplier, shift, output_zero_point):
    """The int8 MEAN as one native call, where the reduced axes are adjacent and none is the batch
    axis (the input is then [outer, reduced, inner] for every batch) and the sums stay inside int32;
    None otherwise."""
    from edgeq.runtime import fixedpoint
    from edgeq.runtime.kernels.buffers import OutputBuffers

    if (not axes or axes[0] == 0 or list(axes) != list(range(axes[0], axes[-1] + 1)) or count * 255 >= 2**31
            or not -2**31 <= zero_point_term < 2**31 or not 0 <= multiplier < 2**31 or not -31 <= shift < 31):
        return None
    inner = int(np.prod(shape[axes[-1] + 1:], dtype=np.int64))
    outer_per_sample = int(np.prod(shape[1:axes[0]], dtype=np.int64))
    sums = np.zeros(max(inner, 1), np.int32)
    outputs = OutputBuffers(shape_tail, np.int8)
    single_rounding = bool(fixedpoint.SINGLE_ROUNDING)
    arguments = (int(zero_point_term), int(multiplier), int(shift), single_rounding, int(output_zero_point), -128,
                 127, sums)

    isa = native.isa()

    def reduce_mean_native(x, _axes=None):
        n = x.shape[0]
        return native.mean_int8(isa, np.ascontiguousarray(x), n * outer_per_sample, count, inner, *arguments,
                                outputs.get(n))

    return reduce_mean_native


# The rounded float32 sum is cast to int32, which C++ leaves undefined outside the int32 range
# (aarch64 saturates, x86-64 gives INT32_MIN); we saturate. Only an output scale about
# 2^31 / (128 * count) times finer than the input's gets there.
_INT32_RANGE_AS_FLOAT32 = (np.float32(-(2.0**31)), np.float32(2.0**31))


def _prepare_quantized_sum(axes, keep_dims, count, input_scale, input_zero_point, output_scale,
                           output_zero_point, info, dtype):
    """int8/uint8/int16 SUM as LiteRT's builtin SUM kernel computes it.

    LiteRT registers SUM_OPT as its SUM kernel (Register_SUM). reduce.cc EvalSum sends every
    quantized input, same params or not, to optimized_ops::QuantizedMeanOrSum with compute_sum,
    which rescales the int32 sum in float32 with one rounding:
        scale = input_scale / output_scale                        (float32 / float32)
        bias  = (-input_zero_point * scale) * count               (float32, in that order)
        out   = clamp(round(float(sum) * scale + bias) + output_zero_point)
    round() is std::round, ties away from zero, and the x86-64 wheel fuses no multiply-add, so
    each step rounds to float32 as numpy's float32 arithmetic does here.

    BUILTIN_REF is not the referee: its SUM runs reference_ops::QuantizedMeanOrSum, the integer
    MultiplyByQuantizedMultiplier path of MEAN, which rounds twice (it differs from this kernel by
    1 on about a quarter of the values of a masked mean pooling), and LiteRT 2.3's int8 and int16
    SUM there returns integers unrelated to the sum (0 where an all-zero-point input must give the
    output zero point). The XNNPACK delegate, which LiteRT's default resolver applies to int8/uint8
    SUM, rounds float(sum - input_zero_point * count) * scale + output_zero_point to nearest even
    instead, so it may differ from this kernel by 1 on values within a float32 rounding of a tie.
    """
    scale = np.float32(input_scale) / np.float32(output_scale)
    zero_point_bias = np.float32(np.float32(-input_zero_point) * scale) * np.float32(count)
    low, high = _INT32_RANGE_AS_FLOAT32

    def reduce_sum(x, _axes=None):
        # int32 in TFLite, exact here (|sum| < 2^31 up to 2^24 int8 or 2^16 int16 terms)
        total = np.sum(x, axis=axes, keepdims=keep_dims, dtype=np.int64)
        # int32 -> float32 rounds to nearest even, as the C++ conversion does
        value = np.asarray(total).astype(np.float32) * scale + zero_point_bias
        rounded = np.clip(round_half_away(value), low, high).astype(np.int64)
        return np.clip(rounded + output_zero_point, info.min, info.max).astype(dtype)

    return reduce_sum

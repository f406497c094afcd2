"""Reductions over the axes given by a constant axis tensor: MEAN, SUM, REDUCE_MAX/MIN/PROD."""
from __future__ import annotations

import numpy as np

from runtime.kernels import register
from runtime.kernels.common import constant_input, require_float
from runtime.model import ModelError

_REDUCERS = {
    "MEAN": np.mean,
    "SUM": np.sum,
    "REDUCE_MAX": np.max,
    "REDUCE_MIN": np.min,
    "REDUCE_PROD": np.prod,
}


@register(*_REDUCERS)
def prepare_reduce(op, graph):
    if graph[op.inputs[0]].dtype in (np.int8, np.uint8, np.int16) and graph[op.inputs[0]].quant is not None:
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
# LiteRT's reduce.cc: MEAN and SUM go through reference_ops::QuantizedMeanOrSum, all in integers:
# the input-to-output scale ratio as a Q31 multiplier; for MEAN, 1/count is folded into it
# (multiplier << s / count with s = floor(log2(count)), s <= 32 and s <= 31 + shift); then
# MultiplyByQuantizedMultiplier(sum - input_zero_point * count) + output_zero_point, clamped.
# REDUCE_MAX/MIN compare the stored integers (input and output share params).

def _quantized_axes(op, graph):
    rank = len(graph[op.inputs[0]].shape)
    axes = np.atleast_1d(constant_input(op, graph, 1, "axis")).astype(np.int64)
    return tuple(sorted({int(a) % rank for a in axes})) if rank else ()


def _prepare_quantized(op, graph):
    from runtime.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
    from runtime.kernels.requantize import saturate, scale_and_zero_point

    input_tensor, output_tensor = graph[op.inputs[0]], graph[op.outputs[0]]
    axes = _quantized_axes(op, graph)
    keep_dims = bool(op.options.get("keep_dims", False))
    dtype = output_tensor.dtype
    if op.type in ("REDUCE_MAX", "REDUCE_MIN"):
        reducer = np.max if op.type == "REDUCE_MAX" else np.min

        def reduce_extreme(x, _axes=None):
            return reducer(x, axis=axes, keepdims=keep_dims)

        return reduce_extreme
    if op.type not in ("MEAN", "SUM"):
        raise ModelError(f"op {op}: quantized {op.type} is not supported")
    input_scale, input_zero_point = scale_and_zero_point(input_tensor, op)
    output_scale, output_zero_point = scale_and_zero_point(output_tensor, op)
    count = int(np.prod([input_tensor.shape[a] for a in axes], dtype=np.int64)) if axes else 1
    multiplier, shift = quantize_multiplier(np.float64(input_scale) / np.float64(output_scale))
    if op.type == "MEAN" and count > 0:
        fold = min(count.bit_length() - 1, 32, 31 + shift)
        multiplier = (multiplier << fold) // count
        shift -= fold
    info = np.iinfo(dtype)
    zero_point_term = input_zero_point * count

    def reduce_quantized(x, _axes=None):
        total = np.sum(x, axis=axes, keepdims=keep_dims, dtype=np.int64)
        scaled = multiply_by_quantized_multiplier(total - zero_point_term, multiplier, shift)
        return saturate(scaled.astype(np.int64) + output_zero_point, info.min, info.max, dtype)

    return reduce_quantized

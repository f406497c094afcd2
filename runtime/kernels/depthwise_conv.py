"""DEPTHWISE_CONV_2D: filter [1, KH, KW, C*M]; output channel c*M+m reads input channel c.

Eval is a sum of KH*KW shifted multiply-adds. Each tap is read as a [N, OH, OW*C] view whose rows
are contiguous (``padded_column_phases``), so numpy's inner loop runs over whole rows instead of C
channels; the per-tap weights are tiled to a row in prepare.
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime.kernels import check, native_float, native_int8, register
from edgeq.runtime.kernels.buffers import OutputBuffers
from edgeq.runtime.kernels.common import (
    constant_input,
    float_activation_bounds,
    fused_activation,
    input_tensor,
    padded_column_phases,
    require_float,
    window_taps,
    with_activation,
)
from edgeq.runtime.padding import explicit_output_size, output_and_padding
from edgeq.runtime.fixedpoint import multiply_by_quantized_multiplier
from edgeq.runtime.kernels.requantize import (
    check_quantized_tensors,
    activation_range,
    fold_requantization,
    folded_requantizer,
    asymmetric_quantize_rows,
    int16_bias,
    int16x8_requantizer,
    per_channel_multipliers,
    saturate,
    scale_and_zero_point,
    weight_zero_points_are_zero,
)
from edgeq.runtime.ir import ModelError


@check("DEPTHWISE_CONV_2D")
def check_depthwise_conv_2d(op, graph):
    in_c, out_c = graph[op.inputs[0]].shape[-1], graph[op.inputs[1]].shape[-1]
    if in_c == 0 or out_c % in_c:
        raise ModelError(f"filter depth {out_c} is not a multiple of input depth {in_c}")
    check_quantized_tensors(op, graph)


@register("DEPTHWISE_CONV_2D")
def prepare_depthwise_conv_2d(op, graph):
    input_dtype, filter_dtype = graph[op.inputs[0]].dtype, graph[op.inputs[1]].dtype
    if input_dtype == np.int8:
        return _prepare_int8(op, graph)
    if input_dtype == np.int16:
        return _prepare_int16x8(op, graph)
    if input_dtype == np.float32 and filter_dtype == np.int8:
        return _prepare_hybrid(op, graph)
    require_float(op, graph)
    return _prepare_float(op, graph)


def _geometry(op, graph, filters) -> tuple:
    """What the float and integer paths share: sizes, padding, and the window taps, each tap with
    its filter row tiled across the output width."""
    _, in_h, in_w, in_c = graph[op.inputs[0]].shape
    _, k_h, k_w, out_c = filters.shape
    options = op.options
    stride_h, stride_w = options.get("stride_h", 1), options.get("stride_w", 1)
    dil_h, dil_w = options.get("dilation_h_factor", 1), options.get("dilation_w_factor", 1)
    out_h, out_w, (pad_top, pad_bottom, pad_left, pad_right) = _padding(options, in_h, in_w, k_h, k_w)
    taps = [(phase, rows, cols, np.tile(filters[0, ky, kx], out_w))
            for ky, kx, phase, rows, cols in window_taps(k_h, k_w, stride_h, stride_w, dil_h, dil_w,
                                                          out_h, out_w, out_c)]
    return (in_h, in_w, out_h, out_w, out_c, out_c // in_c, stride_w,
            (pad_top, pad_bottom, pad_left, pad_right), taps)


def _padding(options, in_h, in_w, k_h, k_w):
    """(out_h, out_w, (top, bottom, left, right)) from the op's padding, or from the explicit
    padding the interpreter sets when it folds a PAD into this op."""
    stride_h, stride_w = options.get("stride_h", 1), options.get("stride_w", 1)
    dil_h, dil_w = options.get("dilation_h_factor", 1), options.get("dilation_w_factor", 1)
    explicit = options.get("explicit_padding")
    if explicit is not None:
        top, bottom, left, right = explicit
        out_h = explicit_output_size(in_h, top, bottom, k_h, stride_h, dil_h)
        out_w = explicit_output_size(in_w, left, right, k_w, stride_w, dil_w)
        return out_h, out_w, (top, bottom, left, right)
    padding = options.get("padding", "SAME")
    out_h, top, bottom = output_and_padding(padding, in_h, k_h, stride_h, dil_h)
    out_w, left, right = output_and_padding(padding, in_w, k_w, stride_w, dil_w)
    return out_h, out_w, (top, bottom, left, right)


def _prepare_float(op, graph):
    filters = constant_input(op, graph, 1, "filter").astype(np.float32)
    (in_h, in_w, out_h, out_w, out_c, multiplier, stride_w,
     (pad_top, pad_bottom, pad_left, pad_right), taps) = _geometry(op, graph, filters)
    bias = None
    if input_tensor(op, graph, 2) is not None:
        bias = constant_input(op, graph, 2, "bias").astype(np.float32)
    native_depthwise = native_float.prepare_depthwise(graph[op.inputs[0]].shape, filters, bias, op.options, out_h,
                                                      out_w, pad_top, pad_left, float_activation_bounds(op))
    if native_depthwise is not None:
        return native_depthwise
    if bias is not None:
        bias = np.tile(bias, out_w)
    column_phases = padded_column_phases(in_h, in_w, out_c, (pad_top, pad_bottom, pad_left, pad_right), stride_w)

    def phases(x):
        if multiplier > 1:
            x = np.repeat(x, multiplier, axis=3)
        return column_phases(x)

    (first_phase, first_rows, first_cols, first_weights), other_taps = taps[0], taps[1:]

    def depthwise_conv_2d(x, _filters=None, _bias=None):
        sources = phases(x)
        acc = sources[first_phase][:, first_rows, first_cols] * first_weights
        product = np.empty_like(acc)
        for phase, rows, cols, weights in other_taps:
            np.multiply(sources[phase][:, rows, cols], weights, out=product)
            acc += product
        if bias is not None:
            acc += bias
        return acc.reshape(x.shape[0], out_h, out_w, out_c)

    return with_activation(depthwise_conv_2d, fused_activation(op))


# -- int8 ------------------------------------------------------------------------------------------
# reference_integer_ops::DepthwiseConvPerChannel: acc = sum w * (x + input_offset) + bias over the
# taps inside the input, requantized per channel (double rounding), plus output_offset, clamped.
# Eval shifts the input by input_offset once, so padding is plain 0, and sums the taps in int32.

def _integer_taps(op, graph):
    """eval(x_shifted int32 [N, H, W, C]) -> int32 [N, OH, OW, C*M]: sum over taps of w * x, with
    padding contributing 0."""
    filters = constant_input(op, graph, 1, "filter").astype(np.int32)
    (in_h, in_w, out_h, out_w, out_c, multiplier, stride_w,
     (pad_top, pad_bottom, pad_left, pad_right), taps) = _geometry(op, graph, filters)
    column_phases = padded_column_phases(in_h, in_w, out_c, (pad_top, pad_bottom, pad_left, pad_right),
                                         stride_w, fill=0)
    (first_phase, first_rows, first_cols, first_weights), other_taps = taps[0], taps[1:]

    def accumulate(x_shifted):
        if multiplier > 1:
            x_shifted = np.repeat(x_shifted, multiplier, axis=3)
        sources = column_phases(x_shifted)
        acc = sources[first_phase][:, first_rows, first_cols] * first_weights
        product = np.empty_like(acc)
        for phase, rows, cols, weights in other_taps:
            np.multiply(sources[phase][:, rows, cols], weights, out=product)
            acc += product
        return acc.reshape(x_shifted.shape[0], out_h, out_w, out_c)

    return accumulate, out_c


def _prepare_int8(op, graph):
    filter_tensor = graph[op.inputs[1]]
    weight_zero_points_are_zero(filter_tensor, op)
    input_scale, input_zero_point = scale_and_zero_point(graph[op.inputs[0]], op)
    output_scale, output_offset = scale_and_zero_point(graph[op.outputs[0]], op)
    input_offset = np.int32(-input_zero_point)
    out_c = filter_tensor.shape[3]
    bias = None
    if input_tensor(op, graph, 2) is not None:
        bias = constant_input(op, graph, 2, "bias").astype(np.int64)
    output_multiplier, output_shift = per_channel_multipliers(
        input_scale, filter_tensor.quant.scale, output_scale, out_c)
    activation_min, activation_max = activation_range(op, output_scale, output_offset)
    native_depthwise = _native_int8(op, graph, bias, input_zero_point, output_multiplier, output_shift,
                                    output_offset, activation_min, activation_max)
    if native_depthwise is not None:
        return native_depthwise
    accumulate, out_c = _integer_taps(op, graph)

    # |x + input_offset| <= 255, so each channel's sum is bounded by 255 * sum |w|.
    filters = constant_input(op, graph, 1, "filter").astype(np.int64).reshape(-1, out_c)
    accumulator_bound = 255 * int(np.abs(filters).sum(axis=0).max(initial=0))
    constant_term = bias if bias is not None else np.zeros(out_c, np.int64)
    folded = fold_requantization(constant_term, output_multiplier, output_shift, output_offset, accumulator_bound)
    if folded is not None:
        requantize = folded_requantizer(folded, activation_min, activation_max)
        outputs = OutputBuffers(graph[op.outputs[0]].shape[1:], np.int8)

        def depthwise_conv_2d_int8_folded(x, _filters=None, _bias=None):
            acc = accumulate(x.astype(np.int32) + input_offset)
            out = outputs.get(x.shape[0])
            requantize(acc.reshape(-1, out_c), out.reshape(-1, out_c))
            return out

        return depthwise_conv_2d_int8_folded

    def depthwise_conv_2d_int8(x, _filters=None, _bias=None):
        acc = accumulate(x.astype(np.int32) + input_offset).astype(np.int64)
        if bias is not None:
            acc += bias
        scaled = multiply_by_quantized_multiplier(acc, output_multiplier, output_shift)
        return saturate(scaled.astype(np.int64) + output_offset, activation_min, activation_max, np.int8)

    return depthwise_conv_2d_int8


# 16x8 (reference_integer_ops::DepthwiseConvPerChannel, int16 overload): acc = sum w * x in int64 over
# the taps inside the input (zero point 0: padding adds 0), + int64 bias, MultiplyByQuantizedMultiplier's
# int64 overload per channel, clamped.

def _prepare_int16x8(op, graph):
    filter_tensor = graph[op.inputs[1]]
    weight_zero_points_are_zero(filter_tensor, op)
    input_scale, _ = scale_and_zero_point(graph[op.inputs[0]], op)
    out_c = filter_tensor.shape[3]
    bias = int16_bias(op, graph, 2, out_c)
    requantize = int16x8_requantizer(op, graph, input_scale, filter_tensor.quant.scale, out_c)
    accumulate, _ = _integer_taps(op, graph)

    def depthwise_conv_2d_int16x8(x, _filters=None, _bias=None):
        acc = accumulate(x.astype(np.int64))
        if bias is not None:
            acc += bias
        return requantize(acc)

    return depthwise_conv_2d_int16x8


def _native_int8(op, graph, bias, input_zero_point, output_multiplier, output_shift, output_offset,
                 activation_min, activation_max):
    _, in_h, in_w, _ = graph[op.inputs[0]].shape
    filters = constant_input(op, graph, 1, "filter")
    out_h, out_w, (pad_top, _, pad_left, _) = _padding(op.options, in_h, in_w, filters.shape[1], filters.shape[2])
    return native_int8.prepare_depthwise(graph[op.inputs[0]].shape, filters, bias, input_zero_point,
                                         output_multiplier, output_shift, output_offset, activation_min,
                                         activation_max, op.options, out_h, out_w, pad_top, pad_left)


# -- hybrid (dynamic range): int8 filter (per channel), float input and output ------------------
# LiteRT's EvalHybridPerChannel: each batch row of the input is quantized asymmetrically,
# acc = sum w * (q - offset) over the taps inside the input, out = acc * (channel_scale *
# input_scale) + bias.

def _prepare_hybrid(op, graph):
    filter_tensor = graph[op.inputs[1]]
    weight_zero_points_are_zero(filter_tensor, op)
    accumulate, out_c = _integer_taps(op, graph)
    channel_scales = np.broadcast_to(filter_tensor.quant.scale.astype(np.float32), (out_c,))
    bias = None
    if input_tensor(op, graph, 2) is not None:
        bias = constant_input(op, graph, 2, "bias").astype(np.float32)
    activation = fused_activation(op)

    def depthwise_conv_2d_hybrid(x, _filters=None, _bias=None):
        n = x.shape[0]
        q, scaling, offsets = asymmetric_quantize_rows(x.reshape(n, -1))
        q -= offsets[:, None]
        acc = accumulate(q.reshape(x.shape)).astype(np.float32)
        out = acc * (channel_scales * scaling[:, None, None, None])
        if bias is not None:
            out += bias
        out = out.astype(np.float32, copy=False)
        return activation(out) if activation is not None else out

    return depthwise_conv_2d_hybrid

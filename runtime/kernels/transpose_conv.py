"""TRANSPOSE_CONV: inputs (output_shape, filter [O, KH, KW, I], input, optional bias).

Each input pixel scatters ``input · filter`` into a KH×KW patch of the output at ``stride``
spacing: one GEMM makes all patches, then one strided add per filter tap places them (col2im).
The slices of every tap are computed in prepare and cover only the input pixels whose patch entry
lands inside the output (TFLite pads as if this were the forward convolution from the output size
to the input size), so nothing is cropped or bounds-checked at run time.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edgeq.runtime.fixedpoint import multiply_by_quantized_multiplier
from edgeq.runtime.kernels import check, register
from edgeq.runtime.kernels.common import (
    batched_shape,
    constant_input,
    fused_activation,
    input_tensor,
    require_float,
    strided_overlap,
    with_activation,
)
from edgeq.runtime.padding import output_and_padding
from edgeq.runtime.kernels.requantize import (
    check_quantized_tensors,
    activation_range,
    exact_matmul_dtype_for,
    int16_bias,
    int16x8_requantizer,
    per_channel_multipliers,
    saturate,
    scale_and_zero_point,
    weight_zero_points_are_zero,
)
from edgeq.runtime.ir import ModelError


@check("TRANSPOSE_CONV")
def check_transpose_conv(op, graph):
    data, output = graph[op.inputs[2]], graph[op.outputs[0]]
    if data.dtype == np.int8 and output.dtype != np.int8:
        raise ModelError(f"an int8 TRANSPOSE_CONV gives int8, not {output.dtype}")
    if data.dtype == np.int16 and output.dtype != np.int16:
        raise ModelError(f"an int16 TRANSPOSE_CONV gives int16, not {output.dtype}")
    check_quantized_tensors(op, graph, data_index=2)


@register("TRANSPOSE_CONV")
def prepare_transpose_conv(op, graph):
    if graph[op.inputs[2]].dtype == np.int8:
        return _prepare_int8(op, graph)
    if graph[op.inputs[2]].dtype == np.int16:
        return _prepare_int16x8(op, graph)
    require_float(op, graph, (2,))
    return _prepare_float(op, graph)


class TransposeConvGeometry(NamedTuple):
    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    k_h: int
    k_w: int
    static_batch: int
    output_shape: tuple
    taps: list  # (ky, kx, (in_rows, out_rows), (in_cols, out_cols)) of the taps that reach the output


def _geometry(op, graph) -> TransposeConvGeometry:
    output_shape = tuple(int(d) for d in np.ravel(constant_input(op, graph, 0, "output_shape")))
    filter_shape = graph[op.inputs[1]].shape
    in_shape = graph[op.inputs[2]].shape
    if len(output_shape) != 4 or len(filter_shape) != 4 or len(in_shape) != 4:
        raise ModelError(f"op {op}: TRANSPOSE_CONV needs 4-D output_shape, filter and input")
    _, in_h, in_w, in_c = in_shape
    out_c, k_h, k_w, filter_c = filter_shape
    if filter_c != in_c or output_shape[3] != out_c:
        raise ModelError(f"op {op}: filter {tuple(filter_shape)} does not fit input {tuple(in_shape)} "
                         f"/ output {output_shape}")
    options = op.options
    stride_h, stride_w = options.get("stride_h", 1), options.get("stride_w", 1)
    padding = options.get("padding", "SAME")
    out_h, out_w = output_shape[1], output_shape[2]
    _, pad_top, _ = output_and_padding(padding, out_h, k_h, stride_h)
    _, pad_left, _ = output_and_padding(padding, out_w, k_w, stride_w)
    taps = []
    for ky in range(k_h):
        rows = strided_overlap(ky - pad_top, stride_h, in_h, out_h)
        for kx in range(k_w):
            cols = strided_overlap(kx - pad_left, stride_w, in_w, out_w)
            if rows is not None and cols is not None:
                taps.append((ky, kx, rows, cols))
    return TransposeConvGeometry(in_h, in_w, in_c, out_h, out_w, out_c, k_h, k_w, output_shape[0],
                                 output_shape, taps)


def _col2im(patches, out, taps):
    """Add each tap's [n, H, W, O] patch plane of ``patches`` [n, H, W, KH, KW, O] into ``out``."""
    for ky, kx, (in_rows, out_rows), (in_cols, out_cols) in taps:
        out[:, out_rows, out_cols, :] += patches[:, in_rows, in_cols, ky, kx, :]
    return out


def _prepare_float(op, graph):
    g = _geometry(op, graph)
    filters = constant_input(op, graph, 1, "filter").astype(np.float32)
    bias = None
    if input_tensor(op, graph, 3) is not None:
        bias = constant_input(op, graph, 3, "bias").astype(np.float32)
    weights = np.ascontiguousarray(filters.transpose(3, 1, 2, 0).reshape(g.in_c, g.k_h * g.k_w * g.out_c))
    in_h, in_w, in_c, out_h, out_w, out_c, k_h, k_w = g[:8]
    taps = g.taps

    def transpose_conv(_output_shape, _filters, x, _bias=None):
        n = x.shape[0]
        patches = (x.reshape(-1, in_c) @ weights).reshape(n, in_h, in_w, k_h, k_w, out_c)
        out = _col2im(patches, np.zeros((n, out_h, out_w, out_c), np.float32), taps)
        if bias is not None:
            out += bias
        return out.reshape(batched_shape(g.output_shape, g.static_batch, n))

    return with_activation(transpose_conv, fused_activation(op))


# -- int8 ------------------------------------------------------------------------------------------
# reference_integer_ops::TransposeConv: scratch[b, out_y, out_x, o] += (x + input_offset) * w for
# every (input pixel, tap) whose out_y = in_y * stride_h - pad_top + ky (and likewise x) falls
# inside the output, then acc + bias is requantized per output channel (double rounding), offset,
# and clamped to the fused activation's range.
# As a GEMM of the raw int8 input, the input_offset term no longer depends on the input: at each
# output position it is input_offset times the filter sums of the taps that reach it, a constant
# [OH, OW, O] array built in prepare by the same col2im, with the bias folded in.

def _prepare_int8(op, graph):
    g = _geometry(op, graph)
    input_tensor_, filter_tensor = graph[op.inputs[2]], graph[op.inputs[1]]
    output_tensor = graph[op.outputs[0]]
    weight_zero_points_are_zero(filter_tensor, op)
    input_scale, input_zero_point = scale_and_zero_point(input_tensor_, op)
    output_scale, output_offset = scale_and_zero_point(output_tensor, op)
    in_h, in_w, in_c, out_h, out_w, out_c, k_h, k_w = g[:8]
    taps = g.taps
    stride_h, stride_w = op.options.get("stride_h", 1), op.options.get("stride_w", 1)

    # At most ceil(KH / stride_h) * ceil(KW / stride_w) taps reach one output position, each an
    # in_c-term dot product: the float GEMM and the col2im adds are exact below 2^24 in float32.
    taps_per_output = -(-k_h // stride_h) * -(-k_w // stride_w)
    accumulate_dtype = exact_matmul_dtype_for(taps_per_output * in_c)
    filters = constant_input(op, graph, 1, "filter").astype(np.int64)
    weights = np.ascontiguousarray(filters.transpose(3, 1, 2, 0).reshape(in_c, k_h * k_w * out_c)
                                   .astype(accumulate_dtype))

    tap_filter_sums = filters.sum(axis=3).transpose(1, 2, 0)  # [KH, KW, O]
    every_pixel = np.broadcast_to(tap_filter_sums, (1, in_h, in_w, k_h, k_w, out_c))
    constant_term = -input_zero_point * _col2im(every_pixel, np.zeros((1, out_h, out_w, out_c), np.int64), taps)
    if input_tensor(op, graph, 3) is not None:
        bias = constant_input(op, graph, 3, "bias").astype(np.int64)
        if bias.shape != (out_c,):
            raise ModelError(f"op {op}: bias shape {bias.shape} does not match {out_c} output channels")
        constant_term += bias
    output_multiplier, output_shift = per_channel_multipliers(
        input_scale, filter_tensor.quant.scale, output_scale, out_c)
    activation_min, activation_max = activation_range(op, output_scale, output_offset)

    def accumulate(x):
        """The int32 accumulators of the reference kernel (bias included), as int64 [n, OH, OW, O]."""
        n = x.shape[0]
        patches = (x.reshape(-1, in_c).astype(accumulate_dtype) @ weights).reshape(n, in_h, in_w, k_h, k_w, out_c)
        acc = _col2im(patches, np.zeros((n, out_h, out_w, out_c), accumulate_dtype), taps).astype(np.int64)
        acc += constant_term
        return acc

    def transpose_conv_int8(_output_shape, _filters, x, _bias=None):
        scaled = multiply_by_quantized_multiplier(accumulate(x), output_multiplier, output_shift)
        out = saturate(scaled.astype(np.int64) + output_offset, activation_min, activation_max, np.int8)
        return out.reshape(batched_shape(g.output_shape, g.static_batch, x.shape[0]))

    return transpose_conv_int8


# -- 16x8: int16 input and output (zero point 0), int8 filter, int64 bias ---------------------------
# reference_integer_ops::TransposeConv (int16 overload): the int64 scratch sums x * w over the (input
# pixel, tap) pairs reaching each output position, + bias, then MultiplyByQuantizedMultiplier's int64
# overload per channel, clamped. float64 GEMM and col2im adds are exact for int16 x int8 terms.

def _prepare_int16x8(op, graph):
    g = _geometry(op, graph)
    filter_tensor = graph[op.inputs[1]]
    weight_zero_points_are_zero(filter_tensor, op)
    input_scale, _ = scale_and_zero_point(graph[op.inputs[2]], op)
    in_h, in_w, in_c, out_h, out_w, out_c, k_h, k_w = g[:8]
    taps = g.taps
    filters = constant_input(op, graph, 1, "filter").astype(np.float64)
    weights = np.ascontiguousarray(filters.transpose(3, 1, 2, 0).reshape(in_c, k_h * k_w * out_c))
    bias = int16_bias(op, graph, 3, out_c)
    requantize = int16x8_requantizer(op, graph, input_scale, filter_tensor.quant.scale, out_c)

    def transpose_conv_int16x8(_output_shape, _filters, x, _bias=None):
        n = x.shape[0]
        patches = (x.reshape(-1, in_c).astype(np.float64) @ weights).reshape(n, in_h, in_w, k_h, k_w, out_c)
        acc = _col2im(patches, np.zeros((n, out_h, out_w, out_c), np.float64), taps).astype(np.int64)
        if bias is not None:
            acc += bias
        return requantize(acc).reshape(batched_shape(g.output_shape, g.static_batch, n))

    return transpose_conv_int16x8

"""CONV_2D: NHWC input, filter [O, KH, KW, I], optional bias [O]; one GEMM per call.

A 1x1 convolution is a matmul over pixels. Any other is im2col + matmul: each filter tap copies
the input pixels it sees into its own column block of a reused [N, OH, OW, KH, KW, C] buffer; the
slices are computed in prepare and cover only positions inside the input, so the entries that fall
on padding stay zero from allocation and no padded copy of the input is ever made.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from runtime.kernels import compiled, register
from runtime.kernels.common import (
    compute_padding,
    constant_input,
    fused_activation,
    input_tensor,
    require_float,
    with_activation,
)
from runtime.fixedpoint import multiply_by_quantized_multiplier
from runtime.kernels.requantize import (
    activation_range,
    asymmetric_quantize_rows,
    exact_matmul_dtype_for,
    per_channel_multipliers,
    saturate,
    scale_and_zero_point,
    symmetric_quantize_rows,
    weight_zero_points_are_zero,
)
from runtime.model import ModelError

# Larger batches are run in chunks so the im2col buffer stays around this size.
IM2COL_BUDGET_BYTES = 32 << 20


@register("CONV_2D")
def prepare_conv_2d(op, graph):
    input_dtype, filter_dtype = graph[op.inputs[0]].dtype, graph[op.inputs[1]].dtype
    if input_dtype == np.int8:
        return _prepare_int8(op, graph)
    if input_dtype == np.float32 and filter_dtype == np.int8:
        return _prepare_hybrid(op, graph)
    require_float(op, graph)
    return _prepare_float(op, graph)


def _prepare_float(op, graph):
    g = _geometry(op, graph)
    in_c, out_c, k_h, k_w, out_h, out_w = g.in_c, g.out_c, g.k_h, g.k_w, g.out_h, g.out_w
    filters = _aligned(constant_input(op, graph, 1, "filter").astype(np.float32, copy=False))
    bias = _bias(op, graph, out_c)
    # Rows of the GEMM's right operand follow the im2col column order (kh, kw, c). A transposed
    # view: BLAS reads it as is, so the filter is not copied (the model's buffer is its only copy).
    weights = filters.reshape(out_c, -1).T
    activation = fused_activation(op)

    if k_h == k_w == 1:  # a 1x1 filter never needs padding
        return with_activation(_pointwise(weights, bias, g.stride_h, g.stride_w), activation)

    taps = g.taps
    patch = k_h * k_w * in_c
    chunk = max(1, IM2COL_BUDGET_BYTES // (out_h * out_w * patch * 4))
    column_buffers = {}

    def im2col(x):
        n = x.shape[0]
        columns = column_buffers.get(n)
        if columns is None:
            columns = column_buffers[n] = np.zeros((n, out_h, out_w, k_h, k_w, in_c), np.float32)
        for ky, kx, (out_rows, in_rows), (out_cols, in_cols) in taps:
            columns[:, out_rows, out_cols, ky, kx, :] = x[:, in_rows, in_cols, :]
        return columns.reshape(n * out_h * out_w, patch)

    if compiled.enabled():
        # One compiled pass instead of one strided numpy copy per tap (slow for few channels).
        im2col = _compiled_im2col_for(g, 0.0, np.float32)

    outputs = compiled.OutputBuffers((out_h * out_w, out_c), np.float32)

    def conv_2d(x, _filters=None, _bias=None):
        n = x.shape[0]
        out = outputs.get(n).reshape(n * out_h * out_w, out_c)
        if n <= chunk:
            np.matmul(im2col(x), weights, out=out)
        else:
            rows_per_sample = out_h * out_w
            for start in range(0, n, chunk):
                part = x[start:start + chunk]
                np.matmul(im2col(part), weights,
                          out=out[start * rows_per_sample:(start + part.shape[0]) * rows_per_sample])
        if bias is not None:
            out += bias
        return out.reshape(n, out_h, out_w, out_c)

    return with_activation(conv_2d, activation)


def _compiled_im2col(k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left, out_h, out_w, patch, fill, dtype):
    """im2col(x) -> [N * OH * OW, KH * KW * C] columns of ``dtype`` (a buffer reused per batch size)."""
    geometry = (k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left, out_h, out_w, fill)
    buffers = compiled.OutputBuffers((out_h * out_w, patch), dtype)
    kernel = compiled.im2col

    def im2col(x):
        n = x.shape[0]
        return kernel(x, *geometry, buffers.get(n).reshape(n * out_h * out_w, patch))

    return im2col


def _aligned(array):
    """``array``, copied only if its data is not aligned for its dtype (BLAS needs aligned data)."""
    return array if array.flags.aligned else array.copy()


def _tap_range(offset, stride, in_size, out_size):
    """For a tap reading input position ``o*stride + offset`` for output o: the (output slice,
    input slice) of the outputs whose input lies inside [0, in_size), or None if there are none."""
    first = max(0, -(offset // stride))  # ceil(-offset / stride)
    last = min(out_size - 1, (in_size - 1 - offset) // stride)
    if last < first:
        return None
    start = first * stride + offset
    return slice(first, last + 1), slice(start, start + (last - first) * stride + 1, stride)


def _pointwise(weights, bias, stride_h, stride_w):
    out_c = weights.shape[1]
    strided = stride_h > 1 or stride_w > 1
    buffers = {}

    def conv_1x1(x, _filters=None, _bias=None):
        if strided:
            x = x[:, ::stride_h, ::stride_w, :]
        out_shape = x.shape[:-1] + (out_c,)
        out = buffers.get(out_shape)
        if out is None:
            out = buffers[out_shape] = np.empty(out_shape, np.float32)
        np.matmul(x.reshape(-1, x.shape[-1]), weights, out=out.reshape(-1, out_c))
        if bias is not None:
            out += bias
        return out

    return conv_1x1


def _bias(op, graph, out_c):
    if input_tensor(op, graph, 2) is None:
        return None
    bias = constant_input(op, graph, 2, "bias").astype(np.float32)
    if bias.shape != (out_c,):
        raise ModelError(f"op {op}: bias shape {bias.shape} does not match {out_c} output channels")
    return bias


# -- int8 ------------------------------------------------------------------------------------------
# reference_integer_ops::ConvPerChannel: acc = sum w * (x + input_offset) + bias over the taps inside
# the input, requantized per output channel (double rounding), plus output_offset, clamped.
# As a GEMM: im2col entries that fall on padding hold the input zero point, so (x + input_offset)
# is 0 there, and the input_offset term is folded into a per-channel constant in prepare.

class ConvGeometry(NamedTuple):
    in_c: int
    out_c: int
    k_h: int
    k_w: int
    out_h: int
    out_w: int
    stride_h: int
    stride_w: int
    dil_h: int
    dil_w: int
    pad_top: int
    pad_left: int
    taps: list  # (ky, kx, (out_rows, in_rows), (out_cols, in_cols)) of the taps that see the input


def _geometry(op, graph) -> ConvGeometry:
    """Sizes, padding and the in-input slices of every filter tap: what every path shares."""
    _, in_h, in_w, in_c = graph[op.inputs[0]].shape
    out_c, k_h, k_w, filter_c = graph[op.inputs[1]].shape
    if filter_c != in_c:
        raise ModelError(f"op {op}: filter depth {filter_c} differs from input depth {in_c} (grouped conv)")
    options = op.options
    stride_h, stride_w = options.get("stride_h", 1), options.get("stride_w", 1)
    dil_h, dil_w = options.get("dilation_h_factor", 1), options.get("dilation_w_factor", 1)
    padding = options.get("padding", "SAME")
    out_h, pad_top, _ = compute_padding(padding, in_h, k_h, stride_h, dil_h)
    out_w, pad_left, _ = compute_padding(padding, in_w, k_w, stride_w, dil_w)
    taps = []
    for ky in range(k_h):
        rows = _tap_range(ky * dil_h - pad_top, stride_h, in_h, out_h)
        for kx in range(k_w):
            cols = _tap_range(kx * dil_w - pad_left, stride_w, in_w, out_w)
            if rows is not None and cols is not None:
                taps.append((ky, kx, rows, cols))
    return ConvGeometry(in_c, out_c, k_h, k_w, out_h, out_w, stride_h, stride_w, dil_h, dil_w,
                        pad_top, pad_left, taps)


def _compiled_im2col_for(g: ConvGeometry, fill, dtype):
    return _compiled_im2col(g.k_h, g.k_w, g.stride_h, g.stride_w, g.dil_h, g.dil_w, g.pad_top, g.pad_left,
                            g.out_h, g.out_w, g.k_h * g.k_w * g.in_c, fill, dtype)


def _patches(x_float, columns, taps):
    """Fill the [n, OH, OW, KH, KW, C] buffer ``columns`` (padding entries already set) from x."""
    for ky, kx, (out_rows, in_rows), (out_cols, in_cols) in taps:
        columns[:, out_rows, out_cols, ky, kx, :] = x_float[:, in_rows, in_cols, :]
    n = columns.shape[0]
    return columns.reshape(n * columns.shape[1] * columns.shape[2], -1)


def _integer_gemm(op, graph, gemm_dtype, fill_value):
    """eval(x_float [N, H, W, C]) -> int64 [N, OH, OW, O] accumulators sum w * x_float over each
    window, with padding entries equal to ``fill_value``; exact in ``gemm_dtype``."""
    g = _geometry(op, graph)
    in_c, out_c, k_h, k_w, out_h, out_w, stride_h, stride_w = g[:8]
    taps = g.taps
    filters = constant_input(op, graph, 1, "filter").astype(gemm_dtype)
    weights = np.ascontiguousarray(filters.reshape(out_c, -1).T)
    patch = k_h * k_w * in_c
    if k_h == k_w == 1:
        def pointwise(x):
            if stride_h > 1 or stride_w > 1:
                x = x[:, ::stride_h, ::stride_w, :]
            n = x.shape[0]
            out = x.reshape(-1, in_c) @ weights
            return out.reshape(n, out_h, out_w, out_c)

        return pointwise
    chunk = max(1, IM2COL_BUDGET_BYTES // (out_h * out_w * patch * np.dtype(gemm_dtype).itemsize))
    buffers = {}
    if compiled.enabled():
        return _compiled_integer_gemm(g, weights, gemm_dtype, fill_value, chunk)

    def gemm(x):
        n = x.shape[0]
        out = np.empty((n, out_h, out_w, out_c), gemm_dtype)
        for start in range(0, n, chunk):
            part = x[start:start + chunk]
            m = part.shape[0]
            columns = buffers.get(m)
            if columns is None:
                columns = buffers[m] = np.full((m, out_h, out_w, k_h, k_w, in_c), fill_value, gemm_dtype)
            np.matmul(_patches(part, columns, taps), weights,
                      out=out[start:start + m].reshape(m * out_h * out_w, out_c))
        return out

    return gemm


def _compiled_integer_gemm(g: ConvGeometry, weights, gemm_dtype, fill_value, chunk):
    """``_integer_gemm``'s eval with the compiled im2col, which reads the integer input as is."""
    out_h, out_w, out_c = g.out_h, g.out_w, g.out_c
    im2col = _compiled_im2col_for(g, float(fill_value), gemm_dtype)
    outputs = compiled.OutputBuffers((out_h, out_w, out_c), gemm_dtype)

    def gemm(x):
        n = x.shape[0]
        out = outputs.get(n)
        for start in range(0, n, chunk):
            part = x[start:start + chunk]
            m = part.shape[0]
            np.matmul(im2col(part), weights, out=out[start:start + m].reshape(m * out_h * out_w, out_c))
        return out

    return gemm


def _prepare_int8(op, graph):
    input_tensor_, filter_tensor = graph[op.inputs[0]], graph[op.inputs[1]]
    output_tensor = graph[op.outputs[0]]
    weight_zero_points_are_zero(filter_tensor, op)
    input_scale, input_zero_point = scale_and_zero_point(input_tensor_, op)
    output_scale, output_offset = scale_and_zero_point(output_tensor, op)
    input_offset = -input_zero_point
    out_c, k_h, k_w, in_c = filter_tensor.shape
    depth = k_h * k_w * in_c
    gemm_dtype = exact_matmul_dtype_for(depth)
    gemm = _integer_gemm(op, graph, gemm_dtype, fill_value=input_zero_point)
    filters = constant_input(op, graph, 1, "filter").astype(np.int64)
    # sum_k w * (x + input_offset) = sum_k w * x + input_offset * sum_k w, folded with the bias.
    constant_term = input_offset * filters.reshape(out_c, -1).sum(axis=1)
    if input_tensor(op, graph, 2) is not None:
        constant_term = constant_term + constant_input(op, graph, 2, "bias").astype(np.int64)
    output_multiplier, output_shift = per_channel_multipliers(
        input_scale, filter_tensor.quant.scale, output_scale, out_c)
    activation_min, activation_max = activation_range(op, output_scale, output_offset)

    if compiled.enabled():
        g = _geometry(op, graph)
        out_h, out_w = g.out_h, g.out_w
        outputs = compiled.OutputBuffers((out_h, out_w, out_c), np.int8)
        constant_term_ = np.ascontiguousarray(constant_term, dtype=np.int64)
        multipliers = np.ascontiguousarray(output_multiplier, dtype=np.int64)
        shifts = np.ascontiguousarray(output_shift, dtype=np.int64)
        requantize_rows = compiled.requantize_rows

        pointwise = k_h == k_w == 1

        def conv_2d_int8_compiled(x, _filters=None, _bias=None):
            # The compiled im2col converts the int8 input itself; a 1x1 GEMM reads it converted.
            acc = gemm(x.astype(gemm_dtype) if pointwise else x)
            out = outputs.get(x.shape[0])
            requantize_rows(acc.reshape(-1, out_c), constant_term_, multipliers, shifts, output_offset,
                            activation_min, activation_max, out.reshape(-1, out_c))
            return out

        return conv_2d_int8_compiled

    def conv_2d_int8(x, _filters=None, _bias=None):
        acc = gemm(x.astype(gemm_dtype)).astype(np.int64)
        acc += constant_term
        scaled = multiply_by_quantized_multiplier(acc, output_multiplier, output_shift)
        return saturate(scaled.astype(np.int64) + output_offset, activation_min, activation_max, np.int8)

    return conv_2d_int8


# -- hybrid (dynamic range): int8 filter, float input and output --------------------------------
# LiteRT quantizes each batch row of the input on the fly. With per-channel filter scales (that
# differ) it uses EvalHybridPerChannel: asymmetric int8 input, acc = sum w * (q - offset) over the
# taps inside the input, out = acc * channel_scale * input_scale + bias. Otherwise EvalHybrid:
# symmetric input, out = bias + acc * (input_scale * filter_scale).

def _prepare_hybrid(op, graph):
    filter_tensor = graph[op.inputs[1]]
    weight_zero_points_are_zero(filter_tensor, op)
    out_c, k_h, k_w, in_c = filter_tensor.shape
    filter_scales = filter_tensor.quant.scale.astype(np.float32)
    per_channel = filter_scales.size > 1 and np.any(filter_scales != filter_scales[0])
    depth = k_h * k_w * in_c
    gemm_dtype = exact_matmul_dtype_for(depth, 256, 128)
    gemm = _integer_gemm(op, graph, gemm_dtype, fill_value=0)
    bias = None
    if input_tensor(op, graph, 2) is not None:
        bias = constant_input(op, graph, 2, "bias").astype(np.float32)
    channel_scales = np.broadcast_to(filter_scales, (out_c,)).astype(np.float32)
    activation = fused_activation(op)

    def conv_2d_hybrid(x, _filters=None, _bias=None):
        n = x.shape[0]
        rows = x.reshape(n, -1)
        if per_channel:
            q, scaling, offsets = asymmetric_quantize_rows(rows)
            q -= offsets[:, None]
        else:
            q, scaling = symmetric_quantize_rows(rows)
        acc = gemm(q.reshape(x.shape).astype(gemm_dtype)).astype(np.float32)
        if per_channel:
            out = acc * channel_scales * scaling[:, None, None, None]
            if bias is not None:
                out += bias
        else:
            out = acc * (scaling * filter_scales[0])[:, None, None, None]
            if bias is not None:
                out = bias + out
        out = out.astype(np.float32, copy=False)
        return activation(out) if activation is not None else out

    return conv_2d_hybrid

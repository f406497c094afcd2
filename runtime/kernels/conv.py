"""CONV_2D: NHWC input, filter [O, KH, KW, I], optional bias [O]; one GEMM per call.

A 1x1 convolution is a matmul over pixels. Any other is im2col + matmul: each filter tap copies
the input pixels it sees into its own column block of a reused [N, OH, OW, KH, KW, C] buffer; the
slices are computed in prepare and cover only positions inside the input, so the entries that fall
on padding stay zero from allocation and no padded copy of the input is ever made.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edgeq.runtime.kernels import check, native_float, native_int8, register
from edgeq.runtime.kernels.buffers import SCRATCH, OutputBuffers
from edgeq.runtime.kernels.common import (
    constant_input,
    float_activation_bounds,
    fused_activation,
    input_tensor,
    require_float,
    strided_overlap,
)
from edgeq.runtime.padding import explicit_output_size, output_and_padding
from edgeq.runtime.fixedpoint import multiply_by_quantized_multiplier
from edgeq.runtime.kernels.requantize import (
    check_quantized_tensors,
    activation_range,
    asymmetric_quantize_rows,
    exact_float32_chunks,
    exact_gemm,
    exact_gemm_dtype,
    exact_matmul_dtype_for,
    fold_requantization,
    folded_requantizer,
    int16_bias,
    int16x8_requantizer,
    per_channel_multipliers,
    saturate,
    scale_and_zero_point,
    symmetric_quantize_rows,
    weight_zero_points_are_zero,
)
from edgeq.runtime.ir import ModelError
from edgeq.runtime.threads import matmul

# Larger batches are run in chunks so the im2col buffer stays around this size.
IM2COL_BUDGET_BYTES = 32 << 20
# Float layers whose weights are copied to a contiguous GEMM operand: at most this many output
# pixels per sample and weights (so the copies add little memory).
SMALL_GEMM_ROWS = 784
SMALL_GEMM_WEIGHTS = 1 << 20


@check("CONV_2D")
def check_conv_2d(op, graph):
    in_c, filter_c = graph[op.inputs[0]].shape[-1], graph[op.inputs[1]].shape[-1]
    if filter_c != in_c:
        raise ModelError(f"filter depth {filter_c} differs from input depth {in_c}: grouped CONV_2D is not supported")
    check_quantized_tensors(op, graph)


@register("CONV_2D")
def prepare_conv_2d(op, graph):
    input_dtype, filter_dtype = graph[op.inputs[0]].dtype, graph[op.inputs[1]].dtype
    if input_dtype == np.int8:
        return _prepare_int8(op, graph)
    if input_dtype == np.int16:
        return _prepare_int16x8(op, graph)
    if input_dtype == np.float32 and filter_dtype == np.int8:
        return _prepare_hybrid(op, graph)
    require_float(op, graph)
    return _prepare_float(op, graph)


def _prepare_float(op, graph):
    g = _geometry(op, graph)
    in_c, out_c, k_h, k_w, out_h, out_w = g.in_c, g.out_c, g.k_h, g.k_w, g.out_h, g.out_w
    filters = _aligned(constant_input(op, graph, 1, "filter").astype(np.float32, copy=False))
    # Rows of the GEMM's right operand follow the im2col column order (kh, kw, c). A transposed
    # view: BLAS reads it as is, so the filter is not copied (the model's buffer is its only copy),
    # except for small layers with few output pixels, where OpenBLAS multiplies a contiguous
    # [depth, out_c] operand 15-30% faster (7x7 and 14x14 layers of MobileNetV2/ResNet-50).
    weights = filters.reshape(out_c, -1).T
    bias = _bias(op, graph, out_c)
    # The native GEMM packs its own copy of the weights: only for layers small enough that the copy
    # costs little (the same budget as BLAS's contiguous copies).
    native_gemm = None
    patches = _pointwise_patches(g, np.float32)
    if weights.size <= SMALL_GEMM_WEIGHTS:
        if patches is None:  # im2col, a band of pixels at a time inside the native kernel
            native_conv = native_float.conv(g, filters, bias, float_activation_bounds(op))
            if native_conv is not None:
                return native_conv
        native_gemm = native_float.gemm(filters.reshape(out_c, -1), bias, float_activation_bounds(op))
    if native_gemm is None and out_h * out_w <= SMALL_GEMM_ROWS and weights.size <= SMALL_GEMM_WEIGHTS:
        weights = np.ascontiguousarray(weights)
    epilogue = _float_epilogue(bias, op)
    patch = k_h * k_w * in_c
    chunk = max(1, IM2COL_BUDGET_BYTES // (out_h * out_w * patch * 4))
    if patches is None:
        patches = _im2col_for(g, 0.0, np.float32)
    outputs = OutputBuffers((out_h * out_w, out_c), np.float32)
    rows_per_sample = out_h * out_w
    if native_gemm is not None:
        def conv_2d_native(x, _filters=None, _bias=None):
            n = x.shape[0]
            out = outputs.get(n).reshape(n * rows_per_sample, out_c)
            for start in range(0, n, chunk):
                part = x[start:start + chunk]
                native_gemm(patches(part), out[start * rows_per_sample:(start + part.shape[0]) * rows_per_sample])
            return out.reshape(n, out_h, out_w, out_c)

        return conv_2d_native

    def conv_2d(x, _filters=None, _bias=None):
        n = x.shape[0]
        out = outputs.get(n).reshape(n * rows_per_sample, out_c)
        if n <= chunk:
            matmul(patches(x), weights, out)
        else:
            for start in range(0, n, chunk):
                part = x[start:start + chunk]
                matmul(patches(part), weights, out[start * rows_per_sample:(start + part.shape[0]) * rows_per_sample])
        epilogue(out)
        return out.reshape(n, out_h, out_w, out_c)

    return conv_2d


def _float_epilogue(bias, op):
    """epilogue(out [rows, out_c]) in place: + bias, then the fused activation. One native pass
    when the activation is a clamp; otherwise numpy's in-place add and activation."""
    native_epilogue = native_float.bias_activation(bias, float_activation_bounds(op))
    if native_epilogue is not None:
        return native_epilogue
    activation = fused_activation(op)

    def epilogue(out):
        if bias is not None:
            np.add(out, bias, out=out)
        if activation is not None:
            activation(out)
        return out

    return epilogue


def _pointwise_patches(g, dtype):
    """For a 1x1 convolution without padding: patches(x) -> the GEMM's [N * OH * OW, C] left operand,
    a view of x when it already is one (float32 requested, stride 1), else x's pixels converted or
    picked by the stride into a buffer; None for any other convolution."""
    # Padding on any side (a folded PAD may pad only the bottom/right) makes the output outgrow the
    # strided input: the general path handles it.
    unpadded = (g.pad_top == g.pad_left == 0 and g.out_h == (g.in_h - 1) // g.stride_h + 1
                and g.out_w == (g.in_w - 1) // g.stride_w + 1)
    if not (g.k_h == g.k_w == 1 and unpadded):
        return None
    in_c, out_h, out_w, stride_h, stride_w = g.in_c, g.out_h, g.out_w, g.stride_h, g.stride_w
    strided = stride_h > 1 or stride_w > 1
    if not strided and dtype == np.float32:
        return lambda x: x.reshape(-1, in_c)

    def pointwise_patches(x):
        n = x.shape[0]
        columns = SCRATCH.get("patches", (n, out_h, out_w, in_c), dtype)
        np.copyto(columns, x[:, ::stride_h, ::stride_w, :][:, :out_h, :out_w] if strided else x, casting="unsafe")
        return columns.reshape(n * out_h * out_w, in_c)

    return pointwise_patches


def _tap_im2col(g, fill=0, dtype=np.float32):
    """im2col(x) -> [N * OH * OW, KH * KW * C] columns in shared scratch: per filter tap, one
    strided numpy copy of the input pixels it sees and a fill of the (thin) padding strips it does
    not. With a few dozen channels or more this beats a per-element loop (3-4x for ResNet-50's 3x3
    layers), since each copy moves whole channel vectors."""
    out_h, out_w, k_h, k_w, in_c = g.out_h, g.out_w, g.k_h, g.k_w, g.in_c
    inside = {(ky, kx): (rows, cols) for ky, kx, rows, cols in g.taps}
    padding_strips = []  # (out row slice, out col slice, ky, kx) that read no input
    for ky in range(k_h):
        for kx in range(k_w):
            if (ky, kx) not in inside:
                padding_strips.append((slice(None), slice(None), ky, kx))
                continue
            (out_rows, _), (out_cols, _) = inside[(ky, kx)]
            strips = [(slice(0, out_rows.start), slice(None)), (slice(out_rows.stop, out_h), slice(None)),
                      (out_rows, slice(0, out_cols.start)), (out_rows, slice(out_cols.stop, out_w))]
            padding_strips += [(rows, cols, ky, kx) for rows, cols in strips
                               if len(range(*rows.indices(out_h))) and len(range(*cols.indices(out_w)))]
    taps = g.taps
    shape_tail = (out_h, out_w, k_h, k_w, in_c)
    scratch = SCRATCH

    def im2col(x):
        n = x.shape[0]
        columns = scratch.get("patches", (n,) + shape_tail, dtype)
        for rows, cols, ky, kx in padding_strips:
            columns[:, rows, cols, ky, kx, :] = fill
        return _patches(x, columns, taps)

    return im2col


def _own_buffer_im2col(g, fill, dtype):
    """im2col(x) for a small layer on the numpy path: columns in a buffer of this op's own (small),
    whose padding entries keep ``fill`` from allocation, so only the taps inside are copied."""
    shape_tail = (g.out_h, g.out_w, g.k_h, g.k_w, g.in_c)
    taps = g.taps
    column_buffers = {}

    def im2col(x):
        n = x.shape[0]
        columns = column_buffers.get(n)
        if columns is None:
            columns = column_buffers[n] = np.full((n,) + shape_tail, fill, dtype)
        return _patches(x, columns, taps)

    return im2col


def im2col(x, op, graph, dtype=np.float32):
    """The input ``x`` [N, H, W, C] of the CONV_2D ``op`` of ``graph`` as the patches its GEMM
    multiplies: [N * OH * OW, KH * KW * C] of ``dtype``, columns in the filter's (kh, kw, c) order,
    zero where a tap falls on padding; so ``im2col(x, op, graph) @ filter.reshape(O, -1).T + bias`` is
    the convolution before its fused activation. A new array on every call (the kernel's own
    patches live in buffers it reuses), so several may be held at once."""
    g = _geometry(op, graph)
    x = x.astype(dtype)  # one contiguous conversion: the strided copies below then only move values
    pointwise = g.k_h == g.k_w == g.stride_h == g.stride_w == 1 and g.pad_top == g.pad_left == 0
    if pointwise and (g.out_h, g.out_w) == (g.in_h, g.in_w):  # the input pixels are the patches
        return x.reshape(-1, g.in_c)
    # np.zeros: fresh zeroed pages cost nothing to fill, and only the taps inside are copied.
    columns = np.zeros((x.shape[0], g.out_h, g.out_w, g.k_h, g.k_w, g.in_c), dtype)
    return _patches(x, columns, g.taps)


def _window_im2col(g, fill=0, dtype=np.float32):
    """im2col(x) for few channels and no dilation: x is copied once into a padded scratch array,
    where each window row (KW * C values) is contiguous, so one strided view [N, OH, OW, KH, KW * C]
    of it is the whole column matrix and one copy fills it (2-4x faster than per-tap copies of 3 channels, e.g. the RGB stems of ResNet-50 and MobileNetV2)."""
    in_h, in_w = g.in_h, g.in_w
    out_h, out_w, k_h, k_w, in_c = g.out_h, g.out_w, g.k_h, g.k_w, g.in_c
    stride_h, stride_w, pad_top, pad_left = g.stride_h, g.stride_w, g.pad_top, g.pad_left
    padded_h = max((out_h - 1) * stride_h + k_h, pad_top + in_h)
    padded_w = max((out_w - 1) * stride_w + k_w, pad_left + in_w)
    bottom, right = pad_top + in_h, pad_left + in_w
    scratch = SCRATCH

    def im2col(x):
        n = x.shape[0]
        padded = scratch.get("padded_input", (n, padded_h, padded_w, in_c), dtype)
        padded[:, :pad_top] = fill
        padded[:, bottom:] = fill
        padded[:, pad_top:bottom, :pad_left] = fill
        padded[:, pad_top:bottom, right:] = fill
        padded[:, pad_top:bottom, pad_left:right] = x
        sample, row, pixel, _ = padded.strides
        # np.ndarray over the buffer: what as_strided makes, in a tenth of its time.
        windows = np.ndarray((n, out_h, out_w, k_h, k_w * in_c), padded.dtype, padded, 0,
                             (sample, stride_h * row, stride_w * pixel, row, padded.itemsize))
        columns = scratch.get("patches", (n, out_h, out_w, k_h, k_w * in_c), dtype)
        np.copyto(columns, windows)
        return columns.reshape(n * out_h * out_w, k_h * k_w * in_c)

    return im2col


# From this many input channels on, per-tap copies move long enough runs to beat one padded copy
# plus strided windows.
TAP_IM2COL_MIN_CHANNELS = 16
# Below this many column entries per sample the numpy copies' fixed cost (a few microseconds per
# slice) outweighs the work: a buffer of the op's own keeps its padding entries instead.
SMALL_IM2COL_ENTRIES = 32768


def _im2col_for(g, fill, dtype):
    if dtype == np.float32:
        native_im2col = native_float.im2col(g, fill)  # one pass in C, whatever the shape
        if native_im2col is not None:
            return native_im2col
    entries = g.out_h * g.out_w * g.k_h * g.k_w * g.in_c
    if entries < SMALL_IM2COL_ENTRIES:
        return _own_buffer_im2col(g, fill, dtype)
    if g.in_c >= TAP_IM2COL_MIN_CHANNELS or g.dil_h != 1 or g.dil_w != 1:
        return _tap_im2col(g, fill, dtype)
    return _window_im2col(g, fill, dtype)


def _aligned(array):
    """``array``, copied only if its data is not aligned for its dtype (BLAS needs aligned data)."""
    return array if array.flags.aligned else array.copy()


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
    in_h: int
    in_w: int
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
    options = op.options
    stride_h, stride_w = options.get("stride_h", 1), options.get("stride_w", 1)
    dil_h, dil_w = options.get("dilation_h_factor", 1), options.get("dilation_w_factor", 1)
    explicit = options.get("explicit_padding")
    if explicit is not None:  # (top, bottom, left, right): a PAD the interpreter folded in
        pad_top, pad_bottom, pad_left, pad_right = explicit
        out_h = explicit_output_size(in_h, pad_top, pad_bottom, k_h, stride_h, dil_h)
        out_w = explicit_output_size(in_w, pad_left, pad_right, k_w, stride_w, dil_w)
    else:
        padding = options.get("padding", "SAME")
        out_h, pad_top, _ = output_and_padding(padding, in_h, k_h, stride_h, dil_h)
        out_w, pad_left, _ = output_and_padding(padding, in_w, k_w, stride_w, dil_w)
    taps = []
    for ky in range(k_h):
        rows = strided_overlap(ky * dil_h - pad_top, stride_h, out_h, in_h)
        for kx in range(k_w):
            cols = strided_overlap(kx * dil_w - pad_left, stride_w, out_w, in_w)
            if rows is not None and cols is not None:
                taps.append((ky, kx, rows, cols))
    return ConvGeometry(in_h, in_w, in_c, out_c, k_h, k_w, out_h, out_w, stride_h, stride_w, dil_h, dil_w,
                        pad_top, pad_left, taps)


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
    in_c, out_c, k_h, k_w = g.in_c, g.out_c, g.k_h, g.k_w
    out_h, out_w, stride_h, stride_w = g.out_h, g.out_w, g.stride_h, g.stride_w
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


def _prepare_int8(op, graph):
    input_tensor_, filter_tensor = graph[op.inputs[0]], graph[op.inputs[1]]
    output_tensor = graph[op.outputs[0]]
    weight_zero_points_are_zero(filter_tensor, op)
    input_scale, input_zero_point = scale_and_zero_point(input_tensor_, op)
    output_scale, output_offset = scale_and_zero_point(output_tensor, op)
    input_offset = -input_zero_point
    g = _geometry(op, graph)
    out_c, out_h, out_w = g.out_c, g.out_h, g.out_w
    raw_filters = constant_input(op, graph, 1, "filter")
    bias = constant_input(op, graph, 2, "bias").astype(np.int64) if input_tensor(op, graph, 2) is not None else None
    output_multiplier, output_shift = per_channel_multipliers(
        input_scale, filter_tensor.quant.scale, output_scale, out_c)
    activation_min, activation_max = activation_range(op, output_scale, output_offset)
    native_conv = native_int8.prepare_conv(g, raw_filters, bias, input_zero_point, output_multiplier, output_shift,
                                           output_offset, activation_min, activation_max)
    if native_conv is not None:
        return native_conv
    filters = raw_filters.astype(np.int64).reshape(out_c, -1)
    # The GEMM multiplies raw int8 inputs (|x| <= 128; padding holds the zero point, also int8).
    chunks = exact_float32_chunks(filters, 128)
    gemm = exact_gemm(np.ascontiguousarray(filters.T, dtype=np.float32), chunks)
    accumulator_dtype = exact_gemm_dtype(chunks)
    accumulator_bound = 128 * int(np.abs(filters).sum(axis=1).max(initial=0))
    # sum_k w * (x + input_offset) = sum_k w * x + input_offset * sum_k w, folded with the bias.
    constant_term = input_offset * filters.sum(axis=1)
    if bias is not None:
        constant_term = constant_term + bias
    requantize = _per_channel_requantizer(constant_term, output_multiplier, output_shift, output_offset,
                                          activation_min, activation_max, accumulator_bound)

    patches = _pointwise_patches(g, np.float32)
    if patches is None:
        patches = _im2col_for(g, input_zero_point, np.float32)
    rows_per_sample = out_h * out_w
    chunk = max(1, IM2COL_BUDGET_BYTES // (rows_per_sample * g.k_h * g.k_w * g.in_c * 4))
    outputs = OutputBuffers((out_h, out_w, out_c), np.int8)
    scratch = SCRATCH

    def conv_2d_int8(x, _filters=None, _bias=None):
        n = x.shape[0]
        acc = scratch.get("accumulators", (n * rows_per_sample, out_c), accumulator_dtype)
        if n <= chunk:
            gemm(patches(x), acc)
        else:
            for start in range(0, n, chunk):
                part = x[start:start + chunk]
                gemm(patches(part), acc[start * rows_per_sample:(start + part.shape[0]) * rows_per_sample])
        out = outputs.get(n)
        requantize(acc, out.reshape(n * rows_per_sample, out_c))
        return out

    return conv_2d_int8


def _per_channel_requantizer(constant_term, multipliers, shifts, output_offset, low, high, accumulator_bound):
    """requantize(acc [rows, C] exact integers, out int8 [rows, C]): TFLite's per-channel
    MultiplyByQuantizedMultiplier of acc + constant_term, + output_offset, clamped to [low, high].
    The folded form (requantize.fold_requantization) whenever the accumulators' bound allows it; the
    general fixed-point functions otherwise."""
    folded = fold_requantization(constant_term, multipliers, shifts, output_offset, accumulator_bound)
    if folded is not None:
        return folded_requantizer(folded, low, high)

    def requantize(acc, out):
        scaled = multiply_by_quantized_multiplier(acc.astype(np.int64) + constant_term, multipliers, shifts)
        out[...] = saturate(scaled.astype(np.int64) + output_offset, low, high, np.int8)
        return out

    return requantize


# -- 16x8: int16 input and output (zero point 0), int8 filter, int64 bias ---------------------------
# reference_integer_ops::ConvPerChannel (int16 overload): acc = sum w * x (int64) over the taps inside the
# input, + bias, then MultiplyByQuantizedMultiplier's int64 overload per channel, clamped. int16 x int8
# products summed over any real depth stay far below 2^53, so a float64 GEMM gives acc exactly.

def _prepare_int16x8(op, graph):
    filter_tensor = graph[op.inputs[1]]
    weight_zero_points_are_zero(filter_tensor, op)
    input_scale, _ = scale_and_zero_point(graph[op.inputs[0]], op)
    g = _geometry(op, graph)
    out_c, out_h, out_w = g.out_c, g.out_h, g.out_w
    weights = np.ascontiguousarray(constant_input(op, graph, 1, "filter").astype(np.float64).reshape(out_c, -1).T)
    bias = int16_bias(op, graph, 2, out_c)
    requantize = int16x8_requantizer(op, graph, input_scale, filter_tensor.quant.scale, out_c)

    def conv_2d_int16x8(x, _filters=None, _bias=None):
        acc = (im2col(x, op, graph, np.float64) @ weights).astype(np.int64)
        if bias is not None:
            acc += bias
        return requantize(acc).reshape(x.shape[0], out_h, out_w, out_c)

    return conv_2d_int16x8


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

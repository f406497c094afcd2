"""The int8 CONV_2D, FULLY_CONNECTED and DEPTHWISE_CONV_2D kernels on the native library
(runtime.native): prepare packs the weights once and folds every constant (bias, both zero points,
the requantization) into the output stage; eval is one call. Each ``prepare_*`` returns None when the
native path does not apply (library absent or off, or a bound the int32 accumulators or the folded
int64 form cannot meet), and the kernel module goes on with its numpy path, which gives the same
integers.
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime import native
from edgeq.runtime.native import GeometryPerBatch
from edgeq.runtime.kernels.buffers import OutputBuffers
from edgeq.runtime.kernels.requantize import fold_requantization

INT32_LIMIT = 2**31


def _accumulators_fit(abs_weight_sums, shift: int) -> bool:
    """Whether |sum (x + shift) * w| stays below 2^31 for int8 x (the kernels accumulate in int32)."""
    return (128 + shift) * int(np.max(abs_weight_sums, initial=0)) < INT32_LIMIT


def _weight_sums(weights):
    """(sum, sum of |w|) per row of int8 weights [rows, depth], as int64, through int16 rows a block at a
    time: an int64 copy of a large layer's weights (8 bytes each) is what set the peak memory of prepare."""
    weight_sums = np.empty(weights.shape[0], np.int64)
    abs_sums = np.empty(weights.shape[0], np.int64)
    block = max(1, (1 << 20) // max(1, weights.shape[1]))
    for start in range(0, weights.shape[0], block):
        rows = weights[start:start + block].astype(np.int16)
        weight_sums[start:start + block] = rows.sum(axis=1, dtype=np.int64)
        abs_sums[start:start + block] = np.abs(rows).sum(axis=1, dtype=np.int64)
    return weight_sums, abs_sums


def _shifted_folded_stage(folded, weight_sums, shift, low, high):
    # The kernel's accumulator is sum (x + shift) * w = acc + shift * sum w: subtract the surplus in
    # the folded bias. |shift * sum w * M'| <= the bound fold_requantization checked (< 2^62).
    bias_term = folded.bias_term - np.int64(shift) * weight_sums * folded.scaled_multiplier
    return native.folded_stage(folded._replace(bias_term=bias_term), low, high)


def prepare_conv(g, filters, bias, input_zero_point, multipliers, shifts, output_offset, low, high):
    """CONV_2D (reference ConvPerChannel) for conv.ConvGeometry ``g``; ``filters`` int8 [O, KH, KW, I]."""
    isa = native.isa()
    if isa is None:
        return None
    weights = np.ascontiguousarray(filters, dtype=np.int8).reshape(g.out_c, -1)
    weight_sums, abs_sums = _weight_sums(weights)
    shift = native.input_shift(isa)
    if not _accumulators_fit(abs_sums, shift):
        return None
    constant_term = -int(input_zero_point) * weight_sums
    if bias is not None:
        constant_term = constant_term + bias
    folded = fold_requantization(constant_term, multipliers, shifts, output_offset,
                                 128 * int(abs_sums.max(initial=0)))
    if folded is None:
        return None
    stage = _shifted_folded_stage(folded, weight_sums, shift, low, high)
    packed = native.pack_weights(weights)
    geometries = GeometryPerBatch(in_h=g.in_h, in_w=g.in_w, in_c=g.in_c, out_h=g.out_h, out_w=g.out_w, out_c=g.out_c,
                                  k_h=g.k_h, k_w=g.k_w, stride_h=g.stride_h, stride_w=g.stride_w, dil_h=g.dil_h,
                                  dil_w=g.dil_w, pad_top=g.pad_top, pad_left=g.pad_left,
                                  input_zero_point=input_zero_point)
    outputs = OutputBuffers((g.out_h, g.out_w, g.out_c), np.int8)
    conv = native.conv

    def conv_2d_int8_native(x, _filters=None, _bias=None):
        n = x.shape[0]
        return conv(isa, geometries.get(n), np.ascontiguousarray(x), packed, stage, outputs.get(n))

    return conv_2d_int8_native


def prepare_fully_connected(weights, bias, input_zero_point, effective_scale, output_offset, low, high,
                            output_shape):
    """FULLY_CONNECTED (reference int8, one rounding from the float scale); ``weights`` int8 [O, I]
    with zero point 0; ``output_shape(x)`` gives the output's shape for an input x."""
    isa = native.isa()
    if isa is None:
        return None
    weights = np.ascontiguousarray(weights, dtype=np.int8)
    out_c, in_c = weights.shape
    weight_sums, abs_sums = _weight_sums(weights)
    shift = native.input_shift(isa)
    if not _accumulators_fit(abs_sums, shift):
        return None
    constant_term = -int(input_zero_point) * weight_sums - shift * weight_sums
    if bias is not None:
        constant_term = constant_term + bias
    stage = native.float_scale_stage(constant_term, np.broadcast_to(effective_scale, (out_c,)), output_offset,
                                     low, high)
    packed = native.pack_weights(weights)
    geometries = {}
    outputs = OutputBuffers((out_c,), np.int8)
    conv = native.conv

    def fully_connected_int8_native(x, _weights=None, _bias=None):
        rows = x.size // in_c
        geometry = geometries.get(rows)
        if geometry is None:  # rows pixels of a 1 x rows image, a 1x1 convolution
            geometry = geometries[rows] = native.conv_geometry(
                batch=1, in_h=1, in_w=rows, in_c=in_c, out_h=1, out_w=rows, out_c=out_c, k_h=1, k_w=1,
                stride_h=1, stride_w=1, dil_h=1, dil_w=1, pad_top=0, pad_left=0, input_zero_point=input_zero_point)
        out = conv(isa, geometry, np.ascontiguousarray(x), packed, stage, outputs.get(rows))
        return out.reshape(output_shape(x))

    return fully_connected_int8_native


def prepare_depthwise(in_shape, filters, bias, input_zero_point, multipliers, shifts, output_offset, low, high,
                      options, out_h, out_w, pad_top, pad_left):
    """DEPTHWISE_CONV_2D (reference DepthwiseConvPerChannel); ``filters`` int8 [1, KH, KW, C*M]."""
    isa = native.isa()
    if isa is None:
        return None
    _, in_h, in_w, in_c = in_shape
    _, k_h, k_w, out_c = filters.shape
    if in_c == 0 or out_c % in_c:
        return None  # the numpy path reports the bad filter depth
    multiplier = out_c // in_c
    geometries = GeometryPerBatch(
        in_h=in_h, in_w=in_w, in_c=in_c, out_h=out_h, out_w=out_w, out_c=out_c, k_h=k_h, k_w=k_w,
        stride_h=options.get("stride_h", 1), stride_w=options.get("stride_w", 1),
        dil_h=options.get("dilation_h_factor", 1), dil_w=options.get("dilation_w_factor", 1),
        pad_top=pad_top, pad_left=pad_left, input_zero_point=input_zero_point)
    outputs = OutputBuffers((out_h, out_w, out_c), np.int8)
    if multiplier == 1:
        paired = _prepare_depthwise_pairs(isa, filters[0].reshape(k_h * k_w, out_c), bias, input_zero_point,
                                          multipliers, shifts, output_offset, low, high, geometries, outputs)
        if paired is not None:
            return paired
    taps = np.ascontiguousarray(filters[0], dtype=np.int16)
    abs_sums = np.abs(taps.astype(np.int64)).reshape(-1, out_c).sum(axis=0)
    # |x - input_zero_point| <= 255
    if 255 * int(abs_sums.max(initial=0)) >= INT32_LIMIT:
        return None
    constant_term = bias if bias is not None else np.zeros(out_c, np.int64)
    folded = fold_requantization(constant_term, multipliers, shifts, output_offset, 255 * int(abs_sums.max(initial=0)))
    if folded is None:
        return None
    stage = native.folded_stage(folded, low, high)
    depthwise = native.depthwise

    def depthwise_conv_2d_int8_native(x, _filters=None, _bias=None):
        n = x.shape[0]
        return depthwise(isa, geometries.get(n), multiplier, np.ascontiguousarray(x), taps, stage, outputs.get(n))

    return depthwise_conv_2d_int8_native


def _prepare_depthwise_pairs(isa, taps, bias, input_zero_point, multipliers, shifts, output_offset, low, high,
                             geometries, outputs):
    """The tap-pair kernel (depth multiplier 1; x86-64's vector variants and aarch64's NEON ones): every tap
    is read, those outside the input from a row of the zero point, so the bias takes
    -input_zero_point * sum(weights) once."""
    packed = native.pack_depthwise_pairs(isa, taps)
    if packed is None:
        return None
    wide = taps.astype(np.int64)
    weight_sums, abs_sums = wide.sum(axis=0), np.abs(wide).sum(axis=0)
    if 128 * int(abs_sums.max(initial=0)) >= INT32_LIMIT:  # int8 x, not x - zero point, accumulates
        return None
    constant_term = -int(input_zero_point) * weight_sums
    if bias is not None:
        constant_term = constant_term + bias
    folded = fold_requantization(constant_term, multipliers, shifts, output_offset, 128 * int(abs_sums.max(initial=0)))
    if folded is None:
        return None
    stage = native.folded_stage(folded, low, high)
    depthwise_pairs = native.depthwise_pairs

    def depthwise_conv_2d_int8_pairs_native(x, _filters=None, _bias=None):
        n = x.shape[0]
        return depthwise_pairs(isa, geometries.get(n), np.ascontiguousarray(x), packed, stage, outputs.get(n))

    return depthwise_conv_2d_int8_pairs_native

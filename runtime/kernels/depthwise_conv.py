"""DEPTHWISE_CONV_2D: filter [1, KH, KW, C*M]; output channel c*M+m reads input channel c."""
from __future__ import annotations

import numpy as np

from runtime.kernels import register
from runtime.kernels.common import (
    compute_padding,
    constant_input,
    fused_activation,
    input_tensor,
    require_float,
    with_activation,
)
from runtime.model import ModelError


@register("DEPTHWISE_CONV_2D")
def prepare_depthwise_conv_2d(op, graph):
    require_float(op, graph)
    return _prepare_float(op, graph)


def _prepare_float(op, graph):
    _, in_h, in_w, in_c = graph[op.inputs[0]].shape
    filters = constant_input(op, graph, 1, "filter").astype(np.float32)
    _, k_h, k_w, out_c = filters.shape
    if out_c % in_c:
        raise ModelError(f"op {op}: filter depth {out_c} is not a multiple of input depth {in_c}")
    multiplier = out_c // in_c
    bias = None
    if input_tensor(op, graph, 2) is not None:
        bias = constant_input(op, graph, 2, "bias").astype(np.float32)
    options = op.options
    stride_h, stride_w = options.get("stride_h", 1), options.get("stride_w", 1)
    dil_h, dil_w = options.get("dilation_h_factor", 1), options.get("dilation_w_factor", 1)
    padding = options.get("padding", "SAME")
    out_h, pad_top, pad_bottom = compute_padding(padding, in_h, k_h, stride_h, dil_h)
    out_w, pad_left, pad_right = compute_padding(padding, in_w, k_w, stride_w, dil_w)
    padded_h, padded_w = in_h + pad_top + pad_bottom, in_w + pad_left + pad_right
    rows_span, cols_span = (out_h - 1) * stride_h + 1, (out_w - 1) * stride_w + 1
    # One (row slice, col slice, weight vector) per filter tap, all fixed by the model.
    taps = []
    for ky in range(k_h):
        for kx in range(k_w):
            y0, x0 = ky * dil_h, kx * dil_w
            taps.append((slice(y0, y0 + rows_span, stride_h), slice(x0, x0 + cols_span, stride_w),
                         filters[0, ky, kx].copy()))
    needs_padding = pad_top or pad_bottom or pad_left or pad_right
    buffers = {}

    def padded_input(x):
        n = x.shape[0]
        if multiplier > 1:
            x = np.repeat(x, multiplier, axis=3)
        if not needs_padding:
            return x
        buffer = buffers.get(n)
        if buffer is None:
            buffer = buffers[n] = np.zeros((n, padded_h, padded_w, out_c), np.float32)
        buffer[:, pad_top:pad_top + in_h, pad_left:pad_left + in_w, :] = x
        return buffer

    first_rows, first_cols, first_weights = taps[0]
    other_taps = taps[1:]

    def depthwise_conv_2d(x, _filters=None, _bias=None):
        source = padded_input(x)
        acc = source[:, first_rows, first_cols, :] * first_weights
        product = np.empty_like(acc)
        for rows, cols, weights in other_taps:
            np.multiply(source[:, rows, cols, :], weights, out=product)
            acc += product
        if bias is not None:
            acc += bias
        return acc

    return with_activation(depthwise_conv_2d, fused_activation(op))

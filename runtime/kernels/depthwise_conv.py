"""DEPTHWISE_CONV_2D: filter [1, KH, KW, C*M]; output channel c*M+m reads input channel c.

Eval is a sum of KH*KW shifted multiply-adds. Each tap is read as a [N, OH, OW*C] view whose rows
are contiguous (the padded input is split into ``stride_w`` column phases first), so numpy's inner
loop runs over whole rows instead of C channels; the per-tap weights are tiled to a row in prepare.
"""
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
    options = op.options
    stride_h, stride_w = options.get("stride_h", 1), options.get("stride_w", 1)
    dil_h, dil_w = options.get("dilation_h_factor", 1), options.get("dilation_w_factor", 1)
    padding = options.get("padding", "SAME")
    out_h, pad_top, pad_bottom = compute_padding(padding, in_h, k_h, stride_h, dil_h)
    out_w, pad_left, pad_right = compute_padding(padding, in_w, k_w, stride_w, dil_w)
    padded_h = in_h + pad_top + pad_bottom
    # Width rounded up to whole phases; the extra columns are never read by a tap.
    padded_w = -(-(in_w + pad_left + pad_right) // stride_w) * stride_w
    row_len = out_w * out_c

    taps = []
    for ky in range(k_h):
        rows = slice(ky * dil_h, ky * dil_h + (out_h - 1) * stride_h + 1, stride_h)
        for kx in range(k_w):
            phase, offset = divmod(kx * dil_w, stride_w)[::-1]
            cols = slice(offset * out_c, offset * out_c + row_len)
            taps.append((phase, rows, cols, np.tile(filters[0, ky, kx], out_w)))
    bias = None
    if input_tensor(op, graph, 2) is not None:
        bias = np.tile(constant_input(op, graph, 2, "bias").astype(np.float32), out_w)

    needs_copy = (pad_top or pad_bottom or pad_left or pad_right or padded_w != in_w)
    buffers = {}

    def phases(x):
        """The padded input as ``stride_w`` arrays [N, padded_h, (padded_w/stride_w)*C]."""
        n = x.shape[0]
        if multiplier > 1:
            x = np.repeat(x, multiplier, axis=3)
        if needs_copy:
            padded = buffers.get(n)
            if padded is None:
                padded = buffers[n] = np.zeros((n, padded_h, padded_w, out_c), np.float32)
            padded[:, pad_top:pad_top + in_h, pad_left:pad_left + in_w, :] = x
            x = padded
        if stride_w == 1:
            return (x.reshape(n, padded_h, -1),)
        return tuple(np.ascontiguousarray(x[:, :, p::stride_w, :]).reshape(n, padded_h, -1)
                     for p in range(stride_w))

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

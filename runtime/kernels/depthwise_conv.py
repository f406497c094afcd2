"""DEPTHWISE_CONV_2D: filter [1, KH, KW, C*M]; output channel c*M+m reads input channel c.

Eval is a sum of KH*KW shifted multiply-adds. Each tap is read as a [N, OH, OW*C] view whose rows
are contiguous (``padded_column_phases``), so numpy's inner loop runs over whole rows instead of C
channels; the per-tap weights are tiled to a row in prepare.
"""
from __future__ import annotations

import numpy as np

from runtime.kernels import register
from runtime.kernels.common import (
    compute_padding,
    constant_input,
    fused_activation,
    input_tensor,
    padded_column_phases,
    require_float,
    window_taps,
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
    taps = [(phase, rows, cols, np.tile(filters[0, ky, kx], out_w))
            for ky, kx, phase, rows, cols in window_taps(k_h, k_w, stride_h, stride_w, dil_h, dil_w,
                                                          out_h, out_w, out_c)]
    bias = None
    if input_tensor(op, graph, 2) is not None:
        bias = np.tile(constant_input(op, graph, 2, "bias").astype(np.float32), out_w)
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

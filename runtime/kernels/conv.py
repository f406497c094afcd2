"""CONV_2D: NHWC input, filter [O, KH, KW, I], optional bias [O]; one GEMM per call."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

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


@register("CONV_2D")
def prepare_conv_2d(op, graph):
    require_float(op, graph)
    return _prepare_float(op, graph)


def _prepare_float(op, graph):
    _, in_h, in_w, in_c = graph[op.inputs[0]].shape
    filters = constant_input(op, graph, 1, "filter").astype(np.float32)
    out_c, k_h, k_w, filter_c = filters.shape
    if filter_c != in_c:
        raise ModelError(f"op {op}: filter depth {filter_c} differs from input depth {in_c} (grouped conv)")
    bias = _bias(op, graph, out_c)
    options = op.options
    stride_h, stride_w = options.get("stride_h", 1), options.get("stride_w", 1)
    dil_h, dil_w = options.get("dilation_h_factor", 1), options.get("dilation_w_factor", 1)
    padding = options.get("padding", "SAME")
    out_h, pad_top, pad_bottom = compute_padding(padding, in_h, k_h, stride_h, dil_h)
    out_w, pad_left, pad_right = compute_padding(padding, in_w, k_w, stride_w, dil_w)
    # Rows of the GEMM's right operand follow the im2col column order (kh, kw, c).
    weights = np.ascontiguousarray(filters.reshape(out_c, -1).T)
    activation = fused_activation(op)

    if k_h == k_w == 1 and stride_h == stride_w == 1:
        return with_activation(_pointwise(weights, bias, out_c), activation)

    padded_for_batch = {}

    def padded(x):
        n = x.shape[0]
        buffer = padded_for_batch.get(n)
        if buffer is None:
            buffer = np.zeros((n, in_h + pad_top + pad_bottom, in_w + pad_left + pad_right, in_c), np.float32)
            padded_for_batch[n] = buffer
        buffer[:, pad_top:pad_top + in_h, pad_left:pad_left + in_w, :] = x
        return buffer

    needs_padding = pad_top or pad_bottom or pad_left or pad_right
    eff_h, eff_w = (k_h - 1) * dil_h + 1, (k_w - 1) * dil_w + 1
    rows_end, cols_end = (out_h - 1) * stride_h + 1, (out_w - 1) * stride_w + 1

    def conv_2d(x, _filters=None, _bias=None):
        source = padded(x) if needs_padding else x
        windows = sliding_window_view(source, (eff_h, eff_w), axis=(1, 2))
        # [N, OH, OW, C, KH, KW] -> [N, OH, OW, KH, KW, C] so each copied run is a contiguous pixel.
        windows = windows[:, :rows_end:stride_h, :cols_end:stride_w, :, ::dil_h, ::dil_w]
        columns = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, weights.shape[0])
        out = columns @ weights
        if bias is not None:
            out += bias
        return out.reshape(x.shape[0], out_h, out_w, out_c)

    return with_activation(conv_2d, activation)


def _pointwise(weights, bias, out_c):
    def conv_1x1(x, _filters=None, _bias=None):
        out = x.reshape(-1, x.shape[-1]) @ weights
        if bias is not None:
            out += bias
        return out.reshape(x.shape[:-1] + (out_c,))

    return conv_1x1


def _bias(op, graph, out_c):
    if input_tensor(op, graph, 2) is None:
        return None
    bias = constant_input(op, graph, 2, "bias").astype(np.float32)
    if bias.shape != (out_c,):
        raise ModelError(f"op {op}: bias shape {bias.shape} does not match {out_c} output channels")
    return bias

"""CONV_2D: NHWC input, filter [O, KH, KW, I], optional bias [O]; one GEMM per call.

A 1x1 convolution is a matmul over pixels. Any other is im2col + matmul: each filter tap copies
the input pixels it sees into its own column block of a reused [N, OH, OW, KH, KW, C] buffer; the
slices are computed in prepare and cover only positions inside the input, so the entries that fall
on padding stay zero from allocation and no padded copy of the input is ever made.
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

# Larger batches are run in chunks so the im2col buffer stays around this size.
IM2COL_BUDGET_BYTES = 32 << 20


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
    out_h, pad_top, _ = compute_padding(padding, in_h, k_h, stride_h, dil_h)
    out_w, pad_left, _ = compute_padding(padding, in_w, k_w, stride_w, dil_w)
    # Rows of the GEMM's right operand follow the im2col column order (kh, kw, c).
    weights = np.ascontiguousarray(filters.reshape(out_c, -1).T)
    activation = fused_activation(op)

    if k_h == k_w == 1:  # a 1x1 filter never needs padding
        return with_activation(_pointwise(weights, bias, stride_h, stride_w), activation)

    taps = []
    for ky in range(k_h):
        rows = _tap_range(ky * dil_h - pad_top, stride_h, in_h, out_h)
        for kx in range(k_w):
            cols = _tap_range(kx * dil_w - pad_left, stride_w, in_w, out_w)
            if rows is not None and cols is not None:
                taps.append((ky, kx, rows, cols))
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

    def conv_2d(x, _filters=None, _bias=None):
        n = x.shape[0]
        if n <= chunk:
            out = im2col(x) @ weights
        else:
            out = np.empty((n * out_h * out_w, out_c), np.float32)
            rows_per_sample = out_h * out_w
            for start in range(0, n, chunk):
                part = x[start:start + chunk]
                np.matmul(im2col(part), weights,
                          out=out[start * rows_per_sample:(start + part.shape[0]) * rows_per_sample])
        if bias is not None:
            out += bias
        return out.reshape(n, out_h, out_w, out_c)

    return with_activation(conv_2d, activation)


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

    def conv_1x1(x, _filters=None, _bias=None):
        if strided:
            x = x[:, ::stride_h, ::stride_w, :]
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

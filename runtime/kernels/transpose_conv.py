"""TRANSPOSE_CONV: inputs (output_shape, filter [O, KH, KW, I], input, optional bias).

Each input pixel scatters ``input · filter`` into a KH×KW patch of the output at ``stride``
spacing: one GEMM makes all patches, then KH·KW strided adds place them (col2im) and the
padding TFLite computes for the output size is cropped away.
"""
from __future__ import annotations

import numpy as np

from runtime.kernels import register
from runtime.kernels.common import (
    batched_shape,
    compute_padding,
    constant_input,
    fused_activation,
    input_tensor,
    require_float,
    with_activation,
)
from runtime.model import ModelError


@register("TRANSPOSE_CONV")
def prepare_transpose_conv(op, graph):
    require_float(op, graph, (2,))
    return _prepare_float(op, graph)


def _prepare_float(op, graph):
    output_shape = tuple(int(d) for d in np.ravel(constant_input(op, graph, 0, "output_shape")))
    filters = constant_input(op, graph, 1, "filter").astype(np.float32)
    in_shape = graph[op.inputs[2]].shape
    _, in_h, in_w, in_c = in_shape
    out_c, k_h, k_w, filter_c = filters.shape
    if filter_c != in_c or output_shape[3] != out_c:
        raise ModelError(f"op {op}: filter {filters.shape} does not fit input {in_shape} / output {output_shape}")
    bias = None
    if input_tensor(op, graph, 3) is not None:
        bias = constant_input(op, graph, 3, "bias").astype(np.float32)
    options = op.options
    stride_h, stride_w = options.get("stride_h", 1), options.get("stride_w", 1)
    padding = options.get("padding", "SAME")
    out_h, out_w = output_shape[1], output_shape[2]
    # TFLite pads as if this were the forward convolution from the output size to the input size.
    _, pad_top, _ = compute_padding(padding, out_h, k_h, stride_h)
    _, pad_left, _ = compute_padding(padding, out_w, k_w, stride_w)
    weights = np.ascontiguousarray(filters.transpose(3, 1, 2, 0).reshape(in_c, k_h * k_w * out_c))
    rows_span, cols_span = (in_h - 1) * stride_h + 1, (in_w - 1) * stride_w + 1
    full_h = max(rows_span + k_h - 1, pad_top + out_h)
    full_w = max(cols_span + k_w - 1, pad_left + out_w)
    taps = [(ky, kx, slice(ky, ky + rows_span, stride_h), slice(kx, kx + cols_span, stride_w))
            for ky in range(k_h) for kx in range(k_w)]
    static_batch = output_shape[0]

    def transpose_conv(_output_shape, _filters, x, _bias=None):
        n = x.shape[0]
        patches = (x.reshape(-1, in_c) @ weights).reshape(n, in_h, in_w, k_h, k_w, out_c)
        full = np.zeros((n, full_h, full_w, out_c), np.float32)
        for ky, kx, rows, cols in taps:
            full[:, rows, cols, :] += patches[:, :, :, ky, kx, :]
        out = full[:, pad_top:pad_top + out_h, pad_left:pad_left + out_w, :]
        out = np.array(out, copy=True) if bias is None else out + bias
        return out.reshape(batched_shape(output_shape, static_batch, n))

    return with_activation(transpose_conv, fused_activation(op))

"""MAX_POOL_2D and AVERAGE_POOL_2D over NHWC, as a max/sum of shifted strided views."""
from __future__ import annotations

import numpy as np

from runtime.kernels import register
from runtime.kernels.common import compute_padding, fused_activation, require_float, with_activation


def _window_geometry(op, graph):
    _, in_h, in_w, channels = graph[op.inputs[0]].shape
    options = op.options
    k_h, k_w = options["filter_height"], options["filter_width"]
    stride_h, stride_w = options.get("stride_h", 1), options.get("stride_w", 1)
    padding = options.get("padding", "VALID")
    out_h, pad_top, pad_bottom = compute_padding(padding, in_h, k_h, stride_h)
    out_w, pad_left, pad_right = compute_padding(padding, in_w, k_w, stride_w)
    rows_span, cols_span = (out_h - 1) * stride_h + 1, (out_w - 1) * stride_w + 1
    taps = [(slice(ky, ky + rows_span, stride_h), slice(kx, kx + cols_span, stride_w))
            for ky in range(k_h) for kx in range(k_w)]
    return dict(in_h=in_h, in_w=in_w, channels=channels, k_h=k_h, k_w=k_w, out_h=out_h, out_w=out_w,
                pads=(pad_top, pad_bottom, pad_left, pad_right), taps=taps,
                is_global=(k_h, k_w, out_h, out_w) == (in_h, in_w, 1, 1) and padding == "VALID")


def _padder(geometry, fill):
    """A function that places x inside a per-batch-size buffer whose border holds ``fill``."""
    pad_top, pad_bottom, pad_left, pad_right = geometry["pads"]
    if not (pad_top or pad_bottom or pad_left or pad_right):
        return lambda x: x
    in_h, in_w = geometry["in_h"], geometry["in_w"]
    shape_tail = (in_h + pad_top + pad_bottom, in_w + pad_left + pad_right, geometry["channels"])
    buffers = {}

    def pad(x):
        buffer = buffers.get(x.shape[0])
        if buffer is None:
            buffer = buffers[x.shape[0]] = np.full((x.shape[0],) + shape_tail, fill, np.float32)
        buffer[:, pad_top:pad_top + in_h, pad_left:pad_left + in_w, :] = x
        return buffer

    return pad


@register("MAX_POOL_2D")
def prepare_max_pool_2d(op, graph):
    require_float(op, graph)
    geometry = _window_geometry(op, graph)
    pad = _padder(geometry, -np.inf)
    (first_rows, first_cols), other_taps = geometry["taps"][0], geometry["taps"][1:]

    def max_pool_2d(x):
        source = pad(x)
        out = source[:, first_rows, first_cols, :].copy()
        for rows, cols in other_taps:
            np.maximum(out, source[:, rows, cols, :], out=out)
        return out

    return with_activation(max_pool_2d, fused_activation(op))


@register("AVERAGE_POOL_2D")
def prepare_average_pool_2d(op, graph):
    require_float(op, graph)
    geometry = _window_geometry(op, graph)
    if geometry["is_global"]:
        def global_average_pool_2d(x):
            return x.mean(axis=(1, 2), keepdims=True, dtype=np.float32)

        return with_activation(global_average_pool_2d, fused_activation(op))

    pad = _padder(geometry, 0.0)
    (first_rows, first_cols), other_taps = geometry["taps"][0], geometry["taps"][1:]
    # TFLite divides by the number of window elements inside the input, not by the filter size.
    pad_top, _, pad_left, _ = geometry["pads"]
    in_h, in_w = geometry["in_h"], geometry["in_w"]
    inside = np.zeros((in_h + sum(geometry["pads"][:2]), in_w + sum(geometry["pads"][2:])), np.float32)
    inside[pad_top:pad_top + in_h, pad_left:pad_left + in_w] = 1
    counts = sum(inside[rows, cols] for rows, cols in geometry["taps"])
    window_counts = counts.astype(np.float32)[:, :, None]

    def average_pool_2d(x):
        source = pad(x)
        out = source[:, first_rows, first_cols, :].copy()
        for rows, cols in other_taps:
            out += source[:, rows, cols, :]
        out /= window_counts
        return out

    return with_activation(average_pool_2d, fused_activation(op))

"""RESIZE_BILINEAR and RESIZE_NEAREST_NEIGHBOR with TFLite's align_corners / half_pixel_centers
coordinate rules; source indices and weights are computed once in prepare."""
from __future__ import annotations

import numpy as np

from edgeq.runtime.fixedpoint import round_half_away
from edgeq.runtime.kernels import check, register
from edgeq.runtime.kernels.common import constant_input, require_float
from edgeq.runtime.ir import ModelError


def _scale(in_size, out_size, align_corners):
    if align_corners and out_size > 1:
        return np.float32(in_size - 1) / np.float32(out_size - 1)
    return np.float32(in_size) / np.float32(out_size)


def _output_size(op, graph):
    size = np.ravel(constant_input(op, graph, 1, "size")).astype(np.int64)
    if size.shape != (2,):
        raise ModelError(f"op {op}: size must hold [new_height, new_width], got {size.tolist()}")
    return int(size[0]), int(size[1])


def _options(op):
    return bool(op.options.get("align_corners", False)), bool(op.options.get("half_pixel_centers", False))


@check("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR")
def check_resize(op, graph):
    if all(_options(op)):
        raise ModelError("align_corners and half_pixel_centers cannot both be set")


def _bilinear_axis(in_size, out_size, align_corners, half_pixel_centers):
    """(lower index, upper index, weight of upper) per output coordinate, as TFLite computes them."""
    scale = _scale(in_size, out_size, align_corners)
    positions = np.arange(out_size, dtype=np.float32)
    if half_pixel_centers:
        scaled = (positions + np.float32(0.5)) * scale - np.float32(0.5)
    else:
        scaled = positions * scale
    lower = np.maximum(np.floor(scaled), 0).astype(np.int64)
    upper = np.minimum(np.ceil(scaled).astype(np.int64), in_size - 1)
    return lower, upper, (scaled - lower).astype(np.float32)


@register("RESIZE_BILINEAR")
def prepare_resize_bilinear(op, graph):
    if graph[op.inputs[0]].dtype in (np.int8, np.uint8, np.int16):
        return _prepare_resize_bilinear_int(op, graph)
    require_float(op, graph)
    _, in_h, in_w, _ = graph[op.inputs[0]].shape
    out_h, out_w = _output_size(op, graph)
    align_corners, half_pixel_centers = _options(op)
    y0, y1, dy = _bilinear_axis(in_h, out_h, align_corners, half_pixel_centers)
    x0, x1, dx = _bilinear_axis(in_w, out_w, align_corners, half_pixel_centers)
    dy = dy[:, None, None]
    dx = dx[:, None]
    one = np.float32(1)

    def resize_bilinear(x, _size=None):
        top, bottom = x[:, y0], x[:, y1]
        # Same weight products as TFLite: (1-dy)(1-dx), dy(1-dx), (1-dy)dx, dy*dx.
        return (top[:, :, x0] * ((one - dy) * (one - dx)) + bottom[:, :, x0] * (dy * (one - dx))
                + top[:, :, x1] * ((one - dy) * dx) + bottom[:, :, x1] * (dy * dx))

    return resize_bilinear


def _nearest_axis(in_size, out_size, align_corners, half_pixel_centers):
    scale = _scale(in_size, out_size, align_corners)
    offset = np.float32(0.5) if half_pixel_centers else np.float32(0)
    scaled = (np.arange(out_size, dtype=np.float32) + offset) * scale
    if align_corners:
        source = round_half_away(scaled)  # TfLiteRound
    else:
        source = np.floor(scaled)
    source = np.minimum(source.astype(np.int64), in_size - 1)
    if half_pixel_centers:
        source = np.maximum(source, 0)
    return source


@register("RESIZE_NEAREST_NEIGHBOR")
def prepare_resize_nearest_neighbor(op, graph):
    _, in_h, in_w, _ = graph[op.inputs[0]].shape
    out_h, out_w = _output_size(op, graph)
    align_corners, half_pixel_centers = _options(op)
    rows = _nearest_axis(in_h, out_h, align_corners, half_pixel_centers)
    cols = _nearest_axis(in_w, out_w, align_corners, half_pixel_centers)

    def resize_nearest_neighbor(x, _size=None):
        return x[:, rows][:, :, cols]

    return resize_nearest_neighbor


# -- integer bilinear ------------------------------------------------------------------------------
# reference_ops::ResizeBilinearInteger: coordinates in 10-bit fixed point (scale_10 rounded once in
# integers), the four weights multiply to a 20-bit fraction, and the sum is rounded half away from
# zero (the default double-rounding build) with a C division by 2^20. Input and output share params.

def _c_div(a, b):
    q = np.abs(a) // b
    return np.where(a < 0, -q, q)


def _bilinear_axis_integer(in_size, out_size, align_corners, half_pixel_centers):
    if align_corners and out_size > 1:
        scale_10 = ((1 << 10) * (in_size - 1) + (out_size - 1) // 2) // (out_size - 1)
    else:
        scale_10 = ((1 << 10) * in_size + out_size // 2) // out_size
    positions = np.arange(out_size, dtype=np.int64)
    if half_pixel_centers:
        scaled = positions * scale_10 + scale_10 // 2 - (1 << 9)
    else:
        scaled = positions * scale_10
    lower = np.maximum(_c_div(scaled, 1 << 10), 0)
    upper = np.minimum(_c_div(scaled + (1 << 10) - 1, 1 << 10), in_size - 1)
    fraction = scaled - (1 << 10) * lower  # weight of the upper sample, in 1/1024
    return lower, upper, fraction


def _prepare_resize_bilinear_int(op, graph):
    _, in_h, in_w, _ = graph[op.inputs[0]].shape
    out_h, out_w = _output_size(op, graph)
    dtype = graph[op.inputs[0]].dtype
    align_corners, half_pixel_centers = _options(op)
    y0, y1, dy = _bilinear_axis_integer(in_h, out_h, align_corners, half_pixel_centers)
    x0, x1, dx = _bilinear_axis_integer(in_w, out_w, align_corners, half_pixel_centers)
    one = 1 << 10
    dy = dy[:, None, None]
    dx = dx[:, None]

    def resize_bilinear_int(x, _size=None):
        x = x.astype(np.int64)
        top, bottom = x[:, y0], x[:, y1]
        total = (top[:, :, x0] * ((one - dy) * (one - dx)) + bottom[:, :, x0] * (dy * (one - dx))
                 + top[:, :, x1] * ((one - dy) * dx) + bottom[:, :, x1] * (dy * dx))
        rounding = np.where(total > 0, 1 << 19, -(1 << 19))
        return _c_div(total + rounding, 1 << 20).astype(dtype)

    return resize_bilinear_int

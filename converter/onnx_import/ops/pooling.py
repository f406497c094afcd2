"""MaxPool, AveragePool -> MAX_POOL_2D / AVERAGE_POOL_2D; GlobalAverage/MaxPool -> MEAN / REDUCE_MAX.

TFLite pools know SAME (padding ignored: excluded from the average, never the max) and VALID. Other
ONNX paddings (asymmetric pads, ceil_mode, count_include_pad) become an explicit PAD and a VALID pool;
for averages a constant MUL then turns the pool's fixed divisor into ONNX's per-position count.
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime.ir import ModelError

from ..padding import NHWC, emit_pad_nhwc, explicit_pads, same_pads
from . import node_label, rule
from .spatial_1d import convert_as_2d, is_1d

def lowest_value(dtype) -> float:
    """The fill that never wins a max: the type's lowest value (not -inf, which int types lack)."""
    dtype = np.dtype(dtype)
    return float(np.finfo(dtype).min if dtype.kind == "f" else np.iinfo(dtype).min)


def pool_geometry(ctx, node, attrs):
    label = node_label(node)
    x_shape = ctx.shape(node.input[0])
    if len(x_shape) != 4:
        raise ModelError(f"{label}: only 2-D pooling (4-D input) is supported, got input shape {x_shape}")
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise ModelError(f"{label}: dilated pooling is not supported")
    if len(node.output) > 1 and node.output[1]:
        raise ModelError(f"{label}: the Indices output of MaxPool is not supported")
    kernel = list(attrs["kernel_shape"])
    strides = list(attrs.get("strides", [1, 1]))
    pads = explicit_pads(attrs, x_shape[2:], kernel, strides, label)
    out_hw = ctx.shape(node.output[0])[2:]
    # ceil_mode (or any output larger than the pads give) needs extra padding at the end.
    pads = [
        (b, e + max((out_hw[i] - 1) * strides[i] + kernel[i] - (x_shape[2 + i] + b + e), 0))
        for i, (b, e) in enumerate(pads)
    ]
    return x_shape, kernel, strides, pads, [(b, e) for b, e in explicit_pads(attrs, x_shape[2:], kernel, strides, label)]


def pool_options(padding, kernel, strides) -> dict:
    return {
        "padding": padding,
        "stride_w": int(strides[1]),
        "stride_h": int(strides[0]),
        "filter_width": int(kernel[1]),
        "filter_height": int(kernel[0]),
        "fused_activation_function": "NONE",
    }


def is_same(pads, in_hw, kernel, strides) -> bool:
    return all(tuple(pads[i]) == same_pads(in_hw[i], kernel[i], strides[i]) for i in range(2))


def window_counts(in_size, out_size, kernel, stride, begin, lo, hi) -> np.ndarray:
    """For each output position: how many window taps fall inside [lo, hi) (input coordinates)."""
    starts = np.arange(out_size) * stride - begin
    taps = starts[:, None] + np.arange(kernel)[None, :]
    return ((taps >= lo) & (taps < hi)).sum(axis=1)


@rule("MaxPool")
def convert_max_pool(ctx, node, attrs):
    if is_1d(ctx, node):
        convert_as_2d(ctx, node, attrs, convert_max_pool)
        return
    x_shape, kernel, strides, pads, _ = pool_geometry(ctx, node, attrs)
    x_ir = ctx.stored(node.input[0], NHWC)
    out = ctx.define(node.output[0], NHWC)
    if all(p == (0, 0) for p in pads):
        padding = "VALID"
    elif is_same(pads, x_shape[2:], kernel, strides):
        padding = "SAME"
    else:
        x_ir = emit_pad_nhwc(ctx, x_ir, pads, out, node, value=lowest_value(ctx.graph[x_ir].dtype))
        padding = "VALID"
    ctx.emit("MAX_POOL_2D", [x_ir], [out], pool_options(padding, kernel, strides), node)


@rule("AveragePool")
def convert_average_pool(ctx, node, attrs):
    if is_1d(ctx, node):
        convert_as_2d(ctx, node, attrs, convert_average_pool)
        return
    x_shape, kernel, strides, pads, declared = pool_geometry(ctx, node, attrs)
    include_pad = bool(attrs.get("count_include_pad", 0))
    x_ir = ctx.stored(node.input[0], NHWC)
    out = ctx.define(node.output[0], NHWC)
    out_hw = ctx.shape(node.output[0])[2:]
    if all(p == (0, 0) for p in pads):
        ctx.emit("AVERAGE_POOL_2D", [x_ir], [out], pool_options("VALID", kernel, strides), node)
        return
    if not include_pad and is_same(pads, x_shape[2:], kernel, strides):
        ctx.emit("AVERAGE_POOL_2D", [x_ir], [out], pool_options("SAME", kernel, strides), node)
        return
    # Zero-pad, average over the full window, then rescale each position to ONNX's divisor.
    counts = []
    for i in range(2):
        lo, hi = (-declared[i][0], x_shape[2 + i] + declared[i][1]) if include_pad else (0, x_shape[2 + i])
        counts.append(window_counts(x_shape[2 + i], out_hw[i], kernel[i], strides[i], pads[i][0], lo, hi))
    divisor = np.outer(counts[0], counts[1]).astype(np.float32)
    if (divisor == 0).any():
        raise ModelError(f"{node_label(node)}: a pooling window lies entirely in padding")
    correction = (kernel[0] * kernel[1]) / divisor
    padded = emit_pad_nhwc(ctx, x_ir, pads, out, node)
    if np.allclose(correction, 1.0):
        ctx.emit("AVERAGE_POOL_2D", [padded], [out], pool_options("VALID", kernel, strides), node)
        return
    pooled = ctx.temp(f"{out}/pooled", ctx.graph[out].shape)
    ctx.emit("AVERAGE_POOL_2D", [padded], [pooled], pool_options("VALID", kernel, strides), node)
    scale = ctx.const_tensor(f"{out}/count_correction", correction.reshape(1, out_hw[0], out_hw[1], 1).astype(np.float32))
    ctx.emit("MUL", [pooled, scale], [out], {"fused_activation_function": "NONE"}, node)


@rule("GlobalAveragePool", "GlobalMaxPool")
def convert_global_pool(ctx, node, attrs):
    value = ctx.value(node.input[0])
    rank = value.rank
    spatial = list(range(2, rank))
    axes = sorted(value.perm.index(a) for a in spatial)
    out = ctx.define(node.output[0], value.perm)
    tfl_type = "MEAN" if node.op_type == "GlobalAveragePool" else "REDUCE_MAX"
    ctx.emit(tfl_type, [value.ir, ctx.int32_tensor(f"{out}/axes", axes)], [out], {"keep_dims": True}, node)

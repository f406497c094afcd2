"""MAX_POOL_2D and AVERAGE_POOL_2D over NHWC: a max / sum of the KH*KW shifted window taps, each
read as contiguous rows of the padded input (``padded_column_phases``)."""
from __future__ import annotations

import numpy as np

from edgeq.runtime import native
from edgeq.runtime.kernels import native_float, register
from edgeq.runtime.kernels.buffers import OutputBuffers
from edgeq.runtime.kernels.common import (
    float_activation_bounds,
    fused_activation,
    padded_column_phases,
    require_float,
    window_taps,
    with_activation,
)
from edgeq.runtime.padding import explicit_output_size, output_and_padding
from edgeq.runtime.kernels.requantize import activation_range, rounding_divide, saturate, scale_and_zero_point


def _geometry(op, graph):
    _, in_h, in_w, channels = graph[op.inputs[0]].shape
    options = op.options
    k_h, k_w = options["filter_height"], options["filter_width"]
    stride_h, stride_w = options.get("stride_h", 1), options.get("stride_w", 1)
    explicit = options.get("explicit_padding")
    if explicit is not None:  # (top, bottom, left, right): a PAD the interpreter folded in
        pad_top, pad_bottom, pad_left, pad_right = explicit
        out_h = explicit_output_size(in_h, pad_top, pad_bottom, k_h, stride_h, 1)
        out_w = explicit_output_size(in_w, pad_left, pad_right, k_w, stride_w, 1)
    else:
        padding = options.get("padding", "VALID")
        out_h, pad_top, pad_bottom = output_and_padding(padding, in_h, k_h, stride_h)
        out_w, pad_left, pad_right = output_and_padding(padding, in_w, k_w, stride_w)
    pads = (pad_top, pad_bottom, pad_left, pad_right)
    taps = [(phase, rows, cols) for _, _, phase, rows, cols
            in window_taps(k_h, k_w, stride_h, stride_w, 1, 1, out_h, out_w, channels)]
    is_global = (k_h, k_w, out_h, out_w) == (in_h, in_w, 1, 1) and not any(pads)
    return in_h, in_w, channels, out_h, out_w, stride_w, pads, taps, is_global


@register("MAX_POOL_2D")
def prepare_max_pool_2d(op, graph):
    if graph[op.inputs[0]].dtype in (np.int8, np.uint8, np.int16):
        return _prepare_max_pool_int(op, graph)
    require_float(op, graph)
    in_h, in_w, channels, out_h, out_w, stride_w, pads, taps, _ = _geometry(op, graph)
    native_pool = native_float.prepare_pool(False, graph[op.inputs[0]].shape, op.options, out_h, out_w, pads,
                                            float_activation_bounds(op))
    if native_pool is not None:
        return native_pool
    column_phases = padded_column_phases(in_h, in_w, channels, pads, stride_w, fill=-np.inf)
    (first_phase, first_rows, first_cols), other_taps = taps[0], taps[1:]

    def max_pool_2d(x):
        sources = column_phases(x)
        out = sources[first_phase][:, first_rows, first_cols].copy()
        for phase, rows, cols in other_taps:
            np.maximum(out, sources[phase][:, rows, cols], out=out)
        return out.reshape(x.shape[0], out_h, out_w, channels)

    return with_activation(max_pool_2d, fused_activation(op))


@register("AVERAGE_POOL_2D")
def prepare_average_pool_2d(op, graph):
    if graph[op.inputs[0]].dtype in (np.int8, np.uint8, np.int16):
        return _prepare_average_pool_int(op, graph)
    require_float(op, graph)
    in_h, in_w, channels, out_h, out_w, stride_w, pads, taps, is_global = _geometry(op, graph)
    if is_global:
        def global_average_pool_2d(x):
            return x.mean(axis=(1, 2), keepdims=True, dtype=np.float32)

        return with_activation(global_average_pool_2d, fused_activation(op))
    native_pool = native_float.prepare_pool(True, graph[op.inputs[0]].shape, op.options, out_h, out_w, pads,
                                            float_activation_bounds(op))
    if native_pool is not None:
        return native_pool

    column_phases = padded_column_phases(in_h, in_w, channels, pads, stride_w, fill=0.0)
    # TFLite divides by the number of window elements inside the input, not by the filter size:
    # pooling a map of ones with the same taps counts them.
    count_phases = padded_column_phases(in_h, in_w, 1, pads, stride_w, fill=0.0)(np.ones((1, in_h, in_w, 1), np.float32))
    count_taps = [(phase, rows, slice(cols.start // channels, cols.stop // channels)) for phase, rows, cols in taps]
    counts = sum(count_phases[phase][0, rows, cols] for phase, rows, cols in count_taps)
    window_counts = np.repeat(counts, channels, axis=1).astype(np.float32)
    (first_phase, first_rows, first_cols), other_taps = taps[0], taps[1:]

    def average_pool_2d(x):
        sources = column_phases(x)
        out = sources[first_phase][:, first_rows, first_cols].copy()
        for phase, rows, cols in other_taps:
            out += sources[phase][:, rows, cols]
        out /= window_counts
        return out.reshape(x.shape[0], out_h, out_w, channels)

    return with_activation(average_pool_2d, fused_activation(op))


# -- integer ---------------------------------------------------------------------------------------
# reference_integer_ops::MaxPool / AveragePool: the window covers only positions inside the input;
# the average is the int sum over them divided by their count, rounded half away from zero; the
# result is clamped to the fused activation's range. Input and output share params.

def _window_counts(in_h, in_w, channels, pads, stride_w, taps):
    count_phases = padded_column_phases(in_h, in_w, 1, pads, stride_w, fill=0.0)(np.ones((1, in_h, in_w, 1), np.float32))
    count_taps = [(phase, rows, slice(cols.start // channels, cols.stop // channels)) for phase, rows, cols in taps]
    counts = sum(count_phases[phase][0, rows, cols] for phase, rows, cols in count_taps)
    return np.repeat(counts, channels, axis=1).astype(np.int64)


def _integer_range(op, graph):
    tensor = graph[op.outputs[0]]
    scale, zero_point = scale_and_zero_point(tensor, op)
    return activation_range(op, scale, zero_point, tensor.dtype)


def _prepare_max_pool_int(op, graph):
    in_h, in_w, channels, out_h, out_w, stride_w, pads, taps, _ = _geometry(op, graph)
    dtype = graph[op.inputs[0]].dtype
    activation_min, activation_max = _integer_range(op, graph)
    if native.enabled() and dtype == np.int8:
        return _native_max_pool_int8(op, in_h, in_w, channels, out_h, out_w, pads, activation_min, activation_max)
    column_phases = padded_column_phases(in_h, in_w, channels, pads, stride_w, fill=np.iinfo(dtype).min)
    (first_phase, first_rows, first_cols), other_taps = taps[0], taps[1:]

    def max_pool_2d_int(x):
        sources = column_phases(x)
        out = sources[first_phase][:, first_rows, first_cols].copy()
        for phase, rows, cols in other_taps:
            np.maximum(out, sources[phase][:, rows, cols], out=out)
        out = np.clip(out, activation_min, activation_max)
        return out.reshape(x.shape[0], out_h, out_w, channels)

    return max_pool_2d_int


def _native_max_pool_int8(op, in_h, in_w, channels, out_h, out_w, pads, low, high):
    geometries = native_float.pool_geometries(in_h, in_w, channels, out_h, out_w, op.options, pads)
    outputs = OutputBuffers((out_h, out_w, channels), np.int8)
    isa = native.isa()

    def max_pool_2d_int8_native(x):
        n = x.shape[0]
        return native.max_pool_int8(geometries.get(n), np.ascontiguousarray(x), low, high, outputs.get(n), isa)

    return max_pool_2d_int8_native


def _prepare_average_pool_int(op, graph):
    in_h, in_w, channels, out_h, out_w, stride_w, pads, taps, _ = _geometry(op, graph)
    dtype = graph[op.inputs[0]].dtype
    activation_min, activation_max = _integer_range(op, graph)
    if dtype == np.int8:
        native_pool = native_float.prepare_average_pool_int8(graph[op.inputs[0]].shape, op.options, out_h, out_w,
                                                             pads, activation_min, activation_max)
        if native_pool is not None:
            return native_pool
    column_phases = padded_column_phases(in_h, in_w, channels, pads, stride_w, fill=0)
    window_counts = _window_counts(in_h, in_w, channels, pads, stride_w, taps)
    (first_phase, first_rows, first_cols), other_taps = taps[0], taps[1:]

    def average_pool_2d_int(x):
        sources = column_phases(x.astype(np.int32))
        acc = sources[first_phase][:, first_rows, first_cols].copy()
        for phase, rows, cols in other_taps:
            acc += sources[phase][:, rows, cols]
        average = rounding_divide(acc, window_counts)
        return saturate(average, activation_min, activation_max, dtype).reshape(x.shape[0], out_h, out_w, channels)

    return average_pool_2d_int

"""Helpers shared by the kernels: fused activations, TFLite's padding arithmetic, option access."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from edgeq.runtime.ir import Graph, ModelError, Op


# The real range [low, high] each clamping activation limits values to, fused into an op (its
# ``fused_activation_function``) or as an op of the same name. The float kernels, the integer
# kernels' output ranges, the importer and the quantizer all read this one table.
ACTIVATION_BOUNDS = {
    "RELU": (0.0, np.inf),
    "RELU6": (0.0, 6.0),
    "RELU_N1_TO_1": (-1.0, 1.0),
    "RELU_0_TO_1": (0.0, 1.0),
}
# The fused activations TFLite's kernels apply as a clamp, float (CalculateActivationRange) and
# integer (CalculateActivationRangeQuantized, which refuses any other); RELU_0_TO_1 and TANH are
# valid option values they do not apply.
FUSED_CLAMPS = ("RELU", "RELU6", "RELU_N1_TO_1")
NO_ACTIVATION = ("NONE", "", None)
# Fused float activations that are a clamp, as (low, high) (TANH and the like are not).
FLOAT_ACTIVATION_BOUNDS = {**dict.fromkeys(NO_ACTIVATION, (-float("inf"), float("inf"))), **ACTIVATION_BOUNDS}


def float_activation_bounds(op):
    """(low, high) of the op's fused activation as a clamp, or None when it is not one."""
    return FLOAT_ACTIVATION_BOUNDS.get(op.options.get("fused_activation_function", "NONE"))


def clamp(name: str, in_place: bool = False) -> Callable:
    """The activation ``name`` of ACTIVATION_BOUNDS as a function of an array: a new array, or the
    argument overwritten. The bounds are whole numbers and go in as ints, so an integer array
    keeps its dtype."""
    low, high = ACTIVATION_BOUNDS[name]
    low = int(low)
    if high == np.inf:
        def clamp_below(x):
            return np.maximum(x, low, out=x if in_place else None)

        return clamp_below
    high = int(high)

    def clamp_both(x):
        return np.clip(x, low, high, out=x if in_place else None)

    return clamp_both


def _tanh(x):
    return np.tanh(x, out=x)


# In-place on purpose: a fused activation only ever runs on an array its own kernel just made.
_FUSED_ACTIVATIONS = {
    **dict.fromkeys(NO_ACTIVATION),
    **{name: clamp(name, in_place=True) for name in ACTIVATION_BOUNDS},
    "TANH": _tanh,
}


def fused_activation(op: Op) -> Optional[Callable]:
    """The in-place float activation named by the op's ``fused_activation_function``, or None."""
    name = op.options.get("fused_activation_function", "NONE")
    try:
        return _FUSED_ACTIVATIONS[name]
    except KeyError:
        raise ModelError(f"op {op}: unsupported fused activation {name!r}") from None


def check_fused_activation(op: Op, graph: Graph) -> None:
    """A fused activation the kernels have: any of ``_FUSED_ACTIVATIONS`` in float, and on an
    integer output only the clamps TFLite's integer kernels apply (``FUSED_CLAMPS``)."""
    name = op.options.get("fused_activation_function", "NONE")
    if name not in _FUSED_ACTIVATIONS:
        raise ModelError(f"fused activation {name!r} is not supported")
    outputs = [graph[n] for n in op.outputs if n]
    integer_output = any(t.dtype in (np.int8, np.uint8, np.int16) for t in outputs)
    if integer_output and name not in NO_ACTIVATION and name not in FUSED_CLAMPS:
        raise ModelError(f"fused activation {name!r} has no integer form")


def with_activation(compute: Callable, activation: Optional[Callable]) -> Callable:
    """``compute`` followed by ``activation``, without an extra call level when there is none."""
    if activation is None:
        return compute

    def compute_then_activate(*inputs):
        return activation(compute(*inputs))

    return compute_then_activate


def input_tensor(op: Op, graph: Graph, position: int):
    """The op's input tensor at ``position``, or None when the optional input is omitted."""
    if position >= len(op.inputs) or not op.inputs[position]:
        return None
    return graph[op.inputs[position]]


def strided_overlap(offset: int, stride: int, strided_size: int, dense_size: int):
    """For one filter tap: position ``i * stride + offset`` on the dense axis belongs to position i
    on the strided axis. Returns (strided slice, dense slice) of the positions i that land inside
    [0, dense_size), or None if none does. Convolution strides its output; a transposed convolution
    strides its input."""
    first = max(0, -(offset // stride))  # ceil(-offset / stride)
    last = min(strided_size - 1, (dense_size - 1 - offset) // stride)
    if last < first:
        return None
    start = first * stride + offset
    return slice(first, last + 1), slice(start, start + (last - first) * stride + 1, stride)


def constant_input(op: Op, graph: Graph, position: int, what: str) -> np.ndarray:
    tensor = input_tensor(op, graph, position)
    if tensor is None or tensor.data is None:
        raise ModelError(f"op {op}: {what} (input {position}) must be a constant tensor")
    return tensor.data


def require_float(op: Op, graph: Graph, positions=(0,)) -> None:
    """Reject dtypes this kernel has no path for yet, naming the op."""
    for position in positions:
        tensor = input_tensor(op, graph, position)
        if tensor is not None and tensor.dtype != np.float32:
            raise ModelError(f"op {op}: input '{tensor.name}' is {tensor.dtype}; only float32 is supported")


def batched_shape(static_shape: tuple, static_batch: int, actual_batch: int) -> tuple:
    """``static_shape`` with its leading (batch) axis scaled for a run on ``actual_batch`` samples."""
    if actual_batch == static_batch or not static_shape:
        return tuple(static_shape)
    return (static_shape[0] * actual_batch // max(static_batch, 1),) + tuple(static_shape[1:])


def padded_column_phases(in_h: int, in_w: int, channels: int, pads: tuple, stride_w: int, fill=0.0):
    """A function x -> the padded input as ``stride_w`` arrays [N, padded_h, W' * channels]:
    phase p holds the padded columns p, p + stride_w, ... so a strided row of pixels is a
    contiguous run of one phase (see ``window_taps``). The padding buffer is reused per batch size."""
    pad_top, pad_bottom, pad_left, pad_right = pads
    padded_h = in_h + pad_top + pad_bottom
    # Rounded up to whole phases; the extra columns are never read by a tap.
    padded_w = -(-(in_w + pad_left + pad_right) // stride_w) * stride_w
    needs_copy = any(pads) or padded_w != in_w
    buffers = {}

    def column_phases(x):
        n = x.shape[0]
        if needs_copy:
            padded = buffers.get(n)
            if padded is None:
                padded = buffers[n] = np.full((n, padded_h, padded_w, channels), fill, x.dtype)
            padded[:, pad_top:pad_top + in_h, pad_left:pad_left + in_w, :] = x
            x = padded
        if stride_w == 1:
            return (x.reshape(n, padded_h, -1),)
        return tuple(np.ascontiguousarray(x[:, :, p::stride_w, :]).reshape(n, padded_h, -1)
                     for p in range(stride_w))

    return column_phases


def window_taps(k_h, k_w, stride_h, stride_w, dil_h, dil_w, out_h, out_w, channels) -> list:
    """(ky, kx, phase, rows, cols) per filter tap: ``phases[phase][:, rows, cols]`` is the
    [N, out_h, out_w * channels] input that tap multiplies, for ``padded_column_phases`` output."""
    taps = []
    for ky in range(k_h):
        rows = slice(ky * dil_h, ky * dil_h + (out_h - 1) * stride_h + 1, stride_h)
        for kx in range(k_w):
            offset, phase = divmod(kx * dil_w, stride_w)
            taps.append((ky, kx, phase, rows, slice(offset * channels, (offset + out_w) * channels)))
    return taps

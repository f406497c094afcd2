"""Helpers shared by the kernels: fused activations, TFLite's padding arithmetic, option access."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from runtime.model import Graph, ModelError, Op


def _relu(x):
    return np.maximum(x, 0, out=x)


def _relu_n1_to_1(x):
    return np.clip(x, -1, 1, out=x)


def _relu6(x):
    return np.clip(x, 0, 6, out=x)


def _tanh(x):
    return np.tanh(x, out=x)


# In-place on purpose: a fused activation only ever runs on an array its own kernel just made.
_FUSED_ACTIVATIONS = {
    "NONE": None,
    "": None,
    None: None,
    "RELU": _relu,
    "RELU_N1_TO_1": _relu_n1_to_1,
    "RELU6": _relu6,
    "TANH": _tanh,
}


def fused_activation(op: Op) -> Optional[Callable]:
    """The in-place float activation named by the op's ``fused_activation_function``, or None."""
    name = op.options.get("fused_activation_function", "NONE")
    try:
        return _FUSED_ACTIVATIONS[name]
    except KeyError:
        raise ModelError(f"op {op}: unsupported fused activation {name!r}") from None


def with_activation(compute: Callable, activation: Optional[Callable]) -> Callable:
    """``compute`` followed by ``activation``, without an extra call level when there is none."""
    if activation is None:
        return compute

    def compute_then_activate(*inputs):
        return activation(compute(*inputs))

    return compute_then_activate


def compute_out_size(padding: str, in_size: int, filter_size: int, stride: int, dilation: int = 1) -> int:
    effective_filter = (filter_size - 1) * dilation + 1
    if padding == "SAME":
        return (in_size + stride - 1) // stride
    if padding == "VALID":
        return (in_size + stride - effective_filter) // stride
    raise ModelError(f"unknown padding {padding!r}")


def compute_padding(padding: str, in_size: int, filter_size: int, stride: int, dilation: int = 1):
    """(out_size, pad_before, pad_after) as TFLite's ComputePaddingHeightWidth: odd padding goes at the end."""
    out_size = compute_out_size(padding, in_size, filter_size, stride, dilation)
    effective_filter = (filter_size - 1) * dilation + 1
    total = max((out_size - 1) * stride + effective_filter - in_size, 0)
    return out_size, total // 2, total // 2 + total % 2


def input_tensor(op: Op, graph: Graph, position: int):
    """The op's input tensor at ``position``, or None when the optional input is omitted."""
    if position >= len(op.inputs) or not op.inputs[position]:
        return None
    return graph[op.inputs[position]]


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

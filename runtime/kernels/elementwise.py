"""Binary elementwise ops with numpy broadcasting; ADD/SUB/MUL/DIV carry a fused activation."""
from __future__ import annotations

import numpy as np

from runtime.kernels import register
from runtime.kernels.common import fused_activation, require_float, with_activation


def _squared_difference(a, b):
    difference = np.subtract(a, b)
    return np.multiply(difference, difference, out=difference)


_FLOAT_FUNCTIONS = {
    "ADD": np.add,
    "SUB": np.subtract,
    "MUL": np.multiply,
    "DIV": np.divide,
    "MAXIMUM": np.maximum,
    "MINIMUM": np.minimum,
    "SQUARED_DIFFERENCE": _squared_difference,
    "POW": np.power,
}


@register("ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "POW")
def prepare_binary(op, graph):
    if _is_plain_integer(op, graph) and op.type not in ("DIV", "SQUARED_DIFFERENCE"):
        return _FLOAT_FUNCTIONS[op.type]  # int32/int64 index arithmetic: numpy's integer ops agree
    require_float(op, graph, (0, 1))
    return _prepare_float(op, graph)


def _is_plain_integer(op, graph):
    tensors = [graph[name] for name in op.inputs[:2]]
    return all(t.dtype in (np.int32, np.int64) and t.quant is None for t in tensors)


def _prepare_float(op, graph):
    function = _FLOAT_FUNCTIONS[op.type]
    activation = fused_activation(op) if op.type in ("ADD", "SUB", "MUL", "DIV") else None
    if activation is None:
        return function
    return with_activation(function, activation)

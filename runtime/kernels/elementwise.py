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
}


@register("ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE")
def prepare_binary(op, graph):
    require_float(op, graph, (0, 1))
    return _prepare_float(op, graph)


def _prepare_float(op, graph):
    function = _FLOAT_FUNCTIONS[op.type]
    activation = fused_activation(op) if op.type in ("ADD", "SUB", "MUL", "DIV") else None
    if activation is None:
        return function
    return with_activation(function, activation)

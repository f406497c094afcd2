"""BATCH_MATMUL: broadcasting matmul over leading axes, with adj_x / adj_y transposing the last two."""
from __future__ import annotations

import numpy as np

from runtime.kernels import register
from runtime.kernels.common import require_float


@register("BATCH_MATMUL")
def prepare_batch_matmul(op, graph):
    require_float(op, graph, (0, 1))
    adj_x = bool(op.options.get("adj_x", False))
    adj_y = bool(op.options.get("adj_y", False))
    rhs = graph[op.inputs[1]]
    constant_rhs = None
    if rhs.data is not None:
        constant_rhs = rhs.data.astype(np.float32)
        if adj_y:
            constant_rhs = np.ascontiguousarray(np.swapaxes(constant_rhs, -1, -2))

    def batch_matmul(a, b):
        if adj_x:
            a = np.swapaxes(a, -1, -2)
        if constant_rhs is not None:
            b = constant_rhs
        elif adj_y:
            b = np.swapaxes(b, -1, -2)
        return np.matmul(a, b)

    return batch_matmul

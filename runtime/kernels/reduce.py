"""Reductions over the axes given by a constant axis tensor: MEAN, SUM, REDUCE_MAX/MIN/PROD."""
from __future__ import annotations

import numpy as np

from runtime.kernels import register
from runtime.kernels.common import constant_input, require_float

_REDUCERS = {
    "MEAN": np.mean,
    "SUM": np.sum,
    "REDUCE_MAX": np.max,
    "REDUCE_MIN": np.min,
    "REDUCE_PROD": np.prod,
}


@register(*_REDUCERS)
def prepare_reduce(op, graph):
    require_float(op, graph)
    rank = len(graph[op.inputs[0]].shape)
    axes = np.atleast_1d(constant_input(op, graph, 1, "axis")).astype(np.int64)
    # TFLite accepts repeated and negative axes.
    axes = tuple(sorted({int(a) % rank for a in axes})) if rank else ()
    keep_dims = bool(op.options.get("keep_dims", False))
    reducer = _REDUCERS[op.type]

    def reduce(x, _axes=None):
        return np.asarray(reducer(x, axis=axes, keepdims=keep_dims), dtype=np.float32)

    return reduce

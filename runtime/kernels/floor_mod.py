"""FLOOR_MOD: the remainder with the divisor's sign, broadcasting, as LiteRT's floor_mod.cc computes it:
the truncated remainder, plus the divisor when the two signs differ."""
from __future__ import annotations

import numpy as np

from edgeq.runtime.kernels import register
from edgeq.runtime.ir import ModelError

_TYPES = {np.dtype(t) for t in (np.float32, np.int32, np.int64)}


@register("FLOOR_MOD")
def prepare_floor_mod(op, graph):
    a, b = graph[op.inputs[0]], graph[op.inputs[1]]
    if a.dtype != b.dtype or a.dtype not in _TYPES or a.quant is not None or b.quant is not None:
        raise ModelError(f"op {op}: inputs are {a.dtype} and {b.dtype}; one of float32, int32, int64 is supported")
    return _floor_mod


def _floor_mod(x, y):
    with np.errstate(divide="ignore", invalid="ignore"):
        truncated = np.fmod(x, y)
    adjust = (truncated != 0) & ((y < 0) != (truncated < 0))
    return np.where(adjust, truncated + y, truncated).astype(x.dtype, copy=False)

"""CUMSUM along one axis (a constant axis tensor), with TFLite's exclusive and reverse options."""
from __future__ import annotations

import numpy as np

from edgeq.runtime.kernels import register
from edgeq.runtime.kernels.common import constant_input
from edgeq.runtime.ir import ModelError


@register("CUMSUM")
def prepare_cumsum(op, graph):
    x = graph[op.inputs[0]]
    if x.dtype not in (np.float32, np.int32, np.int64) or x.quant is not None:
        raise ModelError(f"op {op}: input '{x.name}' is {x.dtype}; float32, int32 and int64 are supported")
    axis = int(np.ravel(constant_input(op, graph, 1, "axis"))[0]) % len(x.shape)
    exclusive = bool(op.options.get("exclusive", False))
    reverse = bool(op.options.get("reverse", False))
    # The whole axis reversed, summed, and reversed back; exclusive sums shift by one, starting at 0.
    flipped = (slice(None),) * axis + (slice(None, None, -1),)
    leading = (slice(None),) * axis + (slice(0, 1),)
    all_but_last = (slice(None),) * axis + (slice(0, -1),)

    def cumsum(x, _axis=None):
        source = x[flipped] if reverse else x
        sums = np.cumsum(source, axis=axis, dtype=x.dtype)
        if exclusive:
            sums = np.concatenate([np.zeros_like(sums[leading]), sums[all_but_last]], axis=axis)
        return np.ascontiguousarray(sums[flipped] if reverse else sums)

    return cumsum

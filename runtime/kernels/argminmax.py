"""ARG_MAX / ARG_MIN over one axis (a constant axis tensor), and TOPK_V2 along the last axis.

ARG_MAX/ARG_MIN compare stored values, so one kernel serves float32, int32 and int8/uint8, quantized
or not: a quantization's scale is positive and keeps the order. Of equal values the first wins, as
in LiteRT's ArgMinMax (it replaces the running best only on a strict improvement).
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime.kernels import register
from edgeq.runtime.kernels.common import constant_input
from edgeq.runtime.ir import ModelError

_ARG_INPUT_DTYPES = {np.dtype(t) for t in (np.float32, np.int32, np.int8, np.uint8, np.bool_)}


@register("ARG_MAX", "ARG_MIN")
def prepare_arg_min_max(op, graph):
    x = graph[op.inputs[0]]
    if x.dtype not in _ARG_INPUT_DTYPES:
        raise ModelError(f"op {op}: input '{x.name}' is {x.dtype}; float32, int32, int8, uint8 and bool are supported")
    axis = int(np.ravel(constant_input(op, graph, 1, "axis"))[0]) % len(x.shape)
    out_dtype = graph[op.outputs[0]].dtype
    if out_dtype not in (np.int32, np.int64):
        raise ModelError(f"op {op}: output type {out_dtype}; int32 or int64 expected")
    find = np.argmax if op.type == "ARG_MAX" else np.argmin

    def arg_min_max(x, _axis=None):
        return find(x, axis=axis).astype(out_dtype)

    return arg_min_max
@register("TOPK_V2")
def prepare_topk_v2(op, graph):
    """The k largest values along the last axis, largest first; of equal values the lower index first
    (a stable sort of the negated values gives that order)."""
    x = graph[op.inputs[0]]
    if x.dtype not in (np.float32, np.int32, np.int64, np.int8, np.uint8):
        raise ModelError(f"op {op}: input '{x.name}' is {x.dtype}; float32, int32, int64, int8 and uint8 are supported")
    k = int(np.ravel(constant_input(op, graph, 1, "k"))[0])
    if not 0 <= k <= x.shape[-1]:
        raise ModelError(f"op {op}: k = {k} is outside 0..{x.shape[-1]}")
    index_dtype = graph[op.outputs[1]].dtype

    def topk_v2(x, _k=None):
        order = np.argsort(_descending_key(x), axis=-1, kind="stable")[..., :k]
        return np.take_along_axis(x, order, axis=-1), order.astype(index_dtype)

    return topk_v2


def _descending_key(x: np.ndarray) -> np.ndarray:
    """Values whose ascending order is ``x``'s descending order, without overflow for integers."""
    if x.dtype.kind == "f":
        return -x
    return ~x.astype(np.int64)

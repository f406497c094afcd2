"""ReduceMean/Max/Min/Sum/Prod -> MEAN / REDUCE_MAX / REDUCE_MIN / SUM / REDUCE_PROD over storage axes."""
from __future__ import annotations

import numpy as np

from .. import layout
from . import rule

REDUCERS = {"ReduceMean": "MEAN", "ReduceMax": "REDUCE_MAX", "ReduceMin": "REDUCE_MIN", "ReduceSum": "SUM",
            "ReduceProd": "REDUCE_PROD"}


def reduce_axes(ctx, node, attrs, rank: int) -> list:
    axes_as_input = ctx.opset >= 18 or (node.op_type == "ReduceSum" and ctx.opset >= 13)
    if axes_as_input:
        axes = ctx.optional_const(node, 1, None)
        axes = None if axes is None or np.asarray(axes).size == 0 else list(np.asarray(axes).reshape(-1))
    else:
        axes = attrs.get("axes")
    if axes is None:
        return [] if attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(layout.normalize_axis(int(a), rank) for a in axes)


def reduced_perm(perm: tuple, axes: list) -> tuple:
    """Layout after dropping ``axes``: the remaining axes keep their storage order, renumbered."""
    return tuple(a - sum(1 for r in axes if r < a) for a in perm if a not in axes)


@rule(*REDUCERS)
def convert_reduce(ctx, node, attrs):
    value = ctx.value(node.input[0])
    axes = reduce_axes(ctx, node, attrs, value.rank)
    keep = bool(attrs.get("keepdims", 1))
    if not axes:
        ctx.alias(node.output[0], value)
        return
    out_perm = value.perm if keep else reduced_perm(value.perm, axes)
    out = ctx.define(node.output[0], out_perm)
    storage_axes = sorted(layout.storage_axis(value.perm, a) for a in axes)
    ctx.emit(REDUCERS[node.op_type], [value.ir, ctx.int32_tensor(f"{out}/axes", storage_axes)], [out],
             {"keep_dims": keep}, node)

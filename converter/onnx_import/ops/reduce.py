"""ReduceMean/Max/Min/Sum/Prod -> MEAN / REDUCE_MAX / REDUCE_MIN / SUM / REDUCE_PROD over storage axes;
ReduceSumSquare/L1/L2/LogSumExp composed of those and elementwise builtins."""
from __future__ import annotations

import numpy as np

from edgeq.runtime.ir import ModelError

from .. import layout
from . import node_label, rule

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


# -- reductions TFLite lacks, composed of its builtins -----------------------------------------------
# With noop_with_empty_axes and no axes, each reduces over nothing: the elementwise part alone.

def reduction_setup(ctx, node, attrs):
    """(input value, ONNX axes, keepdims, output IR name) of a float32 reduction."""
    value = ctx.value(node.input[0])
    if value.dtype != np.float32:
        raise ModelError(f"{node_label(node)}: {node.op_type} on {value.dtype.name} is supported on float32 only")
    axes = reduce_axes(ctx, node, attrs, value.rank)
    keep = bool(attrs.get("keepdims", 1))
    out = ctx.define(node.output[0], value.perm if keep or not axes else reduced_perm(value.perm, axes))
    return value, axes, keep, out


def emit_reducer(ctx, node, tfl_type: str, src: str, value, axes: list, keep: bool, out: str) -> None:
    """``tfl_type`` over the storage axes of ONNX ``axes``; with no axes, a plain copy into ``out``."""
    if not axes:
        emit_copy(ctx, node, src, out)
        return
    storage_axes = sorted(layout.storage_axis(value.perm, a) for a in axes)
    ctx.emit(tfl_type, [src, ctx.int32_tensor(f"{out}/axes", storage_axes)], [out], {"keep_dims": keep}, node)


@rule("ReduceSumSquare", "ReduceL1", "ReduceL2")
def convert_reduce_norm(ctx, node, attrs):
    """SUM(x * x), SUM(|x|), SQRT(SUM(x * x))."""
    value, axes, keep, out = reduction_setup(ctx, node, attrs)
    terms = ctx.temp(f"{out}/terms", ctx.graph[value.ir].shape)
    if node.op_type == "ReduceL1":
        ctx.emit("ABS", [value.ir], [terms], {}, node)
    else:
        ctx.emit("MUL", [value.ir, value.ir], [terms], {"fused_activation_function": "NONE"}, node)
    if node.op_type != "ReduceL2":
        emit_reducer(ctx, node, "SUM", terms, value, axes, keep, out)
        return
    total = ctx.temp(f"{out}/sum_of_squares", ctx.graph[out].shape)
    emit_reducer(ctx, node, "SUM", terms, value, axes, keep, total)
    ctx.emit("SQRT", [total], [out], {}, node)


@rule("ReduceLogSumExp")
def convert_reduce_log_sum_exp(ctx, node, attrs):
    """log(SUM(exp(x - m))) + m with m = REDUCE_MAX(x): no exp overflows, and the largest term is 1."""
    value, axes, keep, out = reduction_setup(ctx, node, attrs)
    shape = ctx.graph[value.ir].shape
    storage_axes = [layout.storage_axis(value.perm, a) for a in axes]
    kept_shape = tuple(1 if j in storage_axes else d for j, d in enumerate(shape))
    peak, total, log_total = (ctx.temp(f"{out}/{tag}", kept_shape) for tag in ("max", "sum_exp", "log_sum_exp"))
    shifted, exponentials = (ctx.temp(f"{out}/{tag}", shape) for tag in ("shifted", "exp"))
    with_peak = out if keep or not axes else ctx.temp(f"{out}/kept_dims", kept_shape)
    no_activation = {"fused_activation_function": "NONE", "pot_scale_int16": False}
    emit_reducer(ctx, node, "REDUCE_MAX", value.ir, value, axes, True, peak)
    ctx.emit("SUB", [value.ir, peak], [shifted], no_activation, node)
    ctx.emit("EXP", [shifted], [exponentials], {}, node)
    emit_reducer(ctx, node, "SUM", exponentials, value, axes, True, total)
    ctx.emit("LOG", [total], [log_total], {}, node)
    ctx.emit("ADD", [log_total, peak], [with_peak], no_activation, node)
    if with_peak != out:
        emit_copy(ctx, node, with_peak, out)


def emit_copy(ctx, node, src: str, out: str) -> None:
    """``src`` into ``out``, dropping or keeping unit axes: a RESHAPE."""
    shape = list(ctx.graph[out].shape)
    ctx.emit("RESHAPE", [src, ctx.int32_tensor(f"{out}/shape", shape)], [out], {"new_shape": shape}, node)

"""Reshape-like ops, Transpose, Concat, Split, Slice, Gather, Pad, Expand, DepthToSpace/SpaceToDepth, Where,
Tile, CumSum and TopK.

These mostly rewrite layouts rather than move data: Transpose only changes the layout; Reshape,
Flatten, Squeeze and Unsqueeze pick the output layout in which they are a plain storage reshape;
a flatten of a feature map that feeds FULLY_CONNECTED keeps NHWC order and lets the weights absorb it.
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime.ir import ModelError

from .. import layout
from ..context import Value
from ..padding import NHWC
from . import node_label, rule
from .elementwise import broadcast_shape, reference_perm


def feeds_fully_connected_only(ctx, name: str) -> bool:
    """True if every consumer is a Gemm/MatMul taking ``name`` as A with constant 2-D weights."""
    if name in ctx.graph_outputs:
        return False
    users = ctx.onnx_consumers(name)
    if not users:
        return False
    for user in users:
        if user.op_type not in ("Gemm", "MatMul") or user.input[0] != name or name in user.input[1:]:
            return False
        if not ctx.is_const(user.input[1]) or ctx.const(user.input[1]).ndim != 2:
            return False
        if user.op_type == "Gemm" and ctx.attrs(user).get("transA", 0):
            return False
    return True


def flatten_for_fully_connected(ctx, value: Value, out_name: str, out_shape: tuple):
    """Flatten in storage order; record which ONNX column each stored column holds."""
    for batch_axes in range(value.rank):
        if int(np.prod(value.shape[:batch_axes])) != out_shape[0]:
            continue
        order = layout.flattened_feature_order(value.shape, value.perm, batch_axes)
        if order is not None:
            return order
    return None


def emit_reshape(ctx, node, in_name: str, out_name: str) -> None:
    value = ctx.value(in_name)
    out_shape = tuple(ctx.shape(out_name))
    template = layout.nhwc_perm(len(out_shape))
    free = layout.reshape_output_layout(value.shape, value.perm, out_shape, template)
    if free is None and value.feature_order is None and len(out_shape) == 2 and feeds_fully_connected_only(ctx, out_name):
        order = flatten_for_fully_connected(ctx, value, out_name, out_shape)
        if order is not None:
            out = ctx.define(out_name, layout.identity(2), out_shape, feature_order=order)
            emit_storage_reshape(ctx, node, value.ir, out)
            return
    if value.feature_order is not None:
        raise ModelError(f"{node_label(node)}: internal: reshaping a flatten that feeds FULLY_CONNECTED")
    if free is not None:
        src = value.ir
        out_perm = free
    else:
        required = layout.reshape_input_layout(value.shape, value.perm, out_shape, template)
        out_perm = template if required is not None else layout.identity(len(out_shape))
        required = required if required is not None else layout.identity(value.rank)
        src = ctx.stored_value(value, required, key=in_name)
    out = ctx.define(out_name, out_perm, out_shape)
    emit_storage_reshape(ctx, node, src, out)


def emit_storage_reshape(ctx, node, src: str, out: str) -> None:
    shape = list(ctx.graph[out].shape)
    ctx.emit("RESHAPE", [src, ctx.int32_tensor(f"{out}/shape", shape)], [out], {"new_shape": shape}, node)


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def convert_reshape(ctx, node, attrs):
    emit_reshape(ctx, node, node.input[0], node.output[0])


@rule("Transpose")
def convert_transpose(ctx, node, attrs):
    """Only the layout changes: the data stays where it is until an op needs another layout."""
    value = ctx.value(node.input[0])
    perm = tuple(attrs.get("perm", tuple(reversed(range(value.rank)))))
    new_perm = layout.after_transpose(value.perm, perm)
    ctx.alias(node.output[0], Value(value.ir, new_perm, tuple(value.shape[a] for a in perm), value.dtype))


@rule("Concat")
def convert_concat(ctx, node, attrs):
    names = [n for n in node.input if n and int(np.prod(ctx.shape(n))) > 0]
    perm = reference_perm(ctx, names)
    axis = layout.storage_axis(perm, int(attrs["axis"]))
    inputs = [ctx.broadcast_operand(n, perm) for n in names]
    out = ctx.define(node.output[0], perm)
    ctx.emit("CONCATENATION", inputs, [out], {"axis": axis, "fused_activation_function": "NONE"}, node)


@rule("Split")
def convert_split(ctx, node, attrs):
    value = ctx.value(node.input[0])
    axis = layout.normalize_axis(int(attrs.get("axis", 0)), value.rank)
    sizes = [ctx.shape(o)[axis] for o in node.output]
    outs = [ctx.define(o, value.perm) for o in node.output]
    base = node.output[0]
    inputs = [value.ir, ctx.int32_tensor(f"{base}/size_splits", sizes),
              ctx.int32_tensor(f"{base}/axis", layout.storage_axis(value.perm, axis))]
    ctx.emit("SPLIT_V", inputs, outs, {"num_splits": len(outs)}, node)


def slice_params(ctx, node, attrs, shape) -> list:
    """[(begin, end, step, count)] per ONNX axis, after ONNX's clamping rules."""
    rank = len(shape)
    if ctx.opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes, steps = attrs.get("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = ctx.const(node.input[1]), ctx.const(node.input[2])
        axes = ctx.optional_const(node, 3, np.arange(len(starts)))
        steps = ctx.optional_const(node, 4, np.ones(len(starts), np.int64))
    params = [(0, shape[a], 1, shape[a]) for a in range(rank)]
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = layout.normalize_axis(int(axis), rank)
        if step == 0:
            raise ModelError(f"{node_label(node)}: slice step 0")
        clamp = lambda v: max(min(int(v), 2**62), -2**62)  # noqa: E731
        span = range(shape[axis])[slice(clamp(start), clamp(end), int(step))]
        params[axis] = (span.start, span.start + len(span) * span.step, span.step, len(span))
    return params


@rule("Slice")
def convert_slice(ctx, node, attrs):
    value = ctx.value(node.input[0])
    params = [slice_params(ctx, node, attrs, value.shape)[a] for a in value.perm]
    if any(p[3] == 0 for p in params):
        raise ModelError(f"{node_label(node)}: the slice is empty")
    out = ctx.define(node.output[0], value.perm)
    base = out
    if all(step == 1 for _, _, step, _ in params):
        begin = [p[0] for p in params]
        size = [p[3] for p in params]
        ctx.emit("SLICE", [value.ir, ctx.int32_tensor(f"{base}/begin", begin), ctx.int32_tensor(f"{base}/size", size)],
                 [out], {}, node)
        return
    end_mask = sum(1 << j for j, p in enumerate(params) if p[1] < 0)
    inputs = [value.ir, ctx.int32_tensor(f"{base}/begin", [p[0] for p in params]),
              ctx.int32_tensor(f"{base}/end", [max(p[1], 0) for p in params]),
              ctx.int32_tensor(f"{base}/strides", [p[2] for p in params])]
    options = {"begin_mask": 0, "end_mask": end_mask, "ellipsis_mask": 0, "new_axis_mask": 0,
               "shrink_axis_mask": 0, "offset": False}
    ctx.emit("STRIDED_SLICE", inputs, [out], options, node)


@rule("Gather")
def convert_gather(ctx, node, attrs):
    data_name, idx_name = node.input
    if ctx.is_const(data_name):
        # An embedding lookup: constant table, computed indices.
        idx = ctx.value(idx_name)
        axis = layout.normalize_axis(int(attrs.get("axis", 0)), ctx.const(data_name).ndim)
        table = ctx.const_tensor(data_name, ctx.const(data_name))
        idx_ir = ctx.stored(idx_name, layout.identity(idx.rank))
        out = ctx.define(node.output[0], layout.identity(len(ctx.shape(node.output[0]))))
        ctx.emit("GATHER", [table, idx_ir], [out], {"axis": axis, "batch_dims": 0}, node)
        return
    if not ctx.is_const(idx_name):
        raise ModelError(f"{node_label(node)}: Gather with computed indices on a computed tensor is not supported")
    value = ctx.value(data_name)
    axis = layout.normalize_axis(int(attrs.get("axis", 0)), value.rank)
    indices = ctx.const(idx_name).astype(np.int64)
    indices = np.where(indices < 0, indices + value.shape[axis], indices).astype(np.int32)
    k = indices.ndim
    out_perm = []
    for a in value.perm:
        if a < axis:
            out_perm.append(a)
        elif a == axis:
            out_perm.extend(range(axis, axis + k))
        else:
            out_perm.append(a + k - 1)
    out = ctx.define(node.output[0], tuple(out_perm))
    inputs = [value.ir, ctx.const_tensor(f"{out}/indices", indices)]
    ctx.emit("GATHER", inputs, [out], {"axis": layout.storage_axis(value.perm, axis), "batch_dims": 0}, node)


@rule("Pad")
def convert_pad(ctx, node, attrs):
    value = ctx.value(node.input[0])
    rank = value.rank
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if ctx.opset < 11:
        pads, fill = list(attrs["pads"]), float(attrs.get("value", 0.0))
        axes = list(range(rank))
    else:
        pads = [int(p) for p in ctx.const(node.input[1])]
        fill_array = ctx.optional_const(node, 2, None)
        fill = 0.0 if fill_array is None else float(np.asarray(fill_array).reshape(-1)[0]) if fill_array.size else 0.0
        axes = [layout.normalize_axis(int(a), rank) for a in ctx.optional_const(node, 3, np.arange(rank))]
    n = len(axes)
    per_axis = {a: (pads[i], pads[i + n]) for i, a in enumerate(axes)}
    if any(p < 0 for pair in per_axis.values() for p in pair):
        raise ModelError(f"{node_label(node)}: negative pads (cropping) are not supported")
    paddings = np.array([per_axis.get(a, (0, 0)) for a in value.perm], dtype=np.int32)
    out = ctx.define(node.output[0], value.perm)
    inputs = [value.ir, ctx.int32_tensor(f"{out}/paddings", paddings)]
    if mode == "constant":
        if fill == 0.0:
            ctx.emit("PAD", inputs, [out], {}, node)
        else:
            inputs.append(ctx.const_tensor(f"{out}/pad_value", np.array(fill, dtype=value.dtype)))
            ctx.emit("PADV2", inputs, [out], {}, node)
    elif mode == "reflect":
        ctx.emit("MIRROR_PAD", inputs, [out], {"mode": "REFLECT"}, node)
    else:
        raise ModelError(f"{node_label(node)}: Pad mode '{mode}' is not supported (constant and reflect are)")


@rule("Expand")
def convert_expand(ctx, node, attrs):
    out_shape = ctx.shape(node.output[0])
    perm = reference_perm(ctx, [node.input[0]]) if len(ctx.shape(node.input[0])) == len(out_shape) else layout.identity(len(out_shape))
    src = ctx.broadcast_operand(node.input[0], perm)
    out = ctx.define(node.output[0], perm, out_shape)
    shape = list(ctx.graph[out].shape)
    ctx.emit("BROADCAST_TO", [src, ctx.int32_tensor(f"{out}/shape", shape)], [out], {}, node)


@rule("DepthToSpace", "SpaceToDepth")
def convert_depth_space(ctx, node, attrs):
    mode = attrs.get("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "DCR":  # TFLite orders the depth axis as ONNX's DCR mode does
        raise ModelError(f"{node_label(node)}: {node.op_type} mode '{mode}' is not supported (DCR is)")
    x_ir = ctx.stored(node.input[0], NHWC)
    out = ctx.define(node.output[0], NHWC)
    tfl_type = "DEPTH_TO_SPACE" if node.op_type == "DepthToSpace" else "SPACE_TO_DEPTH"
    ctx.emit(tfl_type, [x_ir], [out], {"block_size": int(attrs["blocksize"])}, node)


@rule("Where")
def convert_where(ctx, node, attrs):
    """SELECT_V2 broadcasts condition, x and y as ONNX Where does; the result takes the layout of the
    highest-rank activation, constants (an attention mask) are laid out to match it."""
    names = list(node.input)
    if ctx.dtype(names[1]).name not in SELECT_TYPES:
        raise ModelError(f"{node_label(node)}: Where on {ctx.dtype(names[1]).name} values: TFLite's SELECT_V2 "
                         f"selects only {', '.join(sorted(SELECT_TYPES))}")
    perm = reference_perm(ctx, names)
    shape = broadcast_shape(ctx, names)
    if len(shape) != len(perm):
        perm = layout.identity(len(shape))
    out = ctx.define(node.output[0], perm, shape)
    ctx.emit("SELECT_V2", [ctx.broadcast_operand(n, perm) for n in names], [out], {}, node)


# The value types LiteRT's SELECT_V2 kernel selects.
SELECT_TYPES = {"bool", "float32", "int8", "uint8", "int16", "int32", "int64"}


@rule("Tile")
def convert_tile(ctx, node, attrs):
    """Constant repeats, laid out like the input's storage axes."""
    if not ctx.is_const(node.input[1]):
        raise ModelError(f"{node_label(node)}: the repeats must be a constant")
    value = ctx.value(node.input[0])
    repeats = [int(r) for r in np.asarray(ctx.const(node.input[1])).reshape(-1)]
    out = ctx.define(node.output[0], value.perm)
    multiples = [repeats[a] for a in value.perm]
    ctx.emit("TILE", [value.ir, ctx.int32_tensor(f"{out}/multiples", multiples)], [out], {}, node)


# The types TFLite's CUMSUM adds; narrower integers would wrap differently, so they are not widened.
CUMSUM_TYPES = {"float32", "int32", "int64"}


@rule("CumSum")
def convert_cumsum(ctx, node, attrs):
    value = ctx.value(node.input[0])
    if value.dtype.name not in CUMSUM_TYPES:
        raise ModelError(f"{node_label(node)}: CumSum on {value.dtype.name}: TFLite's CUMSUM adds float32, int32, int64")
    if not ctx.is_const(node.input[1]):
        raise ModelError(f"{node_label(node)}: the axis must be a constant")
    axis = layout.normalize_axis(int(np.asarray(ctx.const(node.input[1])).reshape(-1)[0]), value.rank)
    out = ctx.define(node.output[0], value.perm)
    options = {"exclusive": bool(attrs.get("exclusive", 0)), "reverse": bool(attrs.get("reverse", 0))}
    axis_ir = ctx.const_tensor(f"{out}/axis", np.array(layout.storage_axis(value.perm, axis), np.int32))
    ctx.emit("CUMSUM", [value.ir, axis_ir], [out], options, node)


# The value types TFLite's TOPK_V2 sorts.
TOPK_TYPES = {"float32", "int32", "int64", "int8", "uint8"}


@rule("TopK")
def convert_topk(ctx, node, attrs):
    """TOPK_V2 along the last storage axis (a TRANSPOSE first when the ONNX axis is stored elsewhere); its
    int32 indices are CAST to ONNX's int64. The smallest k of float32 values are the largest of -x, negated;
    sorted=0 leaves the order free, so the sorted order serves."""
    value = ctx.value(node.input[0])
    largest = bool(attrs.get("largest", 1))
    if value.dtype.name not in TOPK_TYPES or (not largest and value.dtype != np.float32):
        kinds = "float32, int32, int64, int8, uint8" if largest else "float32 (largest=0)"
        raise ModelError(f"{node_label(node)}: TopK on {value.dtype.name} is not supported (TOPK_V2 sorts {kinds})")
    if not ctx.is_const(node.input[1]):
        raise ModelError(f"{node_label(node)}: K must be a constant")
    k = int(np.asarray(ctx.const(node.input[1])).reshape(-1)[0])
    axis = layout.normalize_axis(int(attrs.get("axis", -1)), value.rank)
    perm = tuple(a for a in value.perm if a != axis) + (axis,)
    x_ir = ctx.stored_value(value, perm, key=node.input[0])
    values_out = ctx.define(node.output[0], perm)
    indices_out = ctx.define(node.output[1], perm, dtype=np.int64)
    shape = ctx.graph[values_out].shape
    indices = ctx.temp(f"{indices_out}/int32", shape, np.int32)
    k_ir = ctx.const_tensor(f"{values_out}/k", np.array(k, np.int32))
    if largest:
        ctx.emit("TOPK_V2", [x_ir, k_ir], [values_out, indices], {}, node)
    else:
        negated, negated_top = ctx.temp(f"{values_out}/negated_input", ctx.graph[x_ir].shape), ctx.temp(f"{values_out}/negated", shape)
        ctx.emit("NEG", [x_ir], [negated], {}, node)
        ctx.emit("TOPK_V2", [negated, k_ir], [negated_top, indices], {}, node)
        ctx.emit("NEG", [negated_top], [values_out], {}, node)
    ctx.emit("CAST", [indices], [indices_out], {"in_data_type": "INT32", "out_data_type": "INT64"}, node)

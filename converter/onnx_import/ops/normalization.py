"""BatchNormalization -> per-channel MUL + ADD (folded into a preceding conv by passes.fold_batch_norm); LRN;
LayerNormalization and InstanceNormalization -> MEAN, RSQRT and arithmetic."""
from __future__ import annotations

import numpy as np

from edgeq.runtime.ir import ModelError

from .. import layout
from ..padding import NHWC
from . import node_label, rule


def channel_constant(ctx, node, tag: str, data: np.ndarray, rank: int) -> str:
    """Register a per-channel constant shaped to broadcast along ONNX axis 1 of a rank-``rank`` tensor."""
    name = f"{node.output[0]}/{tag}"
    ctx.constants[name] = data.astype(np.float32).reshape((-1,) + (1,) * (rank - 2))
    return name


@rule("BatchNormalization")
def convert_batch_norm(ctx, node, attrs):
    if attrs.get("training_mode", 0):
        raise ModelError(f"{node_label(node)}: training-mode BatchNormalization is not supported")
    if len([o for o in node.output if o]) > 1:
        raise ModelError(f"{node_label(node)}: running mean/var outputs are not supported")
    gamma, beta, mean, var = (ctx.const(n).astype(np.float64) for n in node.input[1:5])
    scale = gamma / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    shift = beta - mean * scale
    value = ctx.value(node.input[0])
    perm = value.perm
    scale_ir = ctx.broadcast_operand(channel_constant(ctx, node, "bn_scale", scale, value.rank), perm)
    shift_ir = ctx.broadcast_operand(channel_constant(ctx, node, "bn_shift", shift, value.rank), perm)
    out = ctx.define(node.output[0], perm)
    scaled = ctx.temp(f"{out}/scaled", ctx.graph[out].shape)
    ctx.emit("MUL", [value.ir, scale_ir], [scaled], {"fused_activation_function": "NONE"}, node)
    ctx.emit("ADD", [scaled, shift_ir], [out], {"fused_activation_function": "NONE", "pot_scale_int16": False}, node)


@rule("LRN")
def convert_lrn(ctx, node, attrs):
    """ONNX sums squares over size channels centred on c and scales by alpha/size; TFLite over c±radius."""
    size = int(attrs["size"])
    if size % 2 == 0:
        raise ModelError(f"{node_label(node)}: LRN with an even size ({size}) has no TFLite equivalent")
    if len(ctx.shape(node.input[0])) != 4:
        raise ModelError(f"{node_label(node)}: LRN is supported on 4-D inputs only")
    x_ir = ctx.stored(node.input[0], NHWC)
    out = ctx.define(node.output[0], NHWC)
    options = {
        "radius": (size - 1) // 2,
        "bias": float(attrs.get("bias", 1.0)),
        "alpha": float(attrs.get("alpha", 1e-4)) / size,
        "beta": float(attrs.get("beta", 0.75)),
    }
    ctx.emit("LOCAL_RESPONSE_NORMALIZATION", [x_ir], [out], options, node)


@rule("LayerNormalization")
def convert_layer_norm(ctx, node, attrs):
    """(x - mean) * rsqrt(var + epsilon) * scale + bias over ONNX axes axis..rank-1, in TFLite builtins:
    MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, MUL, ADD (each with an int8 kernel). The reductions run over the storage
    axes those ONNX axes live in, so an NHWC feature map needs no TRANSPOSE."""
    value = ctx.value(node.input[0])
    if value.dtype != np.float32:
        raise ModelError(f"{node_label(node)}: LayerNormalization on {value.dtype.name} is supported on float32 only")
    axis = layout.normalize_axis(int(attrs.get("axis", -1)), value.rank)
    perm = value.perm
    shape = ctx.graph[value.ir].shape
    storage_axes = sorted(layout.storage_axis(perm, a) for a in range(axis, value.rank))
    reduced_shape = tuple(1 if j in storage_axes else d for j, d in enumerate(shape))
    stats_shape = tuple(value.shape[:axis]) + (1,) * (value.rank - axis)
    out = ctx.define(node.output[0], perm)
    axes_ir = ctx.int32_tensor(f"{out}/axes", storage_axes)
    mean = layer_norm_statistic(ctx, node, 1, stats_shape, perm) or ctx.temp(f"{out}/mean", reduced_shape)
    ctx.emit("MEAN", [value.ir, axes_ir], [mean], {"keep_dims": True}, node)
    centered, squared, variance, shifted, normalized = (
        ctx.temp(f"{out}/{tag}", shape_of)
        for tag, shape_of in (("centered", shape), ("squared", shape), ("variance", reduced_shape),
                              ("variance_plus_epsilon", reduced_shape), ("normalized", shape)))
    inverse_std = layer_norm_statistic(ctx, node, 2, stats_shape, perm) or ctx.temp(f"{out}/inverse_std", reduced_shape)
    epsilon = ctx.const_tensor(f"{out}/epsilon", np.array(float(attrs.get("epsilon", 1e-5)), np.float32))
    no_activation = {"fused_activation_function": "NONE"}
    ctx.emit("SUB", [value.ir, mean], [centered], {**no_activation, "pot_scale_int16": False}, node)
    ctx.emit("MUL", [centered, centered], [squared], no_activation, node)
    ctx.emit("MEAN", [squared, axes_ir], [variance], {"keep_dims": True}, node)
    ctx.emit("ADD", [variance, epsilon], [shifted], {**no_activation, "pot_scale_int16": False}, node)
    ctx.emit("RSQRT", [shifted], [inverse_std], {}, node)
    has_bias = len(node.input) > 2 and bool(node.input[2])
    ctx.emit("MUL", [centered, inverse_std], [normalized], no_activation, node)
    scaled = ctx.temp(f"{out}/scaled", shape) if has_bias else out
    ctx.emit("MUL", [normalized, ctx.broadcast_operand(node.input[1], perm)], [scaled], no_activation, node)
    if has_bias:
        ctx.emit("ADD", [scaled, ctx.broadcast_operand(node.input[2], perm)], [out],
                 {**no_activation, "pot_scale_int16": False}, node)


def layer_norm_statistic(ctx, node, index: int, shape: tuple, perm: tuple):
    """The IR tensor for the optional Mean (1) or InvStdDev (2) output when the model uses it, else None."""
    if len(node.output) <= index or not node.output[index]:
        return None
    name = node.output[index]
    if not ctx.onnx_consumers(name) and name not in ctx.graph_outputs:
        return None
    return ctx.define(name, perm, shape, np.float32)


@rule("InstanceNormalization")
def convert_instance_norm(ctx, node, attrs):
    """(x - mean) * rsqrt(var + epsilon) * scale[c] + bias[c], the statistics per sample and channel over the
    spatial axes: MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, MUL, ADD, reducing over the storage axes H, W of
    an NHWC map, so no TRANSPOSE."""
    value = ctx.value(node.input[0])
    if value.dtype != np.float32:
        raise ModelError(f"{node_label(node)}: InstanceNormalization on {value.dtype.name} is supported on float32 only")
    if value.rank < 3:
        raise ModelError(f"{node_label(node)}: InstanceNormalization needs an input of rank 3 or more")
    for name in node.input[1:3]:
        if not ctx.is_const(name):
            raise ModelError(f"{node_label(node)}: the scale and bias must be constants")
    perm = value.perm
    shape = ctx.graph[value.ir].shape
    storage_axes = sorted(layout.storage_axis(perm, a) for a in range(2, value.rank))
    reduced_shape = tuple(1 if j in storage_axes else d for j, d in enumerate(shape))
    out = ctx.define(node.output[0], perm)
    axes_ir = ctx.int32_tensor(f"{out}/axes", storage_axes)
    mean, variance, shifted, inverse_std = (ctx.temp(f"{out}/{tag}", reduced_shape) for tag in
                                            ("mean", "variance", "variance_plus_epsilon", "inverse_std"))
    centered, squared, normalized, scaled = (ctx.temp(f"{out}/{tag}", shape) for tag in
                                             ("centered", "squared", "normalized", "scaled"))
    epsilon = ctx.const_tensor(f"{out}/epsilon", np.array(float(attrs.get("epsilon", 1e-5)), np.float32))
    scale_ir, bias_ir = (ctx.broadcast_operand(channel_constant(ctx, node, tag, ctx.const(name), value.rank), perm)
                         for tag, name in (("instance_norm_scale", node.input[1]), ("instance_norm_bias", node.input[2])))
    no_activation = {"fused_activation_function": "NONE"}
    add_options = {**no_activation, "pot_scale_int16": False}
    ctx.emit("MEAN", [value.ir, axes_ir], [mean], {"keep_dims": True}, node)
    ctx.emit("SUB", [value.ir, mean], [centered], add_options, node)
    ctx.emit("MUL", [centered, centered], [squared], no_activation, node)
    ctx.emit("MEAN", [squared, axes_ir], [variance], {"keep_dims": True}, node)
    ctx.emit("ADD", [variance, epsilon], [shifted], add_options, node)
    ctx.emit("RSQRT", [shifted], [inverse_std], {}, node)
    ctx.emit("MUL", [centered, inverse_std], [normalized], no_activation, node)
    ctx.emit("MUL", [normalized, scale_ir], [scaled], no_activation, node)
    ctx.emit("ADD", [scaled, bias_ir], [out], add_options, node)

"""BatchNormalization -> per-channel MUL + ADD (folded into a preceding conv by passes.fold_batch_norm); LRN."""
from __future__ import annotations

import numpy as np

from runtime.model import ModelError

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

"""Elementwise unary ops and activations; all keep their input's layout. Softplus, Mish, Selu and Celu,
which TFLite lacks, are composed of its builtins."""
from __future__ import annotations

import numpy as np

from edgeq.runtime.ir import ModelError
from edgeq.runtime.kernels.common import ACTIVATION_BOUNDS

from . import node_label, rule
from .elementwise import compute_dtype, emit_cast, operand_as, tflite_type_name, wide_output

UNARY = {
    "Relu": "RELU",
    "Sigmoid": "LOGISTIC",
    "Tanh": "TANH",
    "Exp": "EXP",
    "Log": "LOG",
    "Sqrt": "SQRT",
    "Abs": "ABS",
    "Neg": "NEG",
    "Floor": "FLOOR",
    "Ceil": "CEIL",
    "Sin": "SIN",
    "Cos": "COS",
    "Elu": "ELU",
    "HardSwish": "HARD_SWISH",
    "Round": "ROUND",
    "Sign": "SIGN",
    "Not": "LOGICAL_NOT",
}


def emit_unary(ctx, node, tfl_type: str, options=None) -> None:
    value = ctx.value(node.input[0])
    out = ctx.define(node.output[0], value.perm)
    ctx.emit(tfl_type, [value.ir], [out], options or {}, node)


@rule(*UNARY)
def convert_unary(ctx, node, attrs):
    if node.op_type == "Elu" and float(attrs.get("alpha", 1.0)) != 1.0:
        emit_scaled_elu(ctx, node, float(attrs["alpha"]))
        return
    emit_unary(ctx, node, UNARY[node.op_type])


def emit_scaled_elu(ctx, node, alpha: float) -> None:
    """TFLite's ELU has alpha 1. With e = ELU(x): Elu_alpha(x) = e + (alpha - 1) * min(e, 0), which is x
    for x > 0 and alpha * (exp(x) - 1) otherwise."""
    value = ctx.value(node.input[0])
    out = ctx.define(node.output[0], value.perm)
    shape = ctx.graph[out].shape
    elu, negative, scaled = (ctx.temp(f"{out}/{tag}", shape) for tag in ("elu", "negative_part", "scaled"))
    ctx.emit("ELU", [value.ir], [elu], {}, node)
    ctx.emit("MINIMUM", [elu, ctx.const_tensor(f"{out}/zero", np.array(0.0, np.float32))], [negative], {}, node)
    ctx.emit("MUL", [negative, ctx.const_tensor(f"{out}/alpha_minus_one", np.array(alpha - 1.0, np.float32))],
             [scaled], {"fused_activation_function": "NONE"}, node)
    ctx.emit("ADD", [elu, scaled], [out], {"fused_activation_function": "NONE", "pot_scale_int16": False}, node)


@rule("Identity", "Dropout")
def convert_identity(ctx, node, attrs):
    wants_mask = len(node.output) > 1 and (ctx.onnx_consumers(node.output[1]) or node.output[1] in ctx.graph_outputs)
    if node.op_type == "Dropout" and (wants_mask or is_training(ctx, node)):
        raise ModelError(f"{node_label(node)}: training-mode Dropout and its mask output are not supported")
    value = ctx.value(node.input[0])
    out = ctx.define(node.output[0], value.perm)
    # Only reached when the node's output is a graph output: otherwise load.py rewired around it.
    ctx.emit("RESHAPE", [value.ir, ctx.int32_tensor(f"{out}/shape", ctx.graph[out].shape)], [out],
             {"new_shape": list(ctx.graph[out].shape)}, node)


def is_training(ctx, node) -> bool:
    flag = ctx.optional_const(node, 2, np.array(False)) if ctx.opset >= 12 else np.array(False)
    return bool(np.asarray(flag).reshape(-1)[0]) if np.asarray(flag).size else False


@rule("LeakyRelu")
def convert_leaky_relu(ctx, node, attrs):
    emit_unary(ctx, node, "LEAKY_RELU", {"alpha": float(attrs.get("alpha", 0.01))})


@rule("PRelu")
def convert_prelu(ctx, node, attrs):
    value = ctx.value(node.input[0])
    slope = ctx.broadcast_operand(node.input[1], value.perm)
    out = ctx.define(node.output[0], value.perm)
    ctx.emit("PRELU", [value.ir, slope], [out], {}, node)


def clip_bounds(ctx, node, attrs) -> tuple:
    if ctx.opset < 11:
        return attrs.get("min", -np.inf), attrs.get("max", np.inf)
    low = ctx.optional_const(node, 1, None)
    high = ctx.optional_const(node, 2, None)
    return (-np.inf if low is None else float(low)), (np.inf if high is None else float(high))


@rule("Clip")
def convert_clip(ctx, node, attrs):
    low, high = clip_bounds(ctx, node, attrs)
    value = ctx.value(node.input[0])
    tfl_type = {bounds: name for name, bounds in ACTIVATION_BOUNDS.items()}.get((low, high))
    # TFLite's RELU family reads int8/uint8/int16 as quantized; on plain integers Clip is MAXIMUM/MINIMUM,
    # and so is Clip(0, 1): the runtime has no kernel for that RELU.
    if tfl_type in ("RELU", "RELU6", "RELU_N1_TO_1") and value.dtype == np.float32:
        emit_unary(ctx, node, tfl_type)
        return
    out = ctx.define(node.output[0], value.perm)
    steps = [(op, bound) for op, bound in (("MAXIMUM", low), ("MINIMUM", high)) if np.isfinite(bound)]
    if not steps:
        ctx.emit("RESHAPE", [value.ir, ctx.int32_tensor(f"{out}/shape", ctx.graph[out].shape)], [out],
                 {"new_shape": list(ctx.graph[out].shape)}, node)
        return
    dtype = compute_dtype(node, "MAXIMUM", value.dtype)
    current = operand_as(ctx, value.ir, dtype, f"{out}/input", node)
    result = wide_output(ctx, out, dtype, node)
    for i, (op, bound) in enumerate(steps):
        target = result if i == len(steps) - 1 else ctx.temp(f"{out}/lower", ctx.graph[out].shape, dtype)
        bound_ir = ctx.const_tensor(f"{out}/{op.lower()}", np.array(bound).astype(dtype))
        ctx.emit(op, [current, bound_ir], [target], {}, node)
        current = target
    if result != out:
        emit_cast(ctx, result, out, node)


@rule("HardSigmoid")
def convert_hard_sigmoid(ctx, node, attrs):
    """max(0, min(1, alpha*x + beta)) = RELU6(6*alpha*x + 6*beta) / 6, all ops int8 quantization knows."""
    alpha = float(attrs.get("alpha", 0.2))
    beta = float(attrs.get("beta", 0.5))
    value = ctx.value(node.input[0])
    out = ctx.define(node.output[0], value.perm)
    shape = ctx.graph[out].shape
    base = out
    scaled = ctx.temp(f"{base}/scaled", shape)
    shifted = ctx.temp(f"{base}/shifted", shape)
    ctx.emit("MUL", [value.ir, ctx.const_tensor(f"{base}/six_alpha", np.array(6 * alpha, np.float32))], [scaled],
             {"fused_activation_function": "NONE"}, node)
    ctx.emit("ADD", [scaled, ctx.const_tensor(f"{base}/six_beta", np.array(6 * beta, np.float32))], [shifted],
             {"fused_activation_function": "RELU6", "pot_scale_int16": False}, node)
    ctx.emit("MUL", [shifted, ctx.const_tensor(f"{base}/one_sixth", np.array(1 / 6, np.float32))], [out],
             {"fused_activation_function": "NONE"}, node)


@rule("Gelu")
def convert_gelu(ctx, node, attrs):
    approximate = attrs.get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    emit_unary(ctx, node, "GELU", {"approximate": approximate == "tanh"})


@rule("Cast")
def convert_cast(ctx, node, attrs):
    value = ctx.value(node.input[0])
    target = ctx.dtype(node.output[0])
    if target == value.dtype:
        ctx.alias(node.output[0], value)
        return
    out = ctx.define(node.output[0], value.perm, dtype=target)
    ctx.emit("CAST", [value.ir], [out], {"in_data_type": tflite_type_name(value.dtype),
                                         "out_data_type": tflite_type_name(target)}, node)


def emit_softplus(ctx, node, x_ir: str, out: str) -> None:
    """TFLite has no SOFTPLUS. log(1 + exp(x)) = relu(x) + log1p(exp(-|x|)): exp never overflows, and every
    intermediate has a small range (exp(-|x|) in (0, 1], the logs in [0, log 2]), which int8 needs.
    TFLite has no LOG1P either: with w = 1 + u rounded, log1p(u) = (log(w) + u) - (w - 1), where w - 1 is
    exact and the last two terms take off the rounding error of 1 + u; a plain log(1 + exp(x)) loses
    most digits of softplus(x) for x < -8, where mish(x) = x * tanh(softplus(x)) still matters."""
    shape = ctx.graph[out].shape
    magnitude, negated, decay, rounded_sum, rounded_decay, log_sum, overshoot, soft, positive = (
        ctx.temp(f"{out}/{tag}", shape) for tag in (
            "magnitude", "negated_magnitude", "decay", "one_plus_decay", "rounded_decay", "log_one_plus_decay",
            "log_plus_decay", "log1p_decay", "positive_part"))
    no_activation = {"fused_activation_function": "NONE"}
    add_options = {**no_activation, "pot_scale_int16": False}
    one = ctx.const_tensor(f"{out}/one", np.array(1.0, np.float32))
    ctx.emit("ABS", [x_ir], [magnitude], {}, node)
    ctx.emit("MUL", [magnitude, ctx.const_tensor(f"{out}/minus_one", np.array(-1.0, np.float32))], [negated],
             no_activation, node)
    ctx.emit("EXP", [negated], [decay], {}, node)
    ctx.emit("ADD", [decay, one], [rounded_sum], add_options, node)
    ctx.emit("SUB", [rounded_sum, one], [rounded_decay], add_options, node)
    ctx.emit("LOG", [rounded_sum], [log_sum], {}, node)
    ctx.emit("ADD", [log_sum, decay], [overshoot], add_options, node)
    ctx.emit("SUB", [overshoot, rounded_decay], [soft], add_options, node)
    ctx.emit("RELU", [x_ir], [positive], {}, node)
    ctx.emit("ADD", [positive, soft], [out], add_options, node)


def float32_value(ctx, node):
    value = ctx.value(node.input[0])
    if value.dtype != np.float32:
        raise ModelError(f"{node_label(node)}: {node.op_type} on {value.dtype.name} is supported on float32 only")
    return value


@rule("Softplus")
def convert_softplus(ctx, node, attrs):
    value = float32_value(ctx, node)
    emit_softplus(ctx, node, value.ir, ctx.define(node.output[0], value.perm))


@rule("Mish")
def convert_mish(ctx, node, attrs):
    """x * tanh(softplus(x))."""
    value = float32_value(ctx, node)
    out = ctx.define(node.output[0], value.perm)
    softplus, tanh = (ctx.temp(f"{out}/{tag}", ctx.graph[out].shape) for tag in ("softplus", "tanh_softplus"))
    emit_softplus(ctx, node, value.ir, softplus)
    ctx.emit("TANH", [softplus], [tanh], {}, node)
    ctx.emit("MUL", [value.ir, tanh], [out], {"fused_activation_function": "NONE"}, node)


@rule("Selu")
def convert_selu(ctx, node, attrs):
    """gamma * (x if x > 0 else alpha * (exp(x) - 1)) = gamma * e + gamma * (alpha - 1) * min(e, 0), e = ELU(x)."""
    alpha = float(attrs.get("alpha", 1.67326319217681884765625))
    gamma = float(attrs.get("gamma", 1.05070102214813232421875))
    value = float32_value(ctx, node)
    out = ctx.define(node.output[0], value.perm)
    shape = ctx.graph[out].shape
    elu, negative, scaled_negative, scaled_elu = (ctx.temp(f"{out}/{tag}", shape) for tag in
                                                  ("elu", "negative_part", "scaled_negative_part", "scaled_elu"))
    no_activation = {"fused_activation_function": "NONE"}
    ctx.emit("ELU", [value.ir], [elu], {}, node)
    ctx.emit("MINIMUM", [elu, ctx.const_tensor(f"{out}/zero", np.array(0.0, np.float32))], [negative], {}, node)
    ctx.emit("MUL", [negative, ctx.const_tensor(f"{out}/negative_scale", np.array(gamma * (alpha - 1), np.float32))],
             [scaled_negative], no_activation, node)
    ctx.emit("MUL", [elu, ctx.const_tensor(f"{out}/gamma", np.array(gamma, np.float32))], [scaled_elu], no_activation, node)
    ctx.emit("ADD", [scaled_elu, scaled_negative], [out], {**no_activation, "pot_scale_int16": False}, node)


@rule("Celu")
def convert_celu(ctx, node, attrs):
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) = alpha * ELU(x / alpha)."""
    alpha = float(attrs.get("alpha", 1.0))
    value = float32_value(ctx, node)
    out = ctx.define(node.output[0], value.perm)
    if alpha == 1.0:
        ctx.emit("ELU", [value.ir], [out], {}, node)
        return
    shape = ctx.graph[out].shape
    shrunk, elu = (ctx.temp(f"{out}/{tag}", shape) for tag in ("shrunk", "elu"))
    no_activation = {"fused_activation_function": "NONE"}
    ctx.emit("MUL", [value.ir, ctx.const_tensor(f"{out}/inverse_alpha", np.array(1 / alpha, np.float32))], [shrunk],
             no_activation, node)
    ctx.emit("ELU", [shrunk], [elu], {}, node)
    ctx.emit("MUL", [elu, ctx.const_tensor(f"{out}/alpha", np.array(alpha, np.float32))], [out], no_activation, node)

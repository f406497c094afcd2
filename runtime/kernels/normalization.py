"""Normalizations over the channel (last) axis.

LOCAL_RESPONSE_NORMALIZATION: out = x / (bias + alpha * sum_{c-radius..c+radius} x^2) ^ beta.
L2_NORMALIZATION: out = x / max(sqrt(sum x^2), 1e-6); its int8 kernel is TFLite's
reference_integer_ops::L2Normalization: the integer sum of squared (x - zero point) gives an inverse
square root as a Q31 multiplier and shift (GetInvSqrtQuantizedMultiplierExp), which scales every
x - zero point to the fixed output scale 1/128 (zero point 0).
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime.fixedpoint import get_inv_sqrt_quantized_multiplier_exp, multiply_by_quantized_multiplier
from edgeq.runtime.kernels import check, register
from edgeq.runtime.kernels.common import require_float
from edgeq.runtime.ir import ModelError

L2_NORM_EPSILON = np.float32(1e-6)  # LiteRT's float kernel divides by at least this
L2_NORM_OUTPUT_SCALE_BITS = 7  # int8 output scale 1/128 = 2^-7


@register("LOCAL_RESPONSE_NORMALIZATION")
def prepare_local_response_normalization(op, graph):
    require_float(op, graph)
    channels = graph[op.inputs[0]].shape[-1]
    options = op.options
    radius = int(options.get("radius", 5))
    bias = np.float32(options.get("bias", 1.0))
    alpha = np.float32(options.get("alpha", 1.0))
    beta = np.float32(options.get("beta", 0.5))
    window = range(2 * radius + 1)

    def local_response_normalization(x):
        squares = np.zeros(x.shape[:-1] + (channels + 2 * radius,), np.float32)
        np.multiply(x, x, out=squares[..., radius:radius + channels])
        # Sum the 2r+1 shifted windows directly: a cumulative sum would cancel badly in float32.
        square_sum = squares[..., 0:channels].copy()
        for shift in window[1:]:
            square_sum += squares[..., shift:shift + channels]
        square_sum *= alpha
        square_sum += bias
        return x / np.power(square_sum, beta)

    return local_response_normalization


@check("L2_NORMALIZATION")
def check_l2_normalization(op, graph):
    if op.options.get("fused_activation_function", "NONE") not in ("NONE", "", None):
        raise ModelError("L2_NORMALIZATION takes no fused activation")


@register("L2_NORMALIZATION")
def prepare_l2_normalization(op, graph):
    if graph[op.inputs[0]].dtype == np.int8:
        return _prepare_l2_normalization_int8(op, graph)
    require_float(op, graph)

    def l2_normalization(x):
        norm = np.sqrt(np.einsum("...c,...c->...", x, x, dtype=np.float32))[..., None]
        return x / np.maximum(norm, L2_NORM_EPSILON)

    return l2_normalization


def _prepare_l2_normalization_int8(op, graph):
    x, y = graph[op.inputs[0]], graph[op.outputs[0]]
    if x.quant is None or y.quant is None or y.dtype != np.int8:
        raise ModelError(f"op {op}: int8 L2_NORMALIZATION needs quantized int8 input and output tensors")
    if np.float32(y.quant.scale[0]) != np.float32(1 / 128) or int(y.quant.zero_point[0]) != 0:
        raise ModelError(f"op {op}: int8 L2_NORMALIZATION output must have scale 1/128 and zero point 0")
    input_zero_point = int(x.quant.zero_point[0])

    def l2_normalization_int8(x):
        centered = x.astype(np.int64) - input_zero_point
        sum_of_squares = np.einsum("...c,...c->...", centered, centered)[..., None]
        # reverse_shift -1: the shift comes back as a left shift (<= 0), as MultiplyByQuantizedMultiplier takes it.
        inv_sqrt_multiplier, inv_sqrt_shift = get_inv_sqrt_quantized_multiplier_exp(sum_of_squares, -1)
        scaled = multiply_by_quantized_multiplier(centered, inv_sqrt_multiplier,
                                                  inv_sqrt_shift.astype(np.int64) + L2_NORM_OUTPUT_SCALE_BITS)
        return np.clip(scaled, -128, 127).astype(np.int8)

    return l2_normalization_int8

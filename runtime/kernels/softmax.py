"""SOFTMAX over the last axis: exp(beta * (x - max)) / sum.

The int8 kernel is TFLite's reference one (reference_ops::Softmax), gemmlowp fixed point: each
difference x - max >= diff_min is rescaled by input_beta_multiplier * 2^input_beta_left_shift to
Q5.26, exponentiated to Q0.31, summed in Q12.19; the reciprocal of the sum (GetReciprocal) scales each
exponential to the output (int8 with zero point -128 and scale 1/256, or int16 with -32768 and
1/65536). A difference is an integer in [-255, 0], so its exponential and its Q12.19 share of the sum
come from two 256-entry tables built in prepare.
"""
from __future__ import annotations

import numpy as np

from runtime.fixedpoint import (
    calculate_input_radius,
    exp_on_negative_values,
    get_reciprocal,
    multiply_by_quantized_multiplier_greater_than_one,
    preprocess_softmax_scaling,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from runtime.kernels import register
from runtime.kernels.common import require_float
from runtime.model import ModelError

SCALED_DIFF_INTEGER_BITS = 5  # exp's input format: Q5.26
ACCUMULATION_INTEGER_BITS = 12  # the sum of exponentials: Q12.19


@register("SOFTMAX")
def prepare_softmax(op, graph):
    if graph[op.inputs[0]].dtype == np.int8:
        return _prepare_softmax_int8(op, graph)
    require_float(op, graph)
    beta = np.float32(op.options.get("beta", 1.0))

    def softmax(x):
        shifted = x - x.max(axis=-1, keepdims=True)
        if beta != 1:
            shifted *= beta
        exponentials = np.exp(shifted, out=shifted)
        exponentials /= exponentials.sum(axis=-1, keepdims=True)
        return exponentials

    return softmax


@register("LOG_SOFTMAX")
def prepare_log_softmax(op, graph):
    require_float(op, graph)

    def log_softmax(x):
        shifted = x - x.max(axis=-1, keepdims=True)
        shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return shifted

    return log_softmax


def _prepare_softmax_int8(op, graph):
    x, y = graph[op.inputs[0]], graph[op.outputs[0]]
    if x.quant is None or y.quant is None:
        raise ModelError(f"op {op}: int8 SOFTMAX needs quantized input and output tensors")
    if y.dtype == np.int8:
        output_min, output_max = -128, 127
    elif y.dtype == np.int16:
        output_min, output_max = -32768, 32767
    else:
        raise ModelError(f"op {op}: int8 SOFTMAX gives int8 or int16, not {y.dtype}")
    beta = np.float32(op.options.get("beta", 1.0))
    input_scale = np.float32(x.quant.scale[0])
    input_beta_multiplier, input_beta_left_shift = preprocess_softmax_scaling(
        float(beta), float(input_scale), SCALED_DIFF_INTEGER_BITS)
    diff_min = -calculate_input_radius(SCALED_DIFF_INTEGER_BITS, input_beta_left_shift)

    # Tables indexed by -(x - max) in [0, 255]: exp in Q0.31 and its Q12.19 term of the sum; a
    # difference below diff_min contributes nothing and gives the lowest output (exp 0 does both).
    input_diff = -np.arange(256, dtype=np.int64)
    input_diff_rescaled = multiply_by_quantized_multiplier_greater_than_one(
        np.maximum(input_diff, diff_min), input_beta_multiplier, input_beta_left_shift)
    exp_table = exp_on_negative_values(input_diff_rescaled, SCALED_DIFF_INTEGER_BITS).astype(np.int64)
    exp_table = np.where(input_diff >= diff_min, exp_table, 0)
    sum_term_table = rounding_divide_by_pot(exp_table, ACCUMULATION_INTEGER_BITS).astype(np.int64)
    output_bits = 8 * y.dtype.itemsize

    def softmax(x):
        x = x.astype(np.int32)
        negated_diff = x.max(axis=-1, keepdims=True) - x
        exp_in_0 = exp_table[negated_diff]
        sum_of_exps = sum_term_table[negated_diff].sum(axis=-1, keepdims=True)
        shifted_scale, num_bits_over_unit = get_reciprocal(sum_of_exps, ACCUMULATION_INTEGER_BITS)
        exponent = num_bits_over_unit + 31 - output_bits
        unsat_output = rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted_scale, exp_in_0), exponent)
        return np.clip(unsat_output.astype(np.int64) + output_min, output_min, output_max).astype(y.dtype)

    return softmax

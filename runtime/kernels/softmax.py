"""SOFTMAX and LOG_SOFTMAX over the last axis: exp(beta * (x - max)) / sum, and its log.

The int8 SOFTMAX is TFLite's reference kernel (reference_ops::Softmax), gemmlowp fixed point: each
difference x - max >= diff_min is rescaled by input_beta_multiplier * 2^input_beta_left_shift to
Q5.26, exponentiated to Q0.31, summed in Q12.19; the reciprocal of the sum (GetReciprocal) scales each
exponential to the output (int8 with zero point -128 and scale 1/256, or int16 with -32768 and
1/65536). A difference is an integer in [-255, 0], so its exponential and its Q12.19 share of the sum
come from two 256-entry tables built in prepare.

The int8 LOG_SOFTMAX is reference_integer_ops::LogSoftmax: the same Q5.26 rescaling and Q12.19 sum of
exponentials, whose log (in Q5.26) is subtracted from each rescaled difference; the output has
the fixed scale 16/256 and zero point 127 (real range [-255/16, 0]).
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    calculate_input_radius,
    count_leading_zeros_u32,
    exp_on_negative_values,
    get_reciprocal,
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_greater_than_one,
    one_over_one_plus_x_for_x_in_0_1,
    preprocess_softmax_scaling,
    quantize_multiplier,
    rounding_divide_by_pot,
    rounding_half_sum,
    saturating_rounding_doubling_high_mul,
    saturating_rounding_multiply_by_pot,
)
from edgeq.runtime import native
from edgeq.runtime.kernels import check, register
from edgeq.runtime.kernels.buffers import OutputBuffers
from edgeq.runtime.kernels.common import require_float
from edgeq.runtime.ir import ModelError

SCALED_DIFF_INTEGER_BITS = 5  # exp's input format: Q5.26
ACCUMULATION_INTEGER_BITS = 12  # the sum of exponentials: Q12.19


@register("SOFTMAX")
def prepare_softmax(op, graph):
    if graph[op.inputs[0]].dtype == np.int16 and graph[op.inputs[0]].quant is not None:
        return _prepare_softmax_int16(op, graph)
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
    if graph[op.inputs[0]].dtype == np.int8:
        return _prepare_log_softmax_int8(op, graph)
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
    depth = x.shape[-1] if x.shape else 1
    if native.isa() is not None and depth <= native.SOFTMAX_MAX_DEPTH:
        return _native_softmax_int8(exp_table, sum_term_table, tuple(y.shape[1:]), y.dtype)

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


def _native_softmax_int8(exp_table, sum_term_table, shape_tail, dtype):
    """The same integers from one native call: its Python cost was most of the op's time."""
    exp_table = np.ascontiguousarray(exp_table, dtype=np.int32)
    sum_term_table = np.ascontiguousarray(sum_term_table, dtype=np.int32)
    outputs = OutputBuffers(shape_tail, dtype)

    def softmax_native(x):
        return native.softmax_int8(np.ascontiguousarray(x), exp_table, sum_term_table, outputs.get(x.shape[0]))

    return softmax_native


# -- int16 SOFTMAX ----------------------------------------------------------------------------------
# reference_ops::SoftmaxInt16: each difference x - max is rescaled so that [-65535, 0] spans [-10, 0],
# recentred to int16 and looked up in an exp table (LUTPopulate<int16_t> of exp over [-10, 0], in double);
# the Q16.15 sum of exponentials is normalized by its leading zeros and its reciprocal taken from a second
# table of 1 / (1 + x) over [0, 1]. Both tables and the exponential of every possible difference are
# built in prepare; the output is Q0.15 (scale 1/32768, zero point 0).

INT16_RANGE = 65535


@check("SOFTMAX", "LOG_SOFTMAX")
def check_softmax_int16(op, graph):
    """int16 SOFTMAX needs zero points 0 and the output scale 1/32768 (within activations.cc's 0.1%);
    LiteRT has no int16 LOG_SOFTMAX ("Only float32, uint8 and int8 are supported")."""
    x = graph[op.inputs[0]]
    if x.dtype != np.int16 or x.quant is None:
        return
    if op.type == "LOG_SOFTMAX":
        raise ModelError("int16 LOG_SOFTMAX has no integer kernel (LiteRT's reference kernels have none either)")
    from edgeq.runtime.kernels.int16_tables import check_symmetric
    check_symmetric(graph, (op.inputs[0], op.outputs[0]))
    output_scale = np.float32(graph[op.outputs[0]].quant.scale[0])
    if abs(output_scale - np.float32(1.0 / 32768)) > np.float32(0.001 / 32768):
        raise ModelError(f"int16 SOFTMAX needs the output scale 1/32768, not {output_scale:g}")


def _prepare_softmax_int16(op, graph):
    from edgeq.runtime.kernels.int16_tables import lut_lookup_table, populate_lut_int16

    x = graph[op.inputs[0]]
    beta = np.float32(op.options.get("beta", 1.0))
    input_scale = np.float32(x.quant.scale[0])
    input_multiplier, input_left_shift = quantize_multiplier(
        float(input_scale) * float(beta) / (10.0 / INT16_RANGE))

    exp_lut = populate_lut_int16(10.0 / INT16_RANGE, 32767, 2.0 / INT16_RANGE, 0, np.exp, float_type=np.float64)
    reciprocal_lut = populate_lut_int16(1.0 / INT16_RANGE, -32768, 2.0 / INT16_RANGE, 0,
                                        lambda v: 1.0 / (1.0 + v), float_type=np.float64)
    exp_of_int16 = lut_lookup_table(exp_lut).astype(np.int64)
    reciprocal_of_int16 = lut_lookup_table(reciprocal_lut).astype(np.int64)
    # Q0.15 exponential of every difference x - max in [-65535, 0], indexed by max - x.
    scaled_diff = multiply_by_quantized_multiplier(-np.arange(INT16_RANGE + 1, dtype=np.int64), input_multiplier,
                                                   input_left_shift).astype(np.int64)
    centred = np.clip(scaled_diff + 32767, -32768, 32767)
    exp_of_negated_diff = exp_of_int16[centred & 0xFFFF]

    def softmax_int16(x):
        x = x.astype(np.int64)
        exps = exp_of_negated_diff[x.max(axis=-1, keepdims=True) - x]
        sum_of_exps = exps.sum(axis=-1, keepdims=True)  # Q16.15
        headroom_plus_one = count_leading_zeros_u32(sum_of_exps).astype(np.int64)
        shifted_sum = ((sum_of_exps << (headroom_plus_one - 1)) + (1 << 13)) >> 14
        centred_sum = np.clip(shifted_sum - ((1 << 15) + (1 << 16)), -32768, 32767)
        reciprocal = reciprocal_of_int16[centred_sum & 0xFFFF]
        right_shift = 31 - headroom_plus_one
        result = (exps * reciprocal + (np.int64(1) << (right_shift - 1))) >> right_shift
        return np.clip(result, 0, 32767).astype(np.int16)

    return softmax_int16


# -- int8 LOG_SOFTMAX ------------------------------------------------------------------------------

LOG_SOFTMAX_OUTPUT_INTEGER_BITS = 4  # output real range [-16, 0] in steps of 1/16
LOG_SOFTMAX_OUTPUT_ZERO_POINT = 127
LOG_SOFTMAX_OUTPUT_SCALE = 16.0 / 256


def _saturating_rounding_multiply_by_pot_param(x, exponent) -> np.ndarray:
    """TFLite's SaturatingRoundingMultiplyByPOTParam for exponents >= 0 given per element: a left
    shift that saturates to the int32 range."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    threshold = (np.int64(1) << (31 - exponent)) - 1
    shifted = ((x << exponent) - INT32_MIN) % (1 << 32) + INT32_MIN
    shifted = np.where(x > threshold, INT32_MAX, shifted)
    shifted = np.where(x < -threshold, INT32_MIN, shifted)
    return np.where(exponent == 0, x, shifted)


def _fixed_mul(a, b) -> np.ndarray:
    return saturating_rounding_doubling_high_mul(a, b).astype(np.int64)


def _fixed_add(a, b) -> np.ndarray:
    """gemmlowp's FixedPoint + and -: int32 addition that wraps."""
    return (np.asarray(a, dtype=np.int64) + np.asarray(b, dtype=np.int64) - INT32_MIN) % (1 << 32) + INT32_MIN


def _saturating_add(a, b) -> np.ndarray:
    return np.clip(np.asarray(a, dtype=np.int64) + b, INT32_MIN, INT32_MAX)


def log_x_for_x_greater_than_or_equal_to_1(x, input_integer_bits: int, output_integer_bits: int) -> np.ndarray:
    """TFLite's log_x_for_x_greater_than_or_equal_to_1 (kernels/internal/common.h): log of the raws
    ``x`` >= 1.0 of FixedPoint<int32, input_integer_bits>, as raws of output_integer_bits.

    x = 2^z * r with r in [sqrt(1/2), sqrt(2)) (z a multiple of 1/4 taken from the leading zeros
    of x and of x * sqrt(1/2)); log(r) comes from a rational minimax approximation around
    sqrt(sqrt(1/2)), its reciprocal from gemmlowp's Newton-Raphson one_over_one_plus_x_for_x_in_0_1.
    """
    accum_integer_bits = output_integer_bits + 1  # headroom: z * log(2) may saturate otherwise
    log_2, sqrt_sqrt_half, sqrt_half, one_quarter = 1488522236, 1805811301, 1518500250, 536870912
    alpha_n, alpha_d, alpha_i, alpha_f = 117049297, 127690142, 1057819769, 638450708
    shifted_quarter = rounding_divide_by_pot(one_quarter, accum_integer_bits).astype(np.int64)

    z_a = np.asarray(x, dtype=np.int64)  # read as Q0.31: the shifts below are found by hand
    z_a_headroom_plus_1 = count_leading_zeros_u32(z_a)
    r_a_tmp = _saturating_rounding_multiply_by_pot_param(z_a, z_a_headroom_plus_1 - 1)
    r_a_raw = _saturating_rounding_multiply_by_pot_param(_fixed_mul(r_a_tmp, sqrt_half), 1)
    z_a_pow_2_adj = _saturating_add(_saturating_rounding_multiply_by_pot_param(
        input_integer_bits - z_a_headroom_plus_1, 31 - accum_integer_bits), shifted_quarter)

    z_b = _fixed_mul(z_a, sqrt_half)
    z_b_headroom = count_leading_zeros_u32(z_b) - 1
    r_b_raw = _saturating_rounding_multiply_by_pot_param(z_a, z_b_headroom)
    z_b_pow_2_adj = _saturating_add(_saturating_rounding_multiply_by_pot_param(
        input_integer_bits - z_b_headroom, 31 - accum_integer_bits), -shifted_quarter)

    r = np.minimum(r_a_raw, r_b_raw)
    z_pow_2_adj = np.maximum(z_a_pow_2_adj, z_b_pow_2_adj)

    p = rounding_half_sum(r, sqrt_sqrt_half).astype(np.int64)
    q = _fixed_add(r, -sqrt_sqrt_half)
    q = _fixed_add(q, q)
    common_sq = _fixed_mul(q, q)
    num = _fixed_add(_fixed_mul(q, r), _fixed_mul(_fixed_mul(q, common_sq), alpha_n))
    denom_minus_one_0 = _fixed_add(
        _fixed_mul(p, _fixed_add(_fixed_add(alpha_i, q), _fixed_mul(alpha_d, common_sq))), _fixed_mul(alpha_f, q))
    recip_denom = one_over_one_plus_x_for_x_in_0_1(denom_minus_one_0).astype(np.int64)

    num_scaled = rounding_divide_by_pot(num, accum_integer_bits).astype(np.int64)  # Q0.31 -> accum
    log_in_accum = _fixed_add(_fixed_mul(z_pow_2_adj, log_2), _fixed_mul(num_scaled, recip_denom))
    return saturating_rounding_multiply_by_pot(log_in_accum, accum_integer_bits - output_integer_bits).astype(np.int64)


def _prepare_log_softmax_int8(op, graph):
    x, y = graph[op.inputs[0]], graph[op.outputs[0]]
    if x.quant is None or y.quant is None or y.dtype != np.int8:
        raise ModelError(f"op {op}: int8 LOG_SOFTMAX needs quantized int8 input and output tensors")
    if (np.float32(y.quant.scale[0]) != np.float32(LOG_SOFTMAX_OUTPUT_SCALE)
            or int(y.quant.zero_point[0]) != LOG_SOFTMAX_OUTPUT_ZERO_POINT):
        raise ModelError(f"op {op}: int8 LOG_SOFTMAX output must have scale 16/256 and zero point 127")
    # LiteRT's LogSoftmaxPrepare: beta is 1; PreprocessLogSoftmaxScalingExp gives the Q5.26
    # rescaling of a difference and its inverse (to map the log back to a difference threshold).
    input_scale = np.float32(x.quant.scale[0])
    input_multiplier, input_left_shift = preprocess_softmax_scaling(1.0, float(input_scale), SCALED_DIFF_INTEGER_BITS)
    reverse_multiplier, reverse_shift = quantize_multiplier((1 << (31 - input_left_shift)) / float(input_multiplier))
    diff_min = -calculate_input_radius(SCALED_DIFF_INTEGER_BITS, input_left_shift)

    # Tables indexed by -(x - max) in [0, 255]: the Q5.26 difference, and its exponential's Q12.19
    # term of the sum (0 below diff_min, where the reference leaves it out of the sum).
    input_diff = -np.arange(256, dtype=np.int64)
    counted = input_diff >= diff_min
    diff_in_q5_table = multiply_by_quantized_multiplier(
        np.where(counted, input_diff, 0), input_multiplier, input_left_shift).astype(np.int64)
    exp_table = exp_on_negative_values(diff_in_q5_table, SCALED_DIFF_INTEGER_BITS)
    sum_term_table = np.where(counted, rounding_divide_by_pot(exp_table, ACCUMULATION_INTEGER_BITS), 0).astype(np.int64)
    output_shift = 31 - SCALED_DIFF_INTEGER_BITS - LOG_SOFTMAX_OUTPUT_INTEGER_BITS

    def log_softmax(x):
        x = x.astype(np.int32)
        negated_diff = x.max(axis=-1, keepdims=True) - x
        # An int32 sum as the reference's F12 additions (it only wraps past 4096 terms of 2^19).
        sum_of_exps_in_q12 = _fixed_add(sum_term_table[negated_diff].sum(axis=-1, keepdims=True), 0)
        log_sum_of_exps_in_q5 = log_x_for_x_greater_than_or_equal_to_1(
            sum_of_exps_in_q12, ACCUMULATION_INTEGER_BITS, SCALED_DIFF_INTEGER_BITS)
        # The smallest Q5.26 value plus the log, taken back to a difference: below it the output
        # would underflow, so those differences give the lowest output directly.
        adjusted_diff_min = np.maximum(diff_min - 1, multiply_by_quantized_multiplier(
            log_sum_of_exps_in_q5 + INT32_MIN, reverse_multiplier, reverse_shift))
        output = rounding_divide_by_pot(diff_in_q5_table[negated_diff] - log_sum_of_exps_in_q5, output_shift)
        output = np.clip(output.astype(np.int64) + LOG_SOFTMAX_OUTPUT_ZERO_POINT, -128, 127)
        return np.where(-negated_diff > adjusted_diff_min, output, -128).astype(np.int8)

    return log_softmax

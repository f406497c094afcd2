"""TFLite's fixed-point requantization arithmetic, vectorized over numpy arrays.

A real multiplier ``m`` (e.g. input_scale * weight_scale / output_scale) is represented as a Q31
``quantized_multiplier`` M in [2^30, 2^31) and a power-of-two ``shift`` so that m = M * 2^(shift - 31).
``multiply_by_quantized_multiplier(x, M, shift)`` then computes round(x * m) in integers exactly as
TFLite's kernels do. TFLite has two builds of that function which differ by 1 on a few percent of
inputs; ``SINGLE_ROUNDING`` selects the one LiteRT's reference kernels use (see
tests/test_fixedpoint.py for the evidence).

Everything here works on whole arrays (int64 intermediates, no Python loops) and on numpy 1.24.
"""
from __future__ import annotations

import numpy as np

INT32_MIN = np.int64(-(2**31))
INT32_MAX = np.int64(2**31 - 1)

# Which MultiplyByQuantizedMultiplier LiteRT's BUILTIN_REF kernels were compiled with:
# False: double rounding (gemmlowp SaturatingRoundingDoublingHighMul + RoundingDivideByPOT),
# True: single rounding (one int64 multiply, add, arithmetic shift; TFLITE_SINGLE_ROUNDING).
# Measured against the ai-edge-litert wheel in tests/test_fixedpoint.py: CONV_2D, DEPTHWISE_CONV_2D,
# MUL and requantizing QUANTIZE round twice. Its reference int8 FULLY_CONNECTED is the exception: it
# rounds the exact product x * M / 2^(31 - shift) once, ties away from zero
# (``multiply_by_quantized_multiplier_rounding_away``).
SINGLE_ROUNDING = False


def round_half_away(x):
    """C's std::round: to the nearest integer, ties away from zero, in the input's own float type.

    TFLite rounds with std::round on float (roundf) in its kernels and on double in its converter,
    so a float32 input is rounded as a float32 and a float64 one as a float64 (other inputs are
    taken as float64). The fraction x - trunc(x) is exact in binary floating point, so comparing it
    with 0.5 is exact too; floor(|x| + 0.5) is not: the sum rounds, which sends the largest float
    below 0.5 (0.49999997 in float32) to 1 and odd integers beyond 2^(mantissa bits) to the next
    even one. A 0-d input gives a numpy scalar.
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    rounded = np.trunc(x, out=np.empty_like(x))
    with np.errstate(invalid="ignore"):  # inf - inf is nan, and nan >= 0.5 leaves infinities alone
        fraction = np.subtract(x, rounded, out=np.empty_like(x))
    away = np.abs(fraction, out=fraction) >= 0.5
    del fraction  # at most two arrays of x's size at a time: weights can be hundreds of MB
    # |x| < 2^(mantissa bits) wherever the fraction is >= 0.5, so adding +-1 is exact.
    rounded += np.copysign(away, x, dtype=x.dtype)
    return rounded[()]


def quantize_multiplier(real_multiplier):
    """TFLite's QuantizeMultiplier: real -> (Q31 multiplier M, shift) with real = M * 2^(shift-31).

    Works on a scalar (returns two Python ints) or on an array of per-channel multipliers (returns
    an int32 array of multipliers and an int32 array of shifts of the same shape).
    """
    real = np.asarray(real_multiplier, dtype=np.float64)
    fraction, shift = np.frexp(real)  # real = fraction * 2^shift, |fraction| in [0.5, 1)
    shift = shift.astype(np.int64)
    scaled = fraction * 2.0**31  # exact: a power-of-two scaling of a double
    multiplier = round_half_away(scaled).astype(np.int64)
    # A fraction that rounds up to 1.0 becomes 0.5 with the exponent one higher.
    carried = multiplier == 2**31
    multiplier = np.where(carried, multiplier // 2, multiplier)
    shift = np.where(carried, shift + 1, shift)
    # Below 2^-32 every product would be shifted out entirely: flush to zero.
    flushed = shift < -31
    multiplier = np.where(flushed, 0, multiplier)
    shift = np.where(flushed, 0, shift)
    if real.ndim == 0:
        return int(multiplier), int(shift)
    return multiplier.astype(np.int32), shift.astype(np.int32)


def _wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to the int32 range (what C's int32 arithmetic does)."""
    return ((x - INT32_MIN) & np.int64(0xFFFFFFFF)) + INT32_MIN


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp's SRDHM: the high 32 bits of 2*a*b, rounded half away from zero, saturated.

    The only overflow is INT32_MIN * INT32_MIN, whose doubled high half (2^31) saturates to INT32_MAX.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    product = a * b  # |a*b| <= 2^62: exact in int64
    nudge = np.where(product >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    total = product + nudge
    # C integer division truncates toward zero; numpy's // floors, so divide magnitudes.
    high = np.sign(total) * (np.abs(total) >> 31)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, INT32_MAX, high).astype(np.int32)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return ((x >> exponent) + (remainder > threshold)).astype(np.int32)


def _multiply_double_rounding(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    left_shift = np.maximum(shift, 0)
    right_shift = np.maximum(-shift, 0)
    # TFLite multiplies x by 2^left_shift in int32 arithmetic before the high-mul.
    shifted = _wrap_int32(x << left_shift)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right_shift)


def _multiply_single_rounding(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    total_shift = 31 - shift
    rounding = np.int64(1) << (total_shift - 1)
    # Ties go toward +inf: the arithmetic shift floors after adding half.
    return _wrap_int32((x * multiplier + rounding) >> total_shift).astype(np.int32)


def multiply_by_quantized_multiplier(x, quantized_multiplier, shift, single_rounding=None) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier(int32 x, M, shift) -> int32, elementwise.

    ``x`` holds int32 values (an int32 or int64 array, e.g. accumulators); ``quantized_multiplier``
    and ``shift`` broadcast against it (per-channel arrays along the last axis for NHWC outputs).
    ``single_rounding`` picks the build; by default the one LiteRT's reference kernels use.
    """
    if single_rounding is None:
        single_rounding = SINGLE_ROUNDING
    x = np.asarray(x, dtype=np.int64)
    multiplier = np.asarray(quantized_multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if single_rounding:
        return _multiply_single_rounding(x, multiplier, shift)
    return _multiply_double_rounding(x, multiplier, shift)


def multiply_by_quantized_multiplier_rounding_away(x, quantized_multiplier, shift) -> np.ndarray:
    """round(x * M / 2^(31 - shift)) in one step, ties away from zero: what LiteRT's reference int8
    FULLY_CONNECTED computes (equal to single rounding except on negative exact ties)."""
    x = np.asarray(x, dtype=np.int64)
    multiplier = np.asarray(quantized_multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    product = x * multiplier  # |x * M| < 2^62
    total_shift = 31 - shift
    mask = (np.int64(1) << total_shift) - 1
    threshold = (mask >> 1) + (product < 0)
    result = (product >> total_shift) + ((product & mask) > threshold)
    return _wrap_int32(result).astype(np.int32)


def multiply_by_quantized_multiplier_int64(x, quantized_multiplier, shift) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier(int64 x, M, shift) -> int32, the overload 16x8 kernels
    apply to their int64 accumulators (the same in both rounding builds): M is first reduced to a
    Q15 multiplier, round((M + 2^15) / 2^16) (0x7FFF from M >= 0x7FFF0000 on), then
    (x * M15 + 2^(14 - shift)) >> (15 - shift), ties toward +inf, cast to int32."""
    x = np.asarray(x, dtype=np.int64)
    multiplier = np.asarray(quantized_multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    reduced = np.where(multiplier < 0x7FFF0000, (multiplier + (1 << 15)) >> 16, np.int64(0x7FFF))
    total_shift = 15 - shift
    # |x| < 2^47 and M15 < 2^15: the product fits in int64.
    return _wrap_int32((x * reduced + (np.int64(1) << (total_shift - 1))) >> total_shift).astype(np.int32)


def requantize(x, real_multiplier, single_rounding=None) -> np.ndarray:
    """round(x * real_multiplier) as TFLite computes it (quantize the multiplier, then multiply)."""
    multiplier, shift = quantize_multiplier(real_multiplier)
    return multiply_by_quantized_multiplier(x, multiplier, shift, single_rounding)


# -- gemmlowp fixed-point functions (fixedpoint/fixedpoint.h) and TFLite's helpers around them ------
#
# A gemmlowp FixedPoint<int32, I> is an int32 ``raw`` value meaning raw * 2^(I - 31) (Q I.(31-I)).
# Products of two such numbers are SRDHMs of the raws (the integer bits add up); sums are plain
# int32 additions. The functions below take and return int32 raws (any int array; results int32).

INT16_MIN = np.int64(-(2**15))
INT16_MAX = np.int64(2**15 - 1)


def _int64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def saturating_rounding_multiply_by_pot(x, exponent: int) -> np.ndarray:
    """gemmlowp's SaturatingRoundingMultiplyByPOT<exponent>: x * 2^exponent on int32 raws;
    a left shift saturates to the int32 range, a right shift rounds half away from zero."""
    x = _int64(x)
    if exponent == 0:
        return x.astype(np.int32)
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    threshold = (np.int64(1) << (31 - exponent)) - 1
    shifted = _wrap_int32(x << exponent)
    shifted = np.where(x > threshold, INT32_MAX, shifted)
    return np.where(x < -threshold, INT32_MIN, shifted).astype(np.int32)


def rounding_half_sum(a, b) -> np.ndarray:
    """gemmlowp's RoundingHalfSum on int32: (a + b) / 2 rounded half away from zero."""
    total = _int64(a) + _int64(b)
    total = total + np.where(total >= 0, 1, -1)
    # C division truncates toward zero.
    return (np.sign(total) * (np.abs(total) >> 1)).astype(np.int32)


def _fixed_mul(a, b) -> np.ndarray:
    """FixedPoint product: SRDHM of the raws, as int64 for further arithmetic."""
    return saturating_rounding_doubling_high_mul(a, b).astype(np.int64)


def _fixed_add(a, b) -> np.ndarray:
    """FixedPoint sum: int32 addition (wrapping, as gemmlowp's Add)."""
    return _wrap_int32(_int64(a) + _int64(b))


_EXP_MINUS_ONE_EIGHTH_Q0_31 = 1895147668  # exp(-1/8)
_ONE_THIRD_Q0_31 = 715827883
# exp(-2^k) in Q0.31 for the barrel shifter of exp_on_negative_values, k = -2 .. 4.
_EXP_BARREL_SHIFTER = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                       (2, 39332535), (3, 720401), (4, 242))


def exp_on_interval_between_negative_one_quarter_and_0_excl(a) -> np.ndarray:
    """exp(a) for Q0.31 raws a in [-1/4, 0): a 4th-order Taylor expansion around -1/8, in Q0.31."""
    x = _fixed_add(a, 1 << 28)  # a + 1/8
    x2 = _fixed_mul(x, x)
    x3 = _fixed_mul(x2, x)
    x4 = _fixed_mul(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2).astype(np.int64)
    x4_over_24_plus_x3_over_6_plus_x2_over_2 = rounding_divide_by_pot(
        _fixed_add(_fixed_mul(_fixed_add(x4_over_4, x3), _ONE_THIRD_Q0_31), x2), 1).astype(np.int64)
    return _fixed_add(
        _EXP_MINUS_ONE_EIGHTH_Q0_31,
        _fixed_mul(_EXP_MINUS_ONE_EIGHTH_Q0_31, _fixed_add(x, x4_over_24_plus_x3_over_6_plus_x2_over_2)),
    ).astype(np.int32)


def exp_on_negative_values(a, integer_bits: int) -> np.ndarray:
    """gemmlowp's exp_on_negative_values: exp(a) for raws a <= 0 of FixedPoint<int32, integer_bits>,
    as Q0.31 raws (exp(0) gives INT32_MAX)."""
    a = _int64(a)
    fractional_bits = 31 - integer_bits
    one_quarter = np.int64(1) << (fractional_bits - 2)
    a_mod_quarter_minus_one_quarter = _wrap_int32((a & (one_quarter - 1)) - one_quarter)
    result = exp_on_interval_between_negative_one_quarter_and_0_excl(
        saturating_rounding_multiply_by_pot(a_mod_quarter_minus_one_quarter, integer_bits)).astype(np.int64)
    remainder = _wrap_int32(a_mod_quarter_minus_one_quarter - a)
    for exponent, multiplier in _EXP_BARREL_SHIFTER:
        if integer_bits > exponent:
            bit = np.int64(1) << (fractional_bits + exponent)
            result = np.where(remainder & bit, _fixed_mul(result, multiplier), result)
    if integer_bits > 5:
        clamp = -(np.int64(1) << (36 - integer_bits))  # -32.0
        result = np.where(a < clamp, 0, result)
    return np.where(a == 0, INT32_MAX, result).astype(np.int32)


def one_over_one_plus_x_for_x_in_0_1(a) -> np.ndarray:
    """gemmlowp's 1 / (1 + a) for Q0.31 raws a in [0, 1): three Newton-Raphson steps, Q0.31 result."""
    half_denominator = rounding_half_sum(a, INT32_MAX).astype(np.int64)  # (1 + a) / 2, Q0.31
    # Q2.29 arithmetic from here on: 48/17 - 32/17 * half_denominator as the first guess.
    x = _fixed_add(1515870810, _fixed_mul(half_denominator, -1010580540))
    one_q2_29 = np.int64(1) << 29
    for _ in range(3):
        half_denominator_times_x = _fixed_mul(half_denominator, x)
        one_minus_half_denominator_times_x = _fixed_add(one_q2_29, -half_denominator_times_x)
        x = _fixed_add(x, saturating_rounding_multiply_by_pot(
            _fixed_mul(x, one_minus_half_denominator_times_x), 2))
    # x / 2, from Q2.29 (read as Q1.30) back to Q0.31.
    return saturating_rounding_multiply_by_pot(x, 1)


def count_leading_zeros_u32(x) -> np.ndarray:
    """Leading zero bits of x read as uint32 (32 for 0), elementwise."""
    x = _int64(x) & np.int64(0xFFFFFFFF)
    count = np.zeros(x.shape, dtype=np.int64)
    for bits in (16, 8, 4, 2, 1):
        small = x < (np.int64(1) << (32 - bits))
        count = np.where(small, count + bits, count)
        x = np.where(small, x << bits, x)
    return np.where(_int64(x) == 0, 32, count)


def get_reciprocal(x, x_integer_digits: int):
    """TFLite's GetReciprocal: for positive raws x of FixedPoint<int32, x_integer_digits>, returns
    (Q0.31 raw of 1 / (x normalized to [1, 2)), num_bits_over_unit) so that
    1 / x = raw * 2^-31 * 2^-num_bits_over_unit."""
    x = _int64(x)
    headroom_plus_one = count_leading_zeros_u32(x)
    num_bits_over_unit = x_integer_digits - headroom_plus_one
    shifted_sum_minus_one = _wrap_int32(((x << headroom_plus_one) & np.int64(0xFFFFFFFF)) - (np.int64(1) << 31))
    return one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one), num_bits_over_unit


def multiply_by_quantized_multiplier_greater_than_one(x, quantized_multiplier, left_shift,
                                                      single_rounding=None) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplierGreaterThanOne (a left shift only): in the
    double-rounding build SRDHM(x * 2^left_shift, M) in int32, else the single-rounding multiply."""
    if single_rounding is None:
        single_rounding = SINGLE_ROUNDING
    if single_rounding:
        return multiply_by_quantized_multiplier(x, quantized_multiplier, left_shift, True)
    return saturating_rounding_doubling_high_mul(_wrap_int32(_int64(x) << _int64(left_shift)),
                                                 quantized_multiplier)


def preprocess_softmax_scaling(beta: float, input_scale: float, input_integer_bits: int,
                               single_rounding=None):
    """TFLite's PreprocessSoftmaxScaling: (multiplier, left_shift) for beta * input_scale taken to
    Q(input_integer_bits).(31 - input_integer_bits), capped at the largest int32 multiplier."""
    if single_rounding is None:
        single_rounding = SINGLE_ROUNDING
    cap = (1 << 30) - 1.0 if single_rounding else (1 << 31) - 1.0
    real = min(float(beta) * float(input_scale) * float(1 << (31 - input_integer_bits)), cap)
    if not real > 1.0:
        raise ValueError(f"softmax input scale x beta = {float(beta) * float(input_scale)!r} is too small")
    return quantize_multiplier(real)


def calculate_input_radius(input_integer_bits: int, input_left_shift: int, total_signed_bits: int = 31) -> int:
    """TFLite's CalculateInputRadius: the largest |input| whose rescaled value stays representable."""
    max_input_rescaled = (1.0 * ((1 << input_integer_bits) - 1) * float(1 << (total_signed_bits - input_integer_bits))
                          / float(1 << input_left_shift))
    return int(np.floor(max_input_rescaled))


# -- int16 fixed point (gemmlowp's int16 specializations), as used by TFLite's HardSwish ------------

def _wrap_int16(x: np.ndarray) -> np.ndarray:
    return ((_int64(x) + 2**15) & np.int64(0xFFFF)) - 2**15


def saturating_rounding_doubling_high_mul_int16(a, b) -> np.ndarray:
    """gemmlowp's int16 SRDHM: (a*b + nudge) / 2^15 truncated, nudge = +-2^14, saturating -1 * -1."""
    a, b = _int64(a), _int64(b)
    product = a * b
    total = product + np.where(product >= 0, 1 << 14, 1 - (1 << 14))
    high = _wrap_int16(np.sign(total) * (np.abs(total) >> 15))
    return np.where((a == INT16_MIN) & (b == INT16_MIN), INT16_MAX, high).astype(np.int16)


def saturating_doubling_high_mul_int16(a, b) -> np.ndarray:
    """TFLite's SaturatingDoublingHighMul (SQDMULH): a*b / 2^15 truncated toward zero, saturating."""
    a, b = _int64(a), _int64(b)
    product = a * b
    high = _wrap_int16(np.sign(product) * (np.abs(product) >> 15))
    return np.where((a == INT16_MIN) & (b == INT16_MIN), INT16_MAX, high).astype(np.int16)


def rounding_divide_by_pot_int16(x, exponent: int) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT on int16 values (its mask is an int16 too)."""
    x = _int64(x)
    mask = _wrap_int16((np.int64(1) << exponent) - 1)
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return _wrap_int16((x >> exponent) + (remainder > threshold)).astype(np.int16)


def saturating_left_shift_int16(x, amount: int) -> np.ndarray:
    """TFLite's SaturatingLeftShift for int16: x * 2^amount clamped to the int16 range."""
    return np.clip(_int64(x) * (np.int64(1) << amount), INT16_MIN, INT16_MAX).astype(np.int16)


def down_scale_int32_to_int16_multiplier(multiplier: int) -> int:
    """TFLite's DownScaleInt32ToInt16Multiplier: a Q31 multiplier rounded to Q15."""
    multiplier = int(multiplier)
    if multiplier >= 2**31 - 1 - (1 << 15):
        return 2**15 - 1
    return (multiplier + (1 << 15)) >> 16


# -- TFLite's integer inverse square root (GetInvSqrtQuantizedMultiplierExp) ------------------------

def get_inv_sqrt_quantized_multiplier_exp(x, reverse_shift: int):
    """For int32 x >= 0: (multiplier, shift) with 1/sqrt(x) = multiplier * 2^(shift - 31) when
    reverse_shift is -1 (TFLite's convention for a left shift), by 5 Newton-Raphson steps in Q3.28."""
    x = _int64(x)
    trivial = x <= 1
    x = np.where(trivial, 2, x)
    output_shift = np.full(x.shape, 11, dtype=np.int64)
    for _ in range(2):  # x < 2^31: at most two divisions by 4 bring it under 2^29
        big = x >= (1 << 29)
        x = np.where(big, x // 4, x)
        output_shift = np.where(big, output_shift + 1, output_shift)
    max_left_shift_bits = count_leading_zeros_u32(x) - 1
    left_shift_bit_pairs = max_left_shift_bits // 2 - 1
    output_shift = output_shift - left_shift_bit_pairs
    x = x << (2 * left_shift_bit_pairs)
    fixedpoint_input = x >> 1  # Q3.28
    fixedpoint_half_input = rounding_divide_by_pot(fixedpoint_input, 1).astype(np.int64)
    half_three = (1 << 28) + (1 << 27)
    estimate = np.full(x.shape, 1 << 28, dtype=np.int64)  # 1.0 in Q3.28
    for _ in range(5):
        cube = saturating_rounding_multiply_by_pot(_fixed_mul(_fixed_mul(estimate, estimate), estimate), 6)
        difference = _fixed_add(_fixed_mul(half_three, estimate), -_fixed_mul(fixedpoint_half_input, cube))
        estimate = saturating_rounding_multiply_by_pot(difference, 3).astype(np.int64)
    estimate = _fixed_mul(estimate, 1518500250)  # * sqrt(2) / 2
    negative = output_shift < 0
    estimate = np.where(negative, _wrap_int32(estimate << np.where(negative, -output_shift, 0)), estimate)
    output_shift = np.where(negative, 0, output_shift) * reverse_shift
    estimate = np.where(trivial, INT32_MAX, estimate)
    output_shift = np.where(trivial, 0, output_shift)
    return estimate.astype(np.int32), output_shift.astype(np.int32)

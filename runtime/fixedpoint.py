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


def quantize_multiplier(real_multiplier):
    """TFLite's QuantizeMultiplier: real -> (Q31 multiplier M, shift) with real = M * 2^(shift-31).

    Works on a scalar (returns two Python ints) or on an array of per-channel multipliers (returns
    an int32 array of multipliers and an int32 array of shifts of the same shape).
    """
    real = np.asarray(real_multiplier, dtype=np.float64)
    fraction, shift = np.frexp(real)  # real = fraction * 2^shift, |fraction| in [0.5, 1)
    shift = shift.astype(np.int64)
    scaled = fraction * 2.0**31  # exact: a power-of-two scaling of a double
    # std::round: half away from zero; adding 0.5 is exact at this magnitude (ulp 2^-22).
    multiplier = (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int64)
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


def requantize(x, real_multiplier, single_rounding=None) -> np.ndarray:
    """round(x * real_multiplier) as TFLite computes it (quantize the multiplier, then multiply)."""
    multiplier, shift = quantize_multiplier(real_multiplier)
    return multiply_by_quantized_multiplier(x, multiplier, shift, single_rounding)

"""The native output stage alone (edgeq.runtime.native.output_stage): int32 accumulators to int8 as every
variant this machine runs does it after its GEMM, against TFLite's MultiplyByQuantizedMultiplier written
out in numpy (edgeq.runtime.fixedpoint), + output offset, clamped. The AVX-512 and NEON variants compute the
folded form in 32-bit lanes from constants rearranged in prepare (stage.lanes); these tests pin that they give the
same integers for every multiplier and shift the converter emits, ties and extremes included.
"""
from __future__ import annotations

import numpy as np
import pytest

from edgeq.runtime import native
from edgeq.runtime.fixedpoint import multiply_by_quantized_multiplier
from edgeq.runtime.kernels.requantize import fold_requantization

needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.describe()}")


@pytest.fixture(params=native.supported_isas() or ["none"])
def isa(request):
    if request.param == "none":
        pytest.skip(f"no native kernels: {native.describe()}")
    return request.param


def reference(acc, constant_term, multipliers, shifts, offset, low, high):
    """TFLite's per-channel requantization of acc [rows, channels] (acc + bias, then the multiplier)."""
    scaled = multiply_by_quantized_multiplier(acc.astype(np.int64) + constant_term, multipliers, shifts)
    return np.clip(scaled.astype(np.int64) + offset, low, high).astype(np.int8)


def stage_for(constant_term, multipliers, shifts, offset, bound, low=-128, high=127):
    folded = fold_requantization(constant_term, multipliers, shifts, offset, bound)
    assert folded is not None, "the folded form must take these constants"
    return native.folded_stage(folded, low, high)


def check(isa, acc, constant_term, multipliers, shifts, offset, low=-128, high=127):
    bound = int(np.abs(acc).max())
    stage = stage_for(constant_term, multipliers, shifts, offset, bound, low, high)
    got = native.output_stage(isa, stage, acc)
    expected = reference(acc, constant_term, multipliers, shifts, offset, low, high)
    mismatched = np.argwhere(got != expected)
    assert mismatched.size == 0, (f"{len(mismatched)} outputs differ, first at {mismatched[0]}: "
                                  f"acc {acc[tuple(mismatched[0])]}, got {got[tuple(mismatched[0])]}, "
                                  f"expected {expected[tuple(mismatched[0])]}")
    return stage


@needs_native
def test_lanes_are_prepared_for_multipliers_below_one():
    stage = stage_for(np.zeros(5, np.int64), np.full(5, 1 << 30), np.full(5, -7), 0, 1 << 20)
    assert stage.lanes


@needs_native
def test_lanes_are_not_prepared_for_multipliers_above_one():
    stage = stage_for(np.zeros(5, np.int64), np.full(5, 1 << 30), np.array([-7, -7, 1, -7, -7]), 0, 1 << 10)
    assert not stage.lanes


@needs_native
@pytest.mark.parametrize("channels", [1, 15, 16, 17, 40])
def test_random_multipliers_and_shifts_give_the_reference_integers(isa, channels):
    rng = np.random.default_rng(channels)
    multipliers = rng.integers(1 << 30, (1 << 31) - 1, channels, endpoint=True)
    shifts = rng.integers(-24, 0, channels, endpoint=True)
    constant_term = rng.integers(-(1 << 20), 1 << 20, channels)
    offset = int(rng.integers(-128, 128))
    acc = rng.integers(-(1 << 24), 1 << 24, (300, channels)).astype(np.int32)
    # small accumulators too, where the outputs are not all saturated
    acc[:150] = (acc[:150] >> 12).astype(np.int32)
    check(isa, acc, constant_term, multipliers, shifts, offset)


@needs_native
@pytest.mark.parametrize("shift", [0, -1, -2, -7, -12, -20, -31])
def test_every_accumulator_in_a_window_rounds_as_the_reference(isa, shift):
    """Exhaustive over 2^17 consecutive accumulators: with a power-of-two multiplier every other
    rounding step is an exact tie, on both signs."""
    multipliers = np.array([1 << 30, (1 << 30) + 1, (1 << 31) - 1, 1518500250])
    shifts = np.full(4, shift)
    constant_term = np.array([0, -3, 12345, -(1 << 15)])
    acc = np.repeat(np.arange(-(1 << 16), 1 << 16, dtype=np.int32)[:, None], 4, axis=1)
    # the folded form holds the offset times 2^(31 - shift) in int64: only 0 with the largest shifts
    for offset in ((-128, 0, 127) if shift > -24 else (0,)):
        check(isa, acc, constant_term, multipliers, shifts, offset)


@needs_native
def test_accumulators_at_the_int32_limits_give_the_reference_integers(isa):
    channels = 18
    rng = np.random.default_rng(7)
    multipliers = rng.integers(1 << 30, (1 << 31) - 1, channels, endpoint=True)
    multipliers[:2] = [1 << 30, (1 << 31) - 1]
    shifts = rng.integers(-20, -1, channels, endpoint=True)
    # as far as the folded form's int64 bound lets accumulators go with multipliers up to 2^31 - 1
    extremes = np.array([(1 << 30) - 1, -(1 << 30) + 1, (1 << 30) - 1 - (1 << 20), 0, 1, -1], np.int64)
    acc = np.repeat(extremes[:, None], channels, axis=1).astype(np.int32)
    constant_term = rng.integers(-(1 << 20), 1 << 20, channels)
    check(isa, acc, constant_term, multipliers, shifts, int(rng.integers(-128, 128)))


@needs_native
@pytest.mark.parametrize("low, high", [(-128, 127), (-128, 5), (0, 127), (-3, 3), (-128, -128)])
def test_activation_clamps_give_the_reference_integers(isa, low, high):
    rng = np.random.default_rng(abs(low * 1000 + high))
    channels = 33
    multipliers = rng.integers(1 << 30, (1 << 31) - 1, channels, endpoint=True)
    shifts = rng.integers(-12, -6, channels, endpoint=True)
    acc = rng.integers(-(1 << 17), 1 << 17, (200, channels)).astype(np.int32)
    check(isa, acc, rng.integers(-5000, 5000, channels), multipliers, shifts, int(rng.integers(-128, 128)), low, high)


@needs_native
def test_multipliers_above_one_give_the_reference_integers(isa):
    rng = np.random.default_rng(3)
    channels = 20
    multipliers = rng.integers(1 << 30, (1 << 31) - 1, channels, endpoint=True)
    shifts = rng.integers(-3, 4, channels, endpoint=True)
    acc = rng.integers(-(1 << 12), 1 << 12, (100, channels)).astype(np.int32)
    check(isa, acc, rng.integers(-100, 100, channels), multipliers, shifts, 5)

"""TFLite's fixed-point requantization: hand-worked values for both builds, and LiteRT as referee."""
from fractions import Fraction

import numpy as np
import pytest

from edgeq.runtime import fixedpoint
from edgeq.runtime.fixedpoint import (
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    round_half_away,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# -- std::round ---------------------------------------------------------------------------------

FLOAT32_JUST_BELOW_HALF = np.nextafter(np.float32(0.5), np.float32(0))  # 0.49999997
FLOAT64_JUST_BELOW_HALF = np.nextafter(0.5, 0.0)  # 0.49999999999999994


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_half_away_rounds_ties_away_from_zero(dtype):
    ties = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -127.5], dtype=dtype)
    np.testing.assert_array_equal(round_half_away(ties), [1, -1, 2, -2, 3, -3, 127, -128])


@pytest.mark.parametrize("just_below_half", [FLOAT32_JUST_BELOW_HALF, FLOAT64_JUST_BELOW_HALF])
def test_round_half_away_rounds_the_float_just_below_one_half_to_zero(just_below_half):
    # floor(|x| + 0.5) gives 1 here: the sum itself rounds up to 1.0.
    x = np.array([just_below_half, -just_below_half])
    np.testing.assert_array_equal(round_half_away(x), [0, 0])


@pytest.mark.parametrize("dtype, odd", [(np.float32, 2**23 + 1), (np.float64, 2**52 + 1)])
def test_round_half_away_keeps_odd_integers_beyond_the_mantissa(dtype, odd):
    # x + 0.5 is not representable there and rounds to the even neighbour.
    x = np.array([odd, -odd, odd + 2], dtype=dtype)
    np.testing.assert_array_equal(round_half_away(x), x)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_round_half_away_keeps_the_input_float_type(dtype):
    assert round_half_away(np.array([0.7, -1.5], dtype=dtype)).dtype == dtype
    assert round_half_away(dtype(2.5)) == 3 and isinstance(round_half_away(dtype(2.5)), dtype)


def test_round_half_away_passes_infinities_and_nan_through():
    result = round_half_away(np.array([np.inf, -np.inf, np.nan], dtype=np.float32))
    assert result[0] == np.inf and result[1] == -np.inf and np.isnan(result[2])


def _c_math_library():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("m")
    if name is None:
        pytest.skip("no C math library to compare with")
    return ctypes.CDLL(name)


@pytest.mark.parametrize("dtype, c_function", [(np.float32, "roundf"), (np.float64, "round")])
def test_round_half_away_equals_the_c_library_round(dtype, c_function):
    import ctypes

    function = getattr(_c_math_library(), c_function)
    c_type = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    function.restype, function.argtypes = c_type, [c_type]
    rng = np.random.default_rng(0)
    # Values around every magnitude where rounding is decided: halves, their neighbours, big values.
    halves = (np.arange(-300, 300) + 0.5).astype(dtype)
    near_halves = np.concatenate([np.nextafter(halves, dtype(np.inf)), np.nextafter(halves, dtype(-np.inf))])
    spread = (rng.standard_normal(3000) * 10.0 ** rng.integers(-3, 20, 3000)).astype(dtype)
    x = np.concatenate([halves, near_halves, spread, [FLOAT32_JUST_BELOW_HALF, FLOAT64_JUST_BELOW_HALF]]).astype(dtype)
    expected = np.array([function(float(v)) for v in x], dtype=dtype)
    np.testing.assert_array_equal(round_half_away(x), expected)


# -- QuantizeMultiplier ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "real, expected",
    [
        (0.5, (2**30, 0)),
        (0.25, (2**30, -1)),
        (0.75, (3 * 2**29, 0)),
        (1.0, (2**30, 1)),
        (3.0, (3 * 2**29, 2)),
        (0.0, (0, 0)),
        (2.0**-32, (2**30, -31)),  # the smallest shift kept
        (2.0**-33, (0, 0)),  # shift -32 would shift everything out: flushed to zero
    ],
)
def test_quantize_multiplier_hand_worked(real, expected):
    assert quantize_multiplier(real) == expected


def test_quantize_multiplier_just_below_one_carries_into_the_shift():
    # frexp gives fraction 1 - 2^-40, which rounds to 2^31 in Q31: halve it and bump the shift.
    assert quantize_multiplier(1.0 - 2.0**-40) == (2**30, 1)


def test_quantize_multiplier_rounds_half_away_from_zero():
    # fraction * 2^31 = 2^30 + 0.5 exactly -> rounds up to 2^30 + 1.
    real = (2**30 + 0.5) / 2**31
    assert quantize_multiplier(real) == (2**30 + 1, 0)


def test_quantize_multiplier_is_vectorized_for_per_channel_scales():
    reals = np.array([0.25, 0.75, 3.0, 2.0**-33])
    multipliers, shifts = quantize_multiplier(reals)
    assert multipliers.dtype == np.int32 and shifts.dtype == np.int32
    assert multipliers.tolist() == [2**30, 3 * 2**29, 3 * 2**29, 0]
    assert shifts.tolist() == [-1, 0, 2, 0]
    for real, m, s in zip(reals, multipliers, shifts):
        assert quantize_multiplier(float(real)) == (m, s)


def test_quantize_multiplier_reconstructs_the_real_multiplier():
    reals = np.random.default_rng(0).uniform(1e-6, 4.0, size=1000)
    multipliers, shifts = quantize_multiplier(reals)
    rebuilt = multipliers.astype(np.float64) * 2.0 ** (shifts.astype(np.float64) - 31)
    np.testing.assert_allclose(rebuilt, reals, rtol=2.0**-30)
    assert np.all((multipliers >= 2**30) & (multipliers < 2**31))


# -- the rounding helpers ----------------------------------------------------------------------

def test_srdhm_saturates_the_one_overflow_case():
    assert saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN) == INT32_MAX
    assert saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MAX) == -INT32_MAX


def test_srdhm_rounds_ties_toward_plus_infinity():
    # 2 * a * b / 2^32 with b = 2^30: a / 2, so odd a gives a tie.
    a = np.array([3, -3, 5, -5])
    assert saturating_rounding_doubling_high_mul(a, 2**30).tolist() == [2, -1, 3, -2]


def test_rounding_divide_by_pot_rounds_ties_away_from_zero():
    x = np.array([5, -5, 6, -6, 7, -7, 1, -1])
    assert rounding_divide_by_pot(x, 1).tolist() == [3, -3, 3, -3, 4, -4, 1, -1]
    assert rounding_divide_by_pot(x, 2).tolist() == [1, -1, 2, -2, 2, -2, 0, 0]


# -- MultiplyByQuantizedMultiplier, both builds -------------------------------------------------

QUARTER = quantize_multiplier(0.25)  # exactly representable: only the final rounding matters


@pytest.mark.parametrize(
    "x, double, single",
    [
        (6, 2, 2),  # 1.5: both round up
        (2, 1, 1),  # 0.5
        (-2, -1, 0),  # -0.5: double rounds away from zero, single toward +inf
        (-6, -2, -1),  # -1.5
        (-1, 0, 0),  # -0.25
        (-7, -2, -2),  # -1.75
    ],
)
def test_multiply_ties_at_a_negative_shift(x, double, single):
    assert multiply_by_quantized_multiplier(x, *QUARTER, single_rounding=False) == double
    assert multiply_by_quantized_multiplier(x, *QUARTER, single_rounding=True) == single


def test_double_rounding_can_round_twice():
    # m ~= 0.2 (M ~= 0.8 * 2^31, shift -2); 2 * m = 0.39999...: the high-mul rounds 1.6 to 2,
    # then dividing 2 by 4 is a tie and rounds up to 1. Single rounding gives the exact 0.
    multiplier, shift = 1717986918, -2
    assert multiply_by_quantized_multiplier(2, multiplier, shift, single_rounding=False) == 1
    assert multiply_by_quantized_multiplier(2, multiplier, shift, single_rounding=True) == 0


def test_multiply_with_a_positive_shift():
    multiplier, shift = quantize_multiplier(3.0)
    x = np.array([1, -1, 1000, -1000])
    for single in (False, True):
        assert multiply_by_quantized_multiplier(x, multiplier, shift, single).tolist() == [3, -3, 3000, -3000]


def test_multiplier_near_one_is_identity_on_small_values():
    multiplier, shift = quantize_multiplier(1.0 - 2.0**-20)
    x = np.arange(-1000, 1001)
    for single in (False, True):
        np.testing.assert_array_equal(multiply_by_quantized_multiplier(x, multiplier, shift, single), x)


def test_multiply_saturates_int32_min_times_int32_min_in_double_rounding():
    # M = INT32_MIN is not produced by quantize_multiplier, but the high-mul must not wrap.
    assert multiply_by_quantized_multiplier(INT32_MIN, INT32_MIN, 0, single_rounding=False) == INT32_MAX


def _exact_double(x, multiplier, shift):
    left, right = max(shift, 0), max(-shift, 0)
    high = Fraction(x * 2**left * multiplier, 2**31)
    t = int(np.floor(high + Fraction(1, 2)))  # SRDHM: nearest, ties toward +inf
    q = Fraction(t, 2**right)
    return int(np.sign(q) * np.floor(abs(q) + Fraction(1, 2)))  # RDBPOT: ties away from zero


def _exact_single(x, multiplier, shift):
    return int(np.floor(Fraction(x * multiplier, 2 ** (31 - shift)) + Fraction(1, 2)))


def test_both_builds_match_exact_rational_arithmetic():
    rng = np.random.default_rng(1)
    reals = rng.uniform(1e-4, 0.9, size=40)
    x = rng.integers(-(2**20), 2**20, size=40)
    multipliers, shifts = quantize_multiplier(reals)
    double = multiply_by_quantized_multiplier(x, multipliers, shifts, single_rounding=False)
    single = multiply_by_quantized_multiplier(x, multipliers, shifts, single_rounding=True)
    for i in range(40):
        args = (int(x[i]), int(multipliers[i]), int(shifts[i]))
        assert double[i] == _exact_double(*args)
        assert single[i] == _exact_single(*args)


def test_per_channel_multipliers_broadcast_along_the_last_axis():
    multipliers, shifts = quantize_multiplier(np.array([0.25, 0.5, 2.0]))
    acc = np.full((2, 3), 10)
    out = multiply_by_quantized_multiplier(acc, multipliers, shifts)
    assert out.tolist() == [[3, 5, 20], [3, 5, 20]]


# -- LiteRT as referee: which rounding does the wheel's BUILTIN_REF use? ------------------------
#
# Each model maps every int8 value x in [-128, 127] through one op whose effective real multiplier
# is exactly 0.25 (input scale 1, weight 1, output scale 4, zero points 0): every x = 2 (mod 4) is a
# tie, and x = 1 (mod 4) exposes the double-rounding artifact (e.g. 9 * 0.25: the high-mul rounds 4.5
# to 5, then 5 / 2 rounds to 3 instead of 2). The builds disagree on 64 of the 256 values.

pytest.importorskip("ai_edge_litert")
from edgeq.testing import litert  # noqa: E402

from edgeq.runtime.tflite_format.writer import write_tflite  # noqa: E402
from edgeq.runtime.fixedpoint import multiply_by_quantized_multiplier_rounding_away  # noqa: E402
from edgeq.runtime.ir import Graph, Op, QuantParams, Tensor

ALL_INT8 = np.arange(-128, 128, dtype=np.int8)
CONV_OPTIONS = {"padding": "VALID", "stride_w": 1, "stride_h": 1, "dilation_w_factor": 1,
                "dilation_h_factor": 1, "fused_activation_function": "NONE"}


def _run_reference(graph: Graph, x: np.ndarray) -> np.ndarray:
    interpreter = litert.Interpreter(
        model_content=write_tflite(graph),
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF,
    )
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).ravel().astype(np.int64)


def _single_op(op_type, x_shape, constants=(), options=None, weight_axis=0) -> Graph:
    g = Graph()
    g.add_tensor(Tensor("x", x_shape, np.int8, quant=QuantParams(1.0, 0)))
    names = ["x"]
    for kind, shape in constants:
        if kind == "weight":
            g.add_tensor(Tensor("w", shape, np.int8, np.ones(shape), QuantParams([1.0], [0], weight_axis)))
            names.append("w")
        else:
            g.add_tensor(Tensor("b", shape, np.int32, np.zeros(shape), QuantParams([1.0], [0], 0)))
            names.append("b")
    out_shape = x_shape
    g.add_tensor(Tensor("y", out_shape, np.int8, quant=QuantParams(4.0, 0)))
    g.add_op(Op(op_type, names, ["y"], options or {}))
    g.inputs, g.outputs = ["x"], ["y"]
    return g


QUARTER_M, QUARTER_SHIFT = quantize_multiplier(0.25)
DOUBLE = multiply_by_quantized_multiplier(ALL_INT8, QUARTER_M, QUARTER_SHIFT, single_rounding=False)
SINGLE = multiply_by_quantized_multiplier(ALL_INT8, QUARTER_M, QUARTER_SHIFT, single_rounding=True)
AWAY = multiply_by_quantized_multiplier_rounding_away(ALL_INT8, QUARTER_M, QUARTER_SHIFT)


def test_the_probe_separates_the_builds():
    assert np.count_nonzero(DOUBLE != SINGLE) == 64
    assert np.count_nonzero(AWAY != SINGLE) == 32  # the negative ties
    assert np.count_nonzero(AWAY != DOUBLE) == 32  # the double-rounding artifacts


@pytest.mark.parametrize(
    "graph",
    [
        _single_op("CONV_2D", (1, 16, 16, 1), [("weight", (1, 1, 1, 1)), ("bias", (1,))], CONV_OPTIONS),
        _single_op("DEPTHWISE_CONV_2D", (1, 16, 16, 1), [("weight", (1, 1, 1, 1)), ("bias", (1,))],
                   {**CONV_OPTIONS, "depth_multiplier": 1}, weight_axis=3),
        _single_op("QUANTIZE", (256,)),
        _single_op("MUL", (256,), [("weight", (1,))], {"fused_activation_function": "NONE"}),
    ],
    ids=["CONV_2D", "DEPTHWISE_CONV_2D", "QUANTIZE-requantize", "MUL"],
)
def test_litert_reference_kernels_use_double_rounding(graph):
    result = _run_reference(graph, ALL_INT8.reshape(graph["x"].shape))
    np.testing.assert_array_equal(result, DOUBLE)
    assert not np.array_equal(result, SINGLE)
    assert fixedpoint.SINGLE_ROUNDING is False


@pytest.mark.parametrize("per_channel", [False, True])
def test_litert_reference_fully_connected_rounds_once_ties_away_from_zero(per_channel):
    g = _single_op("FULLY_CONNECTED", (256, 1), [("weight", (1, 1)), ("bias", (1,))],
                   {"fused_activation_function": "NONE"})
    if not per_channel:
        g["w"].quant = QuantParams(1.0, 0)
    result = _run_reference(g, ALL_INT8.reshape(256, 1))
    np.testing.assert_array_equal(result, AWAY)
    assert not np.array_equal(result, DOUBLE) and not np.array_equal(result, SINGLE)


# -- gemmlowp fixed-point functions: hand-worked values -----------------------------------------

from edgeq.runtime.fixedpoint import (  # noqa: E402
    calculate_input_radius,
    count_leading_zeros_u32,
    down_scale_int32_to_int16_multiplier,
    exp_on_negative_values,
    get_inv_sqrt_quantized_multiplier_exp,
    get_reciprocal,
    multiply_by_quantized_multiplier_greater_than_one,
    one_over_one_plus_x_for_x_in_0_1,
    preprocess_softmax_scaling,
    rounding_divide_by_pot_int16,
    rounding_half_sum,
    saturating_doubling_high_mul_int16,
    saturating_left_shift_int16,
    saturating_rounding_doubling_high_mul_int16,
    saturating_rounding_multiply_by_pot,
)


def test_saturating_rounding_multiply_by_pot():
    x = np.array([5, -5, 6, 3, 2**29, -(2**29) - 1, 2**29 - 1])
    assert saturating_rounding_multiply_by_pot(x, -1).tolist() == [3, -3, 3, 2, 2**28, -(2**28) - 1, 2**28]
    # 2^29 * 4 = 2^31 does not fit: saturates; 2^29 - 1 is the largest value that shifts by 2 exactly.
    assert saturating_rounding_multiply_by_pot(x, 2).tolist() == [20, -20, 24, 12, INT32_MAX, INT32_MIN, 2**31 - 4]
    assert saturating_rounding_multiply_by_pot(x, 0).tolist() == x.tolist()


def test_rounding_half_sum_rounds_half_away_from_zero():
    assert rounding_half_sum([1, -1, 1, 2, INT32_MAX], [2, -2, -1, 2, INT32_MAX]).tolist() == [2, -2, 0, 2, INT32_MAX]


def test_count_leading_zeros():
    assert count_leading_zeros_u32([0, 1, 2, 255, 2**30, 2**31 - 1, -1]).tolist() == [32, 31, 30, 24, 1, 1, 0]


def test_exp_on_negative_values_hand_worked():
    # Q5.26 inputs 0, -1/4, -1, -2, -5; Q0.31 outputs. exp(0) is "one", INT32_MAX.
    a = np.array([0, -(2**24), -(2**26), -(2**27), -5 * 2**26])
    result = exp_on_negative_values(a, 5)
    assert result[0] == INT32_MAX
    np.testing.assert_allclose(result[1:] / 2.0**31, np.exp([-0.25, -1.0, -2.0, -5.0]), rtol=0, atol=5e-7)
    # Below -32 (only representable with more than 5 integer bits) the result is exactly 0.
    assert exp_on_negative_values(np.array([-33 * 2**25]), 6)[0] == 0
    assert abs(exp_on_negative_values(np.array([-8 * 2**25]), 6)[0] / 2.0**31 - np.exp(-8.0)) < 5e-7


def test_exp_on_negative_values_is_monotonic():
    a = -np.arange(0, 2**31 - 1, 2**31 // 4096, dtype=np.int64)
    result = exp_on_negative_values(a, 5).astype(np.int64)
    assert np.all(np.diff(result) <= 0)


def test_one_over_one_plus_x_hand_worked():
    x = np.array([0, 2**30, 2**29, 2**31 - 1])  # 0, 1/2, 1/4, ~1
    result = one_over_one_plus_x_for_x_in_0_1(x) / 2.0**31
    np.testing.assert_allclose(result, [1.0, 2.0 / 3.0, 0.8, 0.5], atol=3e-9)


def test_get_reciprocal_hand_worked():
    # 4.0 in Q12.19 is 2^21: normalized it is exactly 1 (reciprocal "one"), 2 bits over unit.
    raw, bits = get_reciprocal(np.array([2**21, 3 * 2**19, 5 * 2**17]), 12)
    assert raw[0] == INT32_MAX and bits[0] == 2
    # 3.0 = 1.5 * 2^1: reciprocal of 1.5 with 1 bit over unit; 1.25 = 1.25 * 2^0.
    assert bits.tolist() == [2, 1, 0]
    np.testing.assert_allclose(raw[1:] / 2.0**31, [2.0 / 3.0, 0.8], atol=3e-9)


def test_multiply_by_quantized_multiplier_greater_than_one():
    # SRDHM(x * 2^2, 2^30) = x * 4 / 2 rounded: exact here.
    assert multiply_by_quantized_multiplier_greater_than_one([-3, 7], 2**30, 2).tolist() == [-6, 14]


def test_preprocess_softmax_scaling_and_input_radius():
    # beta * scale * 2^26 = 2^-10 * 2^26 = 2^16 = 2^30 * 2^(17 - 31).
    assert preprocess_softmax_scaling(1.0, 2.0**-10, 5) == (2**30, 17)
    # floor(31 * 2^26 / 2^17) = 31 * 2^9.
    assert calculate_input_radius(5, 17) == 31 * 512
    # A huge scale caps the multiplier at 2^31 - 1.
    assert preprocess_softmax_scaling(1.0, 100.0, 5) == quantize_multiplier(2.0**31 - 1)


def test_int16_high_muls():
    a = np.array([16384, -3, 3, -32768, 100])
    b = np.array([16384, 16384, 16384, -32768, -100])
    # 2ab / 2^16: 8192, -1.5, 1.5, 1 (saturates), -0.305.
    assert saturating_rounding_doubling_high_mul_int16(a, b).tolist() == [8192, -1, 2, 32767, 0]
    # SQDMULH truncates toward zero instead of rounding.
    assert saturating_doubling_high_mul_int16(a, b).tolist() == [8192, -1, 1, 32767, 0]
    assert saturating_doubling_high_mul_int16([3, -3], [32767, 32767]).tolist() == [2, -2]


def test_int16_shifts():
    assert rounding_divide_by_pot_int16([5, -5, 6, -7], 1).tolist() == [3, -3, 3, -4]
    assert saturating_left_shift_int16([20000, -20000, 100], 1).tolist() == [32767, -32768, 200]


def test_down_scale_int32_to_int16_multiplier():
    assert down_scale_int32_to_int16_multiplier(2**30) == 2**14
    assert down_scale_int32_to_int16_multiplier(2**30 + 2**15) == 2**14 + 1  # half rounds up
    assert down_scale_int32_to_int16_multiplier(2**30 + 2**15 - 1) == 2**14
    assert down_scale_int32_to_int16_multiplier(2**31 - 1) == 2**15 - 1


def test_inverse_sqrt_multiplier():
    x = np.array([0, 1, 4, 9, 100, 255, 2**20, 2**30])
    multiplier, shift = get_inv_sqrt_quantized_multiplier_exp(x, -1)
    assert multiplier[:2].tolist() == [INT32_MAX, INT32_MAX] and shift[:2].tolist() == [0, 0]
    rebuilt = multiplier[2:] * 2.0 ** (shift[2:].astype(np.float64) - 31)
    np.testing.assert_allclose(rebuilt, 1 / np.sqrt(x[2:].astype(np.float64)), rtol=1e-6)


# -- LiteRT as referee: std::round in float32 ----------------------------------------------------
#
# LiteRT's QUANTIZE computes round(x / scale) and its RELU6 round(6 / output_scale), both with
# std::round on float32 values; 0.49999997f is where floor(|x| + 0.5) rounds differently.

from edgeq.testing.referees import integer_tensor_mismatches, run_edgeq  # noqa: E402


def _float_to_int8_quantize(size: int, scale: float) -> Graph:
    g = Graph()
    g.add_tensor(Tensor("x", (size,), np.float32))
    g.add_tensor(Tensor("y", (size,), np.int8, quant=QuantParams(scale, 0)))
    g.add_op(Op("QUANTIZE", ["x"], ["y"], {}))
    g.inputs, g.outputs = ["x"], ["y"]
    return g


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.25])
def test_float32_quantize_rounds_as_litert_reference_kernels(scale):
    below = FLOAT32_JUST_BELOW_HALF
    quotients = np.array([below, -below, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 1 + below, 126.5, -127.5,
                          np.nextafter(np.float32(2.5), np.float32(3)), 1e6, -1e6], dtype=np.float32)
    x = quotients * np.float32(scale)  # a power-of-two scale: x / scale gives the quotients exactly
    content = write_tflite(_float_to_int8_quantize(x.size, scale))
    assert integer_tensor_mismatches(content, [x]) == {"y": 0}
    np.testing.assert_array_equal(run_edgeq(content, [x])[0][:2], [0, 0])  # not 1 and -1


def _scale_with_quotient(numerator: float, quotient: np.float32) -> np.float32:
    """A float32 scale s with float32(numerator) / s == quotient, searched around the real one."""
    below = above = np.float32(numerator / float(quotient))
    for _ in range(64):
        for candidate in (below, above):
            if np.float32(numerator) / candidate == quotient:
                return candidate
        below, above = np.nextafter(below, np.float32(0)), np.nextafter(above, np.float32(np.inf))
    raise AssertionError(f"no float32 scale gives {numerator} / s == {quotient!r}")


def test_int8_relu6_upper_bound_rounds_as_litert_reference_kernels():
    scale = float(_scale_with_quotient(6.0, FLOAT32_JUST_BELOW_HALF))  # 6 / scale rounds to 0, not 1
    g = Graph()
    g.add_tensor(Tensor("x", (256,), np.int8, quant=QuantParams(scale, -128)))
    g.add_tensor(Tensor("y", (256,), np.int8, quant=QuantParams(scale, -128)))
    g.add_op(Op("RELU6", ["x"], ["y"], {}))
    g.inputs, g.outputs = ["x"], ["y"]
    content = write_tflite(g)
    assert integer_tensor_mismatches(content, [ALL_INT8])["y"] == 0
    # The upper bound is the zero point itself: every output is -128.
    np.testing.assert_array_equal(run_edgeq(content, [ALL_INT8])[0], np.full(256, -128))

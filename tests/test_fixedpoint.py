"""TFLite's fixed-point requantization: hand-worked values for both builds, and LiteRT as referee."""
from fractions import Fraction

import numpy as np
import pytest

from runtime import fixedpoint
from runtime.fixedpoint import (
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


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

litert = pytest.importorskip("ai_edge_litert.interpreter")

from converter.tflite_writer import write_tflite  # noqa: E402
from runtime.fixedpoint import multiply_by_quantized_multiplier_rounding_away  # noqa: E402
from runtime.model import Graph, Op, QuantParams, Tensor  # noqa: E402

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

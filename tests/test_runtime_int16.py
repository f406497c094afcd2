"""int16 activation kernels (TFLite's 16x8 scheme: symmetric int16 activations with zero point 0):
single-op int16 models written with write_tflite, run on LiteRT's reference kernels (BUILTIN_REF, in
LiteRT's child-process worker) and on our runtime, must agree integer for integer in every tensor.

Ops with an int16 kernel here (operator version written, from op_version.cc):
  ADD 3 (general scales; 1 with pot_scale_int16 and power-of-two scales), SUB 5 (1 likewise), MUL 4,
  MAXIMUM 4, MINIMUM 4, RELU 3, RELU6 3, LEAKY_RELU 2, PRELU 1 (int8 alpha), LOGISTIC 3, TANH 3, EXP 2,
  LOG 2, RSQRT 3, SQRT 2, GELU 1, ABS 3, SOFTMAX 3, MEAN 3, REDUCE_MAX 3, REDUCE_MIN 3, SUM 1, AVERAGE_POOL_2D 3,
  BATCH_MATMUL 3 (int16 or int8 rhs), RESIZE_BILINEAR 4, RESIZE_NEAREST_NEIGHBOR 4.
Elementwise ops are checked on all 65536 int16 inputs. SUM is held to LiteRT's builtin SUM kernel,
as int8 SUM is: BUILTIN_REF's int16 SUM is not the sum (pinned below).

Ops LiteRT 2.3's BUILTIN_REF cannot run on int16 activations (so the int16x8 quantizer must not emit
them with int16 tensors; our runtime refuses them at load), each pinned by a test with LiteRT's error:
  HARD_SWISH      "Only float32, uint8 and int8 are supported currently, got INT16" (at invoke)
  RELU_N1_TO_1    "Only float32, uint8, int8 supported currently, got INT16" (at invoke)
  LOG_SOFTMAX     "Only float32, uint8 and int8 are supported currently, got INT16" (at invoke)
  SQUARED_DIFFERENCE "SquaredDifference only supports FLOAT32 and INT32 now, got 7" (at invoke)
Params LiteRT cannot take are refused too: int16 ADD/SUB whose output scale is finer than
2 max(s1, s2) / 2^15 (add.cc aborts, sub.cc shifts by a negative amount), LOGISTIC/TANH/SOFTMAX with an
output scale other than 1/32768, an int16 alpha for PRELU (LiteRT reads it as int8), nonzero zero points.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from edgeq.runtime.interpreter import Interpreter  # noqa: E402
from edgeq.runtime.ir import Graph, ModelError, Op, QuantParams, Tensor  # noqa: E402
from edgeq.runtime.tflite_format.writer import write_tflite  # noqa: E402
from edgeq.testing.int8_graphs import binary_graph, random_int8, unary_graph  # noqa: E402
from edgeq.testing.referees import assert_exact, run_litert  # noqa: E402

I16 = np.int16
ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)


def _symmetric(scale):
    return (scale, 0)


# -- ADD / SUB / MUL ------------------------------------------------------------------------------

# (shape_1, shape_2, scale_1, scale_2, output scale, fused activation)
INT16_BINARY_CASES = {
    "same_shape": ((2, 5, 6, 3), (2, 5, 6, 3), 1e-3, 7e-4, 2e-3, "NONE"),
    "broadcast_row": ((2, 5, 6, 3), (1, 1, 6, 3), 1e-3, 7e-4, 2e-3, "NONE"),
    "broadcast_vector": ((2, 5, 6, 3), (3,), 1e-3, 7e-4, 1e-3, "RELU6"),
    "broadcast_both": ((2, 1, 6, 1), (2, 5, 6, 3), 1e-3, 7e-4, 1e-3, "RELU"),
    "saturating": ((4, 50), (4, 50), 0.5, 1e-5, 1e-4, "NONE"),
    "equal_scales": ((4, 50), (4, 50), 2e-4, 2e-4, 4e-4, "NONE"),
    "tiny_output_scale": ((4, 50), (4, 50), 1e-3, 7e-4, 1e-6, "NONE"),
    "huge_scales": ((4, 50), (4, 50), 30.0, 100.0, 200.0, "RELU_N1_TO_1"),
    "scalar": ((4, 50), (), 1e-3, 7e-4, 2e-3, "NONE"),
    "empty": ((0, 5), (1, 5), 1e-3, 7e-4, 2e-3, "NONE"),
}


def _int16_binary(op_type, case, seed=0, pot_scale_int16=False):
    shape_1, shape_2, s1, s2, so, act = INT16_BINARY_CASES[case] if isinstance(case, str) else case
    options = {"pot_scale_int16": pot_scale_int16} if op_type in ("ADD", "SUB") else None
    return binary_graph(op_type, shape_1, shape_2, _symmetric(s1), _symmetric(s2), _symmetric(so), act,
                        seed=seed, dtype=I16, options=options)


@pytest.mark.parametrize("case", sorted(INT16_BINARY_CASES))
@pytest.mark.parametrize("op_type", ["ADD", "SUB", "MUL"])
def test_int16_add_sub_mul_match_litert_reference(op_type, case):
    assert_exact(*_int16_binary(op_type, case))


@pytest.mark.parametrize("op_type", ["ADD", "SUB"])
def test_int16_add_sub_on_every_extreme_pair(op_type):
    extremes = np.array([-32768, -32767, -16384, -1, 0, 1, 16383, 32766, 32767], I16)
    a, b = (m.ravel() for m in np.meshgrid(extremes, extremes))
    for s1, s2, so in [(1e-3, 1e-3, 1e-3), (1e-3, 3e-3, 2e-3), (0.25, 1e-4, 0.5)]:
        graph, _ = _int16_binary(op_type, ((a.size,), (b.size,), s1, s2, so, "NONE"))
        assert_exact(graph, [a, b])


@pytest.mark.parametrize("op_type", ["ADD", "SUB"])
@pytest.mark.parametrize("scales", [(2**-10, 2**-12, 2**-10), (2**-12, 2**-10, 2**-10), (2**-8, 2**-8, 2**-8)], ids=str)
def test_int16_power_of_two_add_sub_take_the_shift_path(op_type, scales):
    """pot_scale_int16 (the schema default) with power-of-two scales: LiteRT's LSTM fixed-point path."""
    graph, inputs = _int16_binary(op_type, ((4, 50), (4, 50), *scales, "NONE"), pot_scale_int16=True)
    assert_exact(graph, inputs)


def test_int16_power_of_two_sub_broadcasts():
    graph, inputs = _int16_binary("SUB", ((4, 50), (1, 50), 2**-12, 2**-10, 2**-10, "RELU"), pot_scale_int16=True)
    assert_exact(graph, inputs)


def test_int16_pot_option_with_general_scales_takes_the_general_path():
    graph, inputs = _int16_binary("ADD", ((4, 50), (4, 50), 1e-3, 7e-4, 2e-3, "NONE"), pot_scale_int16=True)
    assert_exact(graph, inputs)


def test_int16_mul_on_every_extreme_pair():
    extremes = np.array([-32768, -32767, -181, -1, 0, 1, 181, 32767], I16)
    a, b = (m.ravel() for m in np.meshgrid(extremes, extremes))
    for so in [1e-6, 1e-3, 10.0]:
        graph, _ = _int16_binary("MUL", ((a.size,), (b.size,), 1e-3, 2e-3, so, "NONE"))
        assert_exact(graph, [a, b])


@pytest.mark.parametrize("op_type", ["MAXIMUM", "MINIMUM"])
def test_int16_maximum_minimum(op_type):
    graph, inputs = _int16_binary(op_type, ((2, 5, 6, 3), (1, 1, 6, 3), 1e-3, 1e-3, 1e-3, "NONE"))
    assert_exact(graph, inputs)


def test_int16_add_refuses_a_nonzero_zero_point():
    graph, _ = binary_graph("ADD", (4,), (4,), (1e-3, 3), (1e-3, 0), (1e-3, 0), "NONE", dtype=I16)
    with pytest.raises(ModelError, match="zero point 0"):
        Interpreter.from_graph(graph).allocate_tensors()


@pytest.mark.parametrize("op_type", ["ADD", "SUB"])
def test_int16_add_sub_refuse_an_output_multiplier_above_one(op_type):
    """2 max(s1, s2) / (2^15 s_out) >= 1: LiteRT's add.cc aborts (SIGABRT at allocate_tensors) and
    sub.cc right-shifts by a negative amount (undefined in C; every output differs from the
    arithmetic), so the kernel refuses the op instead of inventing a result."""
    graph, _ = _int16_binary(op_type, ((4, 50), (4, 50), 0.5, 1e-5, 1e-5, "NONE"))
    with pytest.raises(ModelError, match="too fine"):
        Interpreter.from_graph(graph).allocate_tensors()


# -- elementwise activations: all 65536 inputs ------------------------------------------------------

INT16_INPUT_SCALES = [1e-6, 3.0517578125e-05, 1e-4, 2**-12, 1e-3, 0.0123, 0.5, 3.0]
Q15 = 1.0 / 32768


def _int16_unary(op_type, input_scale, output_scale, options=None, constants=()):
    graph, _ = unary_graph(op_type, (65536,), (65536,), _symmetric(input_scale), _symmetric(output_scale),
                           options=options, constants=constants, dtype=I16)
    return graph


def _exact_on_every_int16(op_type, input_scale, output_scale, options=None, x=ALL_INT16):
    graph, _ = unary_graph(op_type, x.shape, x.shape, _symmetric(input_scale), _symmetric(output_scale),
                           options=options, dtype=I16)
    assert_exact(graph, [x])


@pytest.mark.parametrize("input_scale", INT16_INPUT_SCALES + [2**-11, 2**-13], ids=str)
@pytest.mark.parametrize("op_type", ["LOGISTIC", "TANH"])
def test_int16_logistic_tanh_on_every_input(op_type, input_scale):
    """Power-of-two input scales (2^-12 for both, 2^-11 for TANH) take the table's own scaling."""
    _exact_on_every_int16(op_type, input_scale, Q15)


@pytest.mark.parametrize("input_scale, output_scale", [(1e-3, 1e-3), (1e-3, 2e-4), (2e-4, 1e-2), (0.5, 1e-4),
                                                       (1e-5, 1e-5)], ids=str)
@pytest.mark.parametrize("op_type", ["RELU", "RELU6"])
def test_int16_relu_family_on_every_input(op_type, input_scale, output_scale):
    _exact_on_every_int16(op_type, input_scale, output_scale)


@pytest.mark.parametrize("alpha", [0.01, 0.2, 1.5, -0.3])
@pytest.mark.parametrize("input_scale, output_scale", [(1e-3, 1e-3), (1e-3, 2e-4), (0.5, 3e-3)], ids=str)
def test_int16_leaky_relu_on_every_input(input_scale, output_scale, alpha):
    _exact_on_every_int16("LEAKY_RELU", input_scale, output_scale, {"alpha": alpha})


@pytest.mark.parametrize("input_scale, output_scale", [(1e-4, 1e-3), (2**-10, 2**-8), (1e-3, 0.05), (3e-4, 0.7),
                                                       (0.01, 1e-3)], ids=str)
def test_int16_exp_on_every_input(input_scale, output_scale):
    _exact_on_every_int16("EXP", input_scale, output_scale)


@pytest.mark.parametrize("input_scale, output_scale", [(1e-4, 1e-3), (1e-3, 2e-4), (0.05, 1e-3), (3.0, 0.01)], ids=str)
def test_int16_log_on_every_input(input_scale, output_scale):
    _exact_on_every_int16("LOG", input_scale, output_scale)


@pytest.mark.parametrize("approximate", [False, True])
@pytest.mark.parametrize("input_scale, output_scale", [(1e-4, 1e-4), (2**-12, 2**-12), (1e-3, 2e-3), (0.01, 0.01)],
                         ids=str)
def test_int16_gelu_on_every_input(input_scale, output_scale, approximate):
    _exact_on_every_int16("GELU", input_scale, output_scale, {"approximate": approximate})


@pytest.mark.parametrize("input_scale, output_scale", [(1e-3, 1e-3), (1e-3, 2e-4), (2e-4, 1e-2), (0.5, 1e-4)],
                         ids=str)
def test_int16_abs_on_every_input(input_scale, output_scale):
    _exact_on_every_int16("ABS", input_scale, output_scale)


@pytest.mark.parametrize("input_scale, output_scale", [(1e-4, 1e-2), (1e-3, 1e-3), (0.05, 1e-4)], ids=str)
def test_int16_rsqrt_on_every_non_negative_input(input_scale, output_scale):
    _exact_on_every_int16("RSQRT", input_scale, output_scale, x=ALL_INT16[ALL_INT16 >= 0])


@pytest.mark.parametrize("input_scale, output_scale", [(1e-4, 1e-4), (1e-3, 1e-3), (0.05, 1e-3), (3.0, 1e-5)],
                         ids=str)
def test_int16_sqrt_on_every_non_negative_input(input_scale, output_scale):
    _exact_on_every_int16("SQRT", input_scale, output_scale, x=ALL_INT16[ALL_INT16 >= 0])


@pytest.mark.parametrize("op_type", ["RSQRT", "SQRT"])
def test_int16_rsqrt_sqrt_refuse_negative_inputs_like_litert(op_type):
    graph, _ = unary_graph(op_type, (2,), (2,), (1e-3, 0), (1e-3, 0), dtype=I16)
    x = np.array([-1, 5], I16)
    with pytest.raises(RuntimeError, match="only defined for"):
        run_litert(write_tflite(graph), [x], reference_kernels=True)
    interpreter = Interpreter.from_graph(graph)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    with pytest.raises(ValueError, match="non-negative"):
        interpreter.invoke()


@pytest.mark.parametrize("op_type", ["LOGISTIC", "TANH"])
def test_int16_logistic_tanh_refuse_an_output_scale_other_than_q15(op_type):
    graph, _ = unary_graph(op_type, (4,), (4,), (1e-3, 0), (1e-3, 0), dtype=I16)
    with pytest.raises(ModelError, match="1/32768"):
        Interpreter.from_graph(graph).allocate_tensors()


@pytest.mark.parametrize("op_type", ["HARD_SWISH", "RELU_N1_TO_1"])
def test_int16_ops_litert_cannot_run_are_refused(op_type):
    """LiteRT's BUILTIN_REF has no int16 HARD_SWISH or RELU_N1_TO_1: it fails at invoke. We refuse at load."""
    graph, inputs = unary_graph(op_type, (8,), (8,), (1e-3, 0), (1e-3, 0), dtype=I16)
    with pytest.raises(RuntimeError, match="got INT16"):
        run_litert(write_tflite(graph), inputs, reference_kernels=True)
    with pytest.raises(ModelError, match="no integer kernel"):
        Interpreter.from_graph(graph).allocate_tensors()


# -- PRELU: int16 input, int8 alpha -----------------------------------------------------------------

def _int16_prelu(alpha_shape, alpha_params, input_scale=1e-3, output_scale=1e-3, x_shape=(4, 8, 8, 3), seed=0,
                 constant_alpha=True):
    rng = np.random.default_rng(seed)
    g = Graph()
    g.add_tensor(Tensor("x", x_shape, I16, quant=QuantParams(input_scale, 0)))
    alpha = random_int8(rng, alpha_shape)
    g.add_tensor(Tensor("alpha", alpha_shape, np.int8, alpha if constant_alpha else None,
                        quant=QuantParams(*alpha_params)))
    g.add_tensor(Tensor("y", x_shape, I16, quant=QuantParams(output_scale, 0)))
    g.add_op(Op("PRELU", ["x", "alpha"], ["y"], {}))
    g.inputs, g.outputs = (["x"] if constant_alpha else ["x", "alpha"]), ["y"]
    inputs = [random_int8(rng, x_shape, I16)] + ([] if constant_alpha else [alpha])
    return g, inputs


@pytest.mark.parametrize("alpha_shape", [(3,), (1, 1, 3), (8, 8, 3)], ids=str)
@pytest.mark.parametrize("alpha_params, input_scale, output_scale",
                         [((0.01, 0), 1e-3, 1e-3), ((0.02, 10), 1e-3, 2e-4), ((0.005, -3), 0.5, 0.3),
                          ((0.05, -128), 1e-5, 1e-5)], ids=str)
def test_int16_prelu_with_int8_alpha(alpha_shape, alpha_params, input_scale, output_scale):
    assert_exact(*_int16_prelu(alpha_shape, alpha_params, input_scale, output_scale))


def test_int16_prelu_with_a_runtime_alpha():
    assert_exact(*_int16_prelu((1, 1, 3), (0.01, 4), constant_alpha=False))


# -- SOFTMAX ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("input_scale, beta", [(1e-4, 1.0), (2**-12, 1.0), (1e-3, 1.0), (0.01, 0.5), (0.3, 1.0),
                                               (1e-6, 1.0), (1e-3, 3.0)], ids=str)
@pytest.mark.parametrize("shape", [(4, 10), (2, 3, 7, 64), (1, 1000), (3, 1)], ids=str)
def test_int16_softmax(shape, input_scale, beta):
    graph, inputs = unary_graph("SOFTMAX", shape, shape, _symmetric(input_scale), _symmetric(Q15), {"beta": beta},
                                dtype=I16)
    assert_exact(graph, inputs)


def test_int16_softmax_on_rows_spanning_every_difference():
    """Each row holds the int16 extremes and a ramp, so every difference from -65535 to 0 occurs."""
    rows = np.stack([np.concatenate([[32767], np.arange(-32768, 32767, 64, dtype=np.int64)]),
                     np.concatenate([[-32768], np.arange(-32768, 32767, 64, dtype=np.int64) + 33])])
    x = np.clip(rows, -32768, 32767).astype(I16)
    for input_scale in (1e-4, 1e-3, 0.05):
        graph, _ = unary_graph("SOFTMAX", x.shape, x.shape, _symmetric(input_scale), _symmetric(Q15), {"beta": 1.0},
                               dtype=I16)
        assert_exact(graph, [x])


def test_int16_softmax_refuses_an_output_scale_other_than_q15():
    graph, _ = unary_graph("SOFTMAX", (2, 4), (2, 4), (1e-3, 0), (1.0 / 256, 0), {"beta": 1.0}, dtype=I16)
    with pytest.raises(ModelError, match="1/32768"):
        Interpreter.from_graph(graph).allocate_tensors()


def test_int16_log_softmax_is_refused_as_litert_cannot_run_it():
    graph, inputs = unary_graph("LOG_SOFTMAX", (2, 8), (2, 8), (1e-3, 0), (16.0 / 32768, 0), dtype=I16)
    with pytest.raises(RuntimeError, match="got INT16"):
        run_litert(write_tflite(graph), inputs, reference_kernels=True)
    with pytest.raises(ModelError):
        Interpreter.from_graph(graph).allocate_tensors()


# -- MEAN / SUM / REDUCE_MAX / REDUCE_MIN --------------------------------------------------------------

INT16_REDUCE_CASES = [  # (shape, axes, keep_dims)
    ((2, 5, 7, 6), (1, 2), True), ((2, 5, 7, 6), (1, 2), False), ((2, 5, 7, 6), (3,), True),
    ((2, 5, 7, 6), (-1, 1), False), ((2, 5, 7, 6), (0, 1, 2, 3), False), ((1, 12, 64), (1,), True),
    ((1, 300, 4), (1,), False), ((2, 5, 7, 6), (2, 2, -2), True), ((11,), (0,), False),
]
INT16_REDUCE_SCALES = [(1e-3, 1e-3), (1e-3, 2e-4), (2e-4, 5e-3), (0.5, 1e-5), (1e-5, 0.5), (2**-12, 2**-12)]


def _int16_reduce(op_type, shape, axes, keep, input_scale, output_scale, seed=0):
    rank = len(shape)
    reduced = {a % rank for a in axes}
    y_shape = tuple(1 if i in reduced else d for i, d in enumerate(shape) if keep or i not in reduced)
    return unary_graph(op_type, shape, y_shape, _symmetric(input_scale), _symmetric(output_scale),
                       {"keep_dims": keep}, [("axis", np.array(axes, np.int32))], seed=seed, dtype=I16)


@pytest.mark.parametrize("scales", INT16_REDUCE_SCALES, ids=str)
@pytest.mark.parametrize("shape, axes, keep", INT16_REDUCE_CASES, ids=str)
def test_int16_mean(shape, axes, keep, scales):
    assert_exact(*_int16_reduce("MEAN", shape, axes, keep, *scales))


def test_int16_mean_of_extremes_saturates_like_litert():
    graph, _ = _int16_reduce("MEAN", (2, 64), (1,), False, 1.0, 1e-3)
    x = np.stack([np.full(64, 32767, I16), np.full(64, -32768, I16)])
    assert_exact(graph, [x])


@pytest.mark.parametrize("op_type", ["REDUCE_MAX", "REDUCE_MIN"])
@pytest.mark.parametrize("shape, axes, keep", INT16_REDUCE_CASES[:4], ids=str)
def test_int16_reduce_max_min(op_type, shape, axes, keep):
    assert_exact(*_int16_reduce(op_type, shape, axes, keep, 1e-3, 1e-3))


def _builtin_kernel_output(graph, inputs):
    from edgeq.testing.litert import OpResolverType
    from edgeq.testing.referees import LiteRTInterpreter, _run_litert
    interpreter = LiteRTInterpreter(model_content=write_tflite(graph), num_threads=1,
                                    experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return _run_litert(interpreter, inputs)[0]


# The rescaled float32 sum is cast to int32, which C++ leaves undefined beyond the int32 range (x86-64 gives
# INT32_MIN, aarch64 saturates; the runtime saturates): (0.5, 1e-5) gets there, so SUM takes (0.5, 1e-3).
INT16_SUM_SCALES = [scales for scales in INT16_REDUCE_SCALES if scales != (0.5, 1e-5)] + [(0.5, 1e-3)]


@pytest.mark.parametrize("scales", INT16_SUM_SCALES, ids=str)
@pytest.mark.parametrize("shape, axes, keep", INT16_REDUCE_CASES, ids=str)
def test_int16_sum_equals_the_builtin_kernel(shape, axes, keep, scales):
    """SUM is held to LiteRT's builtin SUM kernel (what Register_SUM gives, float32 rescaling), as int8 SUM is:
    BUILTIN_REF's quantized SUM gives integers unrelated to the sum (see the next test)."""
    graph, inputs = _int16_reduce("SUM", shape, axes, keep, *scales)
    expected = _builtin_kernel_output(graph, inputs)
    actual = Interpreter.from_graph(graph)
    actual.allocate_tensors()
    actual.set_tensor(actual.get_input_details()[0]["index"], inputs[0])
    actual.invoke()
    np.testing.assert_array_equal(actual.get_tensor(actual.get_output_details()[0]["index"]), expected)


def test_int16_sum_on_litert_reference_kernels_is_not_the_sum():
    """The finding behind the referee above: with equal scales the SUM is the clamped integer sum; LiteRT
    2.3's BUILTIN_REF int16 SUM gives something else for some or all of the sums, its builtin kernel gives
    exactly that. Which sums go wrong varies from run to run (mostly -1 or leftovers of earlier work: it
    reads memory it never wrote), so this asserts only that three fresh interpreters are not all right."""
    graph, (x,) = _int16_reduce("SUM", (2, 5, 7, 6), (3,), True, 1e-3, 1e-3)
    content = write_tflite(graph)
    exact = np.clip(x.astype(np.int64).sum(axis=3, keepdims=True), -32768, 32767)
    wrong = [np.count_nonzero(run_litert(content, [x], reference_kernels=True)[0] != exact) for _ in range(3)]
    assert max(wrong) > 0, "LiteRT's reference int16 SUM is right now: its referee could be BUILTIN_REF again"
    np.testing.assert_array_equal(_builtin_kernel_output(graph, [x]), exact)


# -- AVERAGE_POOL_2D ----------------------------------------------------------------------------------

@pytest.mark.parametrize("k, stride, padding", [(2, 2, "VALID"), (3, 1, "SAME"), (3, 2, "SAME"), (9, 1, "VALID")],
                         ids=str)
@pytest.mark.parametrize("act", ["NONE", "RELU", "RELU6"])
def test_int16_average_pool(k, stride, padding, act):
    from edgeq.runtime.padding import output_size
    y_shape = (2, output_size(padding, 9, k, stride), output_size(padding, 9, k, stride), 3)
    options = {"padding": padding, "stride_w": stride, "stride_h": stride, "filter_width": k, "filter_height": k,
               "fused_activation_function": act}
    graph, inputs = unary_graph("AVERAGE_POOL_2D", (2, 9, 9, 3), y_shape, (1e-3, 0), (1e-3, 0), options, dtype=I16)
    assert_exact(graph, inputs)


def test_int16_average_pool_of_extremes():
    options = {"padding": "SAME", "stride_w": 1, "stride_h": 1, "filter_width": 3, "filter_height": 3,
               "fused_activation_function": "NONE"}
    graph, _ = unary_graph("AVERAGE_POOL_2D", (1, 4, 4, 2), (1, 4, 4, 2), (1e-3, 0), (1e-3, 0), options, dtype=I16)
    x = np.where(np.arange(32).reshape(1, 4, 4, 2) % 3 == 0, 32767, -32768).astype(I16)
    assert_exact(graph, [x])


# -- BATCH_MATMUL: int16 lhs, int16 or int8 rhs ----------------------------------------------------------

def _int16_batch_matmul(lhs_shape, rhs_shape, rhs_dtype, scales, adj_x=False, adj_y=False, constant_rhs=False,
                        seed=0):
    rng = np.random.default_rng(seed)
    lhs_scale, rhs_scale, out_scale = scales
    rows = lhs_shape[-1] if adj_x else lhs_shape[-2]
    cols = rhs_shape[-2] if adj_y else rhs_shape[-1]
    batch = np.broadcast_shapes(lhs_shape[:-2], rhs_shape[:-2])
    rhs = random_int8(rng, rhs_shape, rhs_dtype)
    g = Graph()
    g.add_tensor(Tensor("lhs", lhs_shape, I16, quant=QuantParams(lhs_scale, 0)))
    g.add_tensor(Tensor("rhs", rhs_shape, rhs_dtype, rhs if constant_rhs else None, quant=QuantParams(rhs_scale, 0)))
    g.add_tensor(Tensor("y", batch + (rows, cols), I16, quant=QuantParams(out_scale, 0)))
    g.add_op(Op("BATCH_MATMUL", ["lhs", "rhs"], ["y"], {"adj_x": adj_x, "adj_y": adj_y}))
    g.inputs, g.outputs = (["lhs"] if constant_rhs else ["lhs", "rhs"]), ["y"]
    inputs = [random_int8(rng, lhs_shape, I16)] + ([] if constant_rhs else [rhs])
    return g, inputs


BATCH_MATMUL_SHAPES = [((2, 5, 7), (2, 7, 3)), ((3, 1, 4, 6), (1, 2, 6, 5)), ((4, 9), (9, 2)), ((2, 2, 3, 1, 64), (64, 8))]


@pytest.mark.parametrize("rhs_dtype", [np.int16, np.int8], ids=["int16_rhs", "int8_rhs"])
@pytest.mark.parametrize("scales", [(1e-3, 1e-3, 0.05), (1e-3, 2e-3, 1.0), (0.05, 1e-2, 1e-4), (1e-5, 1e-5, 1e-7)],
                         ids=str)
@pytest.mark.parametrize("lhs_shape, rhs_shape", BATCH_MATMUL_SHAPES, ids=str)
def test_int16_batch_matmul(lhs_shape, rhs_shape, scales, rhs_dtype):
    assert_exact(*_int16_batch_matmul(lhs_shape, rhs_shape, rhs_dtype, scales))


@pytest.mark.parametrize("adj_x, adj_y", [(True, False), (False, True), (True, True)])
def test_int16_batch_matmul_adjoints(adj_x, adj_y):
    lhs_shape = (2, 7, 5) if adj_x else (2, 5, 7)
    rhs_shape = (2, 3, 7) if adj_y else (2, 7, 3)
    for rhs_dtype in (np.int16, np.int8):
        assert_exact(*_int16_batch_matmul(lhs_shape, rhs_shape, rhs_dtype, (1e-3, 2e-3, 0.5), adj_x, adj_y))


@pytest.mark.parametrize("rhs_dtype", [np.int16, np.int8], ids=["int16_rhs", "int8_rhs"])
def test_int16_batch_matmul_with_constant_rhs(rhs_dtype):
    assert_exact(*_int16_batch_matmul((2, 5, 16), (16, 4), rhs_dtype, (1e-3, 2e-3, 0.5), constant_rhs=True))


# -- ops LiteRT cannot run on int16 -------------------------------------------------------------------

def test_int16_squared_difference_is_refused_as_litert_cannot_run_it():
    graph, inputs = _int16_binary("SQUARED_DIFFERENCE", ((4, 8), (4, 8), 1e-3, 1e-3, 1e-3, "NONE"))
    with pytest.raises(RuntimeError, match="SquaredDifference only supports FLOAT32 and INT32"):
        run_litert(write_tflite(graph), inputs, reference_kernels=True)
    with pytest.raises(ModelError):
        Interpreter.from_graph(graph).allocate_tensors()


# -- random scales and shapes (hypothesis) -------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

log_scales = st.floats(min_value=-18.0, max_value=2.0).map(lambda e: float(np.float32(2.0**e)))
shapes = st.sampled_from([((3, 4, 5), (3, 4, 5)), ((3, 4, 5), (5,)), ((1, 4, 1), (3, 1, 5)), ((7,), ())])


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(op_type=st.sampled_from(["ADD", "SUB", "MUL"]), shape_pair=shapes, s1=log_scales, s2=log_scales,
       so=log_scales, act=st.sampled_from(["NONE", "RELU", "RELU6"]), seed=st.integers(0, 1000))
def test_int16_binary_ops_on_random_scales(op_type, shape_pair, s1, s2, so, act, seed):
    graph, inputs = _int16_binary(op_type, (*shape_pair, s1, s2, so, act), seed=seed)
    if op_type in ("ADD", "SUB") and 2 * max(np.float32(s1), np.float32(s2)) >= 2**15 * np.float32(so):
        with pytest.raises(ModelError, match="too fine"):
            Interpreter.from_graph(graph).allocate_tensors()
        return
    assert_exact(graph, inputs)


@settings(max_examples=40, derandomize=True, deadline=None, database=None)
@given(op_type=st.sampled_from(["LOGISTIC", "TANH", "EXP", "GELU", "LEAKY_RELU", "RELU"]), input_scale=log_scales,
       output_scale=log_scales)
def test_int16_unary_ops_on_random_scales(op_type, input_scale, output_scale):
    if op_type in ("LOGISTIC", "TANH"):
        output_scale = Q15
    options = {"alpha": 0.1} if op_type == "LEAKY_RELU" else None
    _exact_on_every_int16(op_type, input_scale, output_scale, options)


# -- operator versions -------------------------------------------------------------------------------

def test_int16_ops_are_written_with_the_versions_tflite_gives_them():
    """op_version.cc's versions for the int16 forms (LiteRT refuses a version its resolver lacks)."""
    from edgeq.runtime.tflite_format.op_versions import operator_version
    expected = {"ADD": 3, "SUB": 5, "MUL": 4, "MAXIMUM": 4, "MINIMUM": 4, "RELU": 3, "RELU6": 3, "LEAKY_RELU": 2,
                "LOGISTIC": 3, "TANH": 3, "EXP": 2, "LOG": 2, "RSQRT": 3, "GELU": 1, "SOFTMAX": 3, "ABS": 3, "SQRT": 2}
    for op_type, version in expected.items():
        if op_type in ("ADD", "SUB", "MUL", "MAXIMUM", "MINIMUM"):
            graph, _ = _int16_binary(op_type, ((4,), (4,), 1e-3, 1e-3, 1e-3, "NONE"))
        else:
            graph, _ = unary_graph(op_type, (4,), (4,), (1e-3, 0), (Q15, 0), dtype=I16)
        assert operator_version(graph.ops[0], graph) == version, op_type
    assert operator_version(*_op_and_graph(_int16_binary("ADD", ((4,), (4,), 2**-10, 2**-10, 2**-10, "NONE"),
                                                         pot_scale_int16=True)[0])) == 1
    for op_type, version in {"MEAN": 3, "SUM": 1, "REDUCE_MAX": 3, "REDUCE_MIN": 3}.items():
        graph, _ = _int16_reduce(op_type, (2, 3), (1,), False, 1e-3, 1e-3)
        assert operator_version(*_op_and_graph(graph)) == version, op_type
    prelu, _ = _int16_prelu((3,), (0.01, 0))
    matmul, _ = _int16_batch_matmul((2, 3), (3, 2), np.int8, (1e-3, 1e-3, 1e-3))
    pool, _ = unary_graph("AVERAGE_POOL_2D", (1, 2, 2, 1), (1, 1, 1, 1), (1e-3, 0), (1e-3, 0),
                          {"padding": "VALID", "filter_width": 2, "filter_height": 2}, dtype=I16)
    resize, _ = unary_graph("RESIZE_BILINEAR", (1, 2, 2, 1), (1, 4, 4, 1), (1e-3, 0), (1e-3, 0), {},
                            [("size", np.array((4, 4), np.int32))], dtype=I16)
    assert [operator_version(*_op_and_graph(g)) for g in (prelu, matmul, pool, resize)] == [1, 3, 3, 4]


def _op_and_graph(graph):
    return graph.ops[0], graph


@pytest.mark.parametrize("op_type", ["LOGISTIC", "TANH", "RELU", "EXP", "GELU", "SOFTMAX", "LEAKY_RELU"])
def test_int16_unary_ops_on_an_empty_tensor(op_type):
    options = {"beta": 1.0} if op_type == "SOFTMAX" else {"alpha": 0.1} if op_type == "LEAKY_RELU" else None
    graph, _ = unary_graph(op_type, (0, 4), (0, 4), (1e-3, 0), (Q15, 0), options, dtype=I16)
    assert_exact(graph, [np.zeros((0, 4), I16)])


# -- RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR ----------------------------------------------------------

@pytest.mark.parametrize("align_corners, half_pixel_centers", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("op_type", ["RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"])
@pytest.mark.parametrize("in_hw, out_hw", [((4, 5), (8, 10)), ((6, 6), (3, 4)), ((3, 7), (11, 5))], ids=str)
def test_int16_resize(op_type, in_hw, out_hw, align_corners, half_pixel_centers):
    options = {"align_corners": align_corners, "half_pixel_centers": half_pixel_centers}
    graph, inputs = unary_graph(op_type, (2, *in_hw, 3), (2, *out_hw, 3), (1e-3, 0), (1e-3, 0), options,
                                [("size", np.array(out_hw, np.int32))], dtype=I16)
    assert_exact(graph, inputs)


# -- a chain of int16 ops between QUANTIZE and DEQUANTIZE ------------------------------------------------

def test_int16_chain_equals_litert_reference_in_every_integer_tensor():
    """float -> QUANTIZE(int16) -> TANH, ADD, MUL, LOGISTIC, SOFTMAX, MEAN, BATCH_MATMUL -> DEQUANTIZE."""
    from edgeq.testing.referees import integer_tensor_mismatches
    rng = np.random.default_rng(3)
    g = Graph()
    shape = (2, 6, 16)

    def tensor(name, scale, dtype=I16, tensor_shape=shape, data=None):
        g.add_tensor(Tensor(name, tensor_shape, dtype, data, QuantParams(scale, 0) if scale else None))

    tensor("x", None, np.float32)
    tensor("q", 2e-4)
    tensor("t", Q15)
    tensor("s", 4e-4)
    tensor("m", 1e-4)
    tensor("l", Q15)
    tensor("p", Q15)
    tensor("w", 3e-3, np.int8, (16, 8), random_int8(rng, (16, 8)).clip(-127, 127))
    tensor("b", 1e-4, I16, (2, 6, 8))
    tensor("a", 1e-4, I16, (2, 1, 8))
    g.add_tensor(Tensor("axis", (1,), np.int32, np.array([1], np.int32)))
    tensor("y", None, np.float32, (2, 1, 8))
    g.add_op(Op("QUANTIZE", ["x"], ["q"], {}))
    g.add_op(Op("TANH", ["q"], ["t"], {}))
    g.add_op(Op("ADD", ["q", "t"], ["s"], {"fused_activation_function": "NONE", "pot_scale_int16": False}))
    g.add_op(Op("MUL", ["s", "t"], ["m"], {"fused_activation_function": "NONE"}))
    g.add_op(Op("LOGISTIC", ["m"], ["l"], {}))
    g.add_op(Op("SOFTMAX", ["l"], ["p"], {"beta": 1.0}))
    g.add_op(Op("BATCH_MATMUL", ["p", "w"], ["b"], {"adj_x": False, "adj_y": False}))
    g.add_op(Op("MEAN", ["b", "axis"], ["a"], {"keep_dims": True}))
    g.add_op(Op("DEQUANTIZE", ["a"], ["y"], {}))
    g.inputs, g.outputs = ["x"], ["y"]
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    mismatches = integer_tensor_mismatches(write_tflite(g), [x])
    assert set(mismatches) >= {"q", "t", "s", "m", "l", "p", "b", "a"}
    assert sum(mismatches.values()) == 0, mismatches


def test_int16_power_of_two_add_that_broadcasts_is_refused_as_litert_aborts():
    """add.cc's power-of-two path reads both inputs as one flat size: LiteRT aborts (SIGABRT) at invoke."""
    from edgeq.testing.litert import LiteRTDied
    graph, inputs = _int16_binary("ADD", ((4, 50), (1, 50), 2**-12, 2**-10, 2**-10, "NONE"), pot_scale_int16=True)
    with pytest.raises(LiteRTDied):
        run_litert(write_tflite(graph), inputs, reference_kernels=True)
    with pytest.raises(ModelError, match="does not broadcast"):
        Interpreter.from_graph(graph)


@pytest.mark.parametrize("op_type", ["HARD_SWISH", "LOG_SOFTMAX", "SQUARED_DIFFERENCE", "LOGISTIC"])
def test_int16_refusals_happen_when_the_file_is_loaded_and_name_the_op(op_type):
    if op_type == "SQUARED_DIFFERENCE":
        graph, _ = _int16_binary(op_type, ((4,), (4,), 1e-3, 1e-3, 1e-3, "NONE"))
    else:  # LOGISTIC with a non-Q0.15 output
        graph, _ = unary_graph(op_type, (4,), (4,), (1e-3, 0), (1e-3, 0), dtype=I16)
    with pytest.raises(ModelError, match=rf"^op #0 \({op_type}.*int16 {op_type}") as refused:
        Interpreter(model_content=write_tflite(graph))
    assert "\n" not in str(refused.value)

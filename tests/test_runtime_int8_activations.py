"""int8 activations and softmax: every int8 input through single-op models, our runtime against
LiteRT's reference kernels (BUILTIN_REF, zero mismatching integers) and its default kernels (|diff| <= 1).

The models have int8 input and output tensors and no QUANTIZE, so each of the 256 int8 values reaches
the op directly.
"""
import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
from edgeq.testing import litert  # noqa: E402

from edgeq.runtime.tflite_format.writer import write_tflite  # noqa: E402
from edgeq.runtime.interpreter import Interpreter  # noqa: E402
from edgeq.runtime.ir import Graph, Op, QuantParams, Tensor

ALL_INT8 = np.arange(-128, 128, dtype=np.int8)

# Input (scale, zero point): tiny, typical and huge scales, zero points across the range.
INPUT_PARAMS = [(1e-5, 5), (0.001, 0), (0.0123, -77), (0.05, -10), (0.1, 20), (0.5, 100), (3.0, -128)]
FIXED_OUTPUT = {"LOGISTIC": (1.0 / 256, -128), "TANH": (1.0 / 128, 0), "SOFTMAX": (1.0 / 256, -128)}
OUTPUT_PARAMS = {"EXP": (0.5, -128), "LOG": (0.05, 30), "RSQRT": (0.1, 0)}
DEFAULT_OUTPUT = (0.04, -5)


def _single_op(op_type, input_params, output_params, options=None, shape=(256,), extra=()) -> Graph:
    g = Graph()
    g.add_tensor(Tensor("x", shape, np.int8, quant=QuantParams(*input_params)))
    for tensor in extra:
        g.add_tensor(tensor)
    g.add_tensor(Tensor("y", shape, np.int8, quant=QuantParams(*output_params)))
    g.add_op(Op(op_type, ["x"] + [t.name for t in extra], ["y"], options or {}))
    g.inputs, g.outputs = ["x"], ["y"]
    return g


def _run_litert(model: bytes, x: np.ndarray, reference: bool) -> np.ndarray:
    resolver = litert.OpResolverType.BUILTIN_REF if reference else litert.OpResolverType.AUTO
    interpreter = litert.Interpreter(model_content=model, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).astype(np.int64)


def _run_ours(model: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert out.dtype == np.int8
    return out.astype(np.int64)


def _check(graph: Graph, x: np.ndarray) -> np.ndarray:
    """Our output equals BUILTIN_REF's integer for integer and is within 1 of the default kernels'."""
    model = write_tflite(graph)
    ours = _run_ours(model, x)
    reference = _run_litert(model, x, reference=True)
    mismatches = np.flatnonzero(ours != reference)
    assert mismatches.size == 0, (
        f"{mismatches.size} mismatches, e.g. x={x.ravel()[mismatches[:5]]}: "
        f"ours {ours.ravel()[mismatches[:5]]}, LiteRT {reference.ravel()[mismatches[:5]]}")
    default = _run_litert(model, x, reference=False)
    assert np.abs(default - reference).max() <= 1
    return reference


# -- elementwise ops: all 256 inputs -------------------------------------------------------------

UNARY_OPS = ["RELU", "RELU6", "RELU_N1_TO_1", "LOGISTIC", "TANH", "HARD_SWISH", "EXP", "LOG", "ABS"]


@pytest.mark.parametrize("input_params", INPUT_PARAMS, ids=str)
@pytest.mark.parametrize("op_type", UNARY_OPS)
def test_unary_int8_matches_litert_reference_on_all_inputs(op_type, input_params):
    output_params = FIXED_OUTPUT.get(op_type, OUTPUT_PARAMS.get(op_type, DEFAULT_OUTPUT))
    _check(_single_op(op_type, input_params, output_params), ALL_INT8)


@pytest.mark.parametrize("op_type", ["RELU", "RELU6", "RELU_N1_TO_1", "HARD_SWISH", "ABS"])
def test_unary_int8_with_equal_and_coarser_output_scales(op_type):
    for input_params, output_params in [((0.05, -10), (0.05, -10)), ((0.02, 3), (0.2, -100))]:
        _check(_single_op(op_type, input_params, output_params), ALL_INT8)


@pytest.mark.parametrize("approximate", [False, True])
@pytest.mark.parametrize("input_params", [(0.001, 0), (0.05, -10), (0.5, 100), (3.0, -128)], ids=str)
def test_gelu_int8_table(input_params, approximate):
    _check(_single_op("GELU", input_params, DEFAULT_OUTPUT, {"approximate": approximate}), ALL_INT8)


@pytest.mark.parametrize("input_params", INPUT_PARAMS, ids=str)
def test_rsqrt_int8_on_every_valid_input(input_params):
    x = ALL_INT8[ALL_INT8 >= input_params[1]]  # LiteRT refuses inputs below the zero point
    _check(_single_op("RSQRT", input_params, OUTPUT_PARAMS["RSQRT"], shape=(x.size,)), x)


def test_rsqrt_int8_refuses_negative_inputs_like_litert():
    graph = _single_op("RSQRT", (0.05, -10), (0.1, 0), shape=(2,))
    interpreter = Interpreter.from_graph(graph)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.array([-11, 5], np.int8))
    with pytest.raises(ValueError, match="positive"):
        interpreter.invoke()


@pytest.mark.parametrize("alpha", [0.01, 0.2, 1.5, -0.3])
def test_leaky_relu_int8(alpha):
    for input_params, output_params in [((0.05, -10), (0.04, -5)), ((0.001, 0), (0.002, 3)),
                                        ((3.0, -128), (1.0, 100)), ((0.0123, 77), (0.0123, 77))]:
        _check(_single_op("LEAKY_RELU", input_params, output_params, {"alpha": alpha}), ALL_INT8)


@pytest.mark.parametrize(
    "input_params, output_params, alpha_params",
    [((0.05, -10), (0.04, -5), (0.01, 0)), ((0.1, 20), (0.08, 3), (0.02, 10)),
     ((3.0, -128), (2.0, 0), (0.005, -3)), ((0.001, 0), (0.001, 0), (0.05, -128))],
    ids=str,
)
def test_prelu_int8_per_channel_alpha(input_params, output_params, alpha_params):
    channels = 16
    rng = np.random.default_rng(channels)
    alpha = rng.integers(-128, 128, size=(1, 1, channels)).astype(np.int8)  # negative alphas too
    alpha_tensor = Tensor("alpha", alpha.shape, np.int8, alpha, QuantParams(*alpha_params))
    graph = _single_op("PRELU", input_params, output_params, shape=(1, 16, 16, channels), extra=[alpha_tensor])
    # Every channel sees all 256 inputs.
    x = np.stack([np.roll(ALL_INT8, c) for c in range(channels)], axis=-1).reshape(1, 16, 16, channels)
    _check(graph, x)


# -- SOFTMAX: rows of several lengths, betas and input scales -------------------------------------

@pytest.mark.parametrize("beta", [1.0, 0.5, 2.0, 0.1])
@pytest.mark.parametrize("input_params", INPUT_PARAMS, ids=str)
def test_softmax_int8_matches_litert_reference(input_params, beta):
    rng = np.random.default_rng(7)
    for depth in (1, 2, 5, 10, 100, 256):
        shape = (max(2, 2048 // depth), depth)
        x = rng.integers(-128, 128, size=shape).astype(np.int8)
        x[0] = ALL_INT8[:depth]
        _check(_single_op("SOFTMAX", input_params, FIXED_OUTPUT["SOFTMAX"], {"beta": beta}, shape=shape), x)


def test_softmax_int8_long_rows():
    # LiteRT's reference kernel aborts when the sum of exponentials needs a shift > 31 (long rows of
    # near-equal values); coarse input scales keep the sum small enough for it.
    rng = np.random.default_rng(8)
    for input_params in [(0.5, 100), (3.0, -128)]:
        x = rng.integers(-128, 128, size=(4, 1000)).astype(np.int8)
        _check(_single_op("SOFTMAX", input_params, FIXED_OUTPUT["SOFTMAX"], {"beta": 1.0}, shape=x.shape), x)


def _int16_softmax(input_scale, shape) -> Graph:
    graph = _single_op("SOFTMAX", (input_scale, 0), (1.0 / 256, -128), {"beta": 1.0}, shape=shape)
    graph["y"].dtype = np.dtype(np.int16)
    graph["y"].quant = QuantParams(1.0 / 65536, -32768)
    return graph


@pytest.mark.parametrize("input_scale", [0.001, 0.05, 0.5])
def test_softmax_int8_to_int16_is_the_fixed_point_kernel(input_scale):
    # Every pair of int8 values as a row of 2. At int16 resolution the reference kernel's gemmlowp
    # fixed point shows: rounding the exact softmax differs from it on hundreds of rows (scales
    # 0.001, 0.05), and so does LiteRT's default kernel (a float exp table), by 1; ours is equal.
    a, b = np.meshgrid(ALL_INT8, ALL_INT8)
    x = np.stack([a.ravel(), b.ravel()], axis=-1)
    model = write_tflite(_int16_softmax(input_scale, x.shape))
    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    ours = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert ours.dtype == np.int16
    reference = _run_litert(model, x, reference=True)
    np.testing.assert_array_equal(ours, reference)
    assert np.abs(_run_litert(model, x, reference=False) - reference).max() <= 1

    logits = np.float64(np.float32(input_scale)) * x.astype(np.float64)
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    exact_rounded = np.clip(np.round(probabilities * 65536) - 32768, -32768, 32767)
    assert np.abs(exact_rounded - reference).max() <= 1
    if input_scale < 0.1:
        assert np.count_nonzero(exact_rounded != reference) > 100

"""int16 activation kernels (TFLite's 16x8 scheme: symmetric int16 activations with zero point 0):
single-op int16 models written with write_tflite, run on LiteRT's reference kernels (BUILTIN_REF, in
LiteRT's child-process worker) and on our runtime, must agree integer for integer in every tensor.

Ops LiteRT 2.3's BUILTIN_REF cannot run on int16 activations (so the int16x8 quantizer must not emit
them with int16 tensors), each pinned by a test below with the error LiteRT gives:
  HARD_SWISH      "Only float32, uint8 and int8 are supported currently, got INT16" (at invoke)
  RELU_N1_TO_1    "Only float32, uint8, int8 supported currently, got INT16" (at invoke)
  LOG_SOFTMAX     "Only float32, uint8 and int8 are supported currently, got INT16" (at invoke)
  SQUARED_DIFFERENCE "SquaredDifference only supports FLOAT32 and INT32 now, got 7" (at invoke)
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

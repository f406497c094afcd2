"""One op run by itself (``runtime.op_runner.run_op``) gives what the interpreter gives for that op
inside a whole-model run, and an op type without a kernel is refused by name; the CONV_2D kernel's
``im2col`` patches, times the filter, are the convolution."""
from __future__ import annotations

import numpy as np
import pytest

from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph, ModelError, Op, Tensor
from edgeq.runtime.kernels.conv import im2col
from edgeq.runtime.op_runner import run_op

RNG = np.random.default_rng(7)
BATCH = 3


def _conv_then_add(conv_options: dict) -> Graph:
    """x [1, 9, 9, 3] -> CONV_2D (4 filters of 3x3, bias) -> "conv"; ADD("conv", skip) -> "sum"."""
    stride = conv_options.get("stride_h", 1)
    side = -(-9 // stride) if conv_options["padding"] == "SAME" else (9 - 3) // stride + 1
    graph = Graph()
    for name, shape in (("x", (1, 9, 9, 3)), ("conv", (1, side, side, 4)), ("skip", (1, side, side, 4)),
                        ("sum", (1, side, side, 4))):
        graph.add_tensor(Tensor(name, shape, np.dtype(np.float32)))
    graph.add_constant("filter", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32))
    graph.add_constant("bias", RNG.standard_normal(4).astype(np.float32))
    graph.add_op(Op("CONV_2D", ["x", "filter", "bias"], ["conv"], dict(conv_options)))
    graph.add_op(Op("ADD", ["conv", "skip"], ["sum"], {}))
    graph.inputs, graph.outputs = ["x", "skip"], ["sum"]
    return graph


def _samples(graph: Graph) -> dict:
    return {name: RNG.standard_normal((BATCH,) + graph[name].shape[1:]).astype(np.float32) for name in graph.inputs}


CONV_OPTIONS = {"padding": "SAME", "stride_h": 2, "stride_w": 2, "fused_activation_function": "RELU"}


def test_run_op_conv_2d_gives_the_interpreters_output():
    graph = _conv_then_add(CONV_OPTIONS)
    samples = _samples(graph)
    expected = Interpreter.from_graph(graph).run(samples, keep={"conv"})["conv"]
    conv = graph.ops[0]

    (conv_output,) = run_op(conv, graph, [samples["x"], graph["filter"].data, graph["bias"].data])

    assert np.array_equal(conv_output, expected)


def test_run_op_add_gives_the_interpreters_output():
    graph = _conv_then_add(CONV_OPTIONS)
    samples = _samples(graph)
    expected = Interpreter.from_graph(graph).run(samples, keep={"conv"})
    add = graph.ops[1]

    (total,) = run_op(add, graph, [expected["conv"], samples["skip"]])

    assert np.array_equal(total, expected["sum"])


def test_run_op_refuses_an_op_type_without_a_kernel_by_name():
    graph = _conv_then_add(CONV_OPTIONS)
    unknown = Op("FANCY_NEW_OP", ["x"], ["conv"], {})

    with pytest.raises(ModelError, match="no kernel for op FANCY_NEW_OP"):
        run_op(unknown, graph, [_samples(graph)["x"]])


@pytest.mark.parametrize("padding, stride", [("SAME", 1), ("SAME", 2), ("VALID", 1), ("VALID", 2)])
def test_im2col_patches_times_the_filter_plus_bias_are_the_convolution(padding, stride):
    options = {"padding": padding, "stride_h": stride, "stride_w": stride}
    graph = _conv_then_add(options)
    x = _samples(graph)["x"]
    conv = graph.ops[0]
    filters, bias = graph["filter"].data, graph["bias"].data
    (expected,) = run_op(conv, graph, [x, filters, bias])

    patches = im2col(x, conv, graph, np.float64)
    product = patches @ filters.reshape(4, -1).T.astype(np.float64) + bias

    assert patches.shape == (expected.size // 4, 3 * 3 * 3)
    np.testing.assert_allclose(product.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)

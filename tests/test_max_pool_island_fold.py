"""An int8 -> DEQUANTIZE -> float MAX_POOL_2D -> QUANTIZE chain with the same quantization at both ends
runs as one int8 max pool during invoke: the integers stay LiteRT's reference kernels', and the float
kernels of the chain are never prepared."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from edgeq.runtime.tflite_format.writer import write_tflite  # noqa: E402
from edgeq.runtime.interpreter import Interpreter  # noqa: E402
from edgeq.runtime.ir import Graph, Op, QuantParams, Tensor  # noqa: E402
from edgeq.testing.referees import run_edgeq, run_litert  # noqa: E402


def island_graph(out_quant=(0.05, -3), activation="NONE", padding="VALID"):
    g = Graph()
    g.add_tensor(Tensor("x", (1, 9, 8, 5), np.int8, quant=QuantParams(0.05, -3)))
    g.add_tensor(Tensor("x_float", (1, 9, 8, 5), np.float32))
    pooled = (1, 4, 3, 5) if padding == "VALID" else (1, 5, 4, 5)
    g.add_tensor(Tensor("pooled", pooled, np.float32))
    g.add_tensor(Tensor("y", pooled, np.int8, quant=QuantParams(*out_quant)))
    g.add_op(Op("DEQUANTIZE", ["x"], ["x_float"], {}))
    g.add_op(Op("MAX_POOL_2D", ["x_float"], ["pooled"],
                {"padding": padding, "stride_w": 2, "stride_h": 2, "filter_width": 3, "filter_height": 3,
                 "fused_activation_function": activation}))
    g.add_op(Op("QUANTIZE", ["pooled"], ["y"], {}))
    g.inputs, g.outputs = ["x"], ["y"]
    return g


def sample():
    return [np.random.default_rng(3).integers(-128, 128, (1, 9, 8, 5)).astype(np.int8)]


def invoked_steps(graph) -> int:
    interpreter = Interpreter(model_content=write_tflite(graph))
    interpreter.allocate_tensors()
    return len(interpreter._invoke_steps)


def test_the_chain_gives_the_reference_kernels_integers():
    content = write_tflite(island_graph())
    assert np.array_equal(run_edgeq(content, sample())[0], run_litert(content, sample(), reference_kernels=True)[0])


def test_the_chain_runs_as_one_int8_max_pool():
    assert invoked_steps(island_graph()) == 1


def test_the_profile_says_the_dequantize_and_float_pool_were_folded():
    interpreter = Interpreter(model_content=write_tflite(island_graph()))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], sample()[0])
    entries = interpreter.profile(runs=1)
    assert [entry.get("folded_into") for entry in entries] == [2, 2, None]


@pytest.mark.parametrize("graph", [island_graph(out_quant=(0.1, -3)), island_graph(out_quant=(0.05, 0)),
                                   island_graph(activation="RELU"), island_graph(padding="SAME")],
                         ids=["other_scale", "other_zero_point", "fused_activation", "same_padding"])
def test_chains_the_int8_pool_would_not_equal_run_as_written(graph):
    assert invoked_steps(graph) == 3
    content = write_tflite(graph)
    assert np.array_equal(run_edgeq(content, sample())[0], run_litert(content, sample(), reference_kernels=True)[0])


def test_preserving_every_tensor_runs_the_chain_as_written():
    interpreter = Interpreter(model_content=write_tflite(island_graph()), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], sample()[0])
    interpreter.invoke()
    index = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    assert interpreter.get_tensor(index["pooled"]).dtype == np.float32


def padded_island_graph(pad_type="PADV2", fill=-128, zero_point=-3, pads=((1, 1), (0, 2))):
    """x0 -> PAD/PADV2 (spatial) -> the island chain, as a ResNet's stem pads before its max pool."""
    g = island_graph(out_quant=(0.05, zero_point))
    for name in ("x", "y"):
        g.tensors[name] = Tensor(name, g[name].shape, np.int8, quant=QuantParams(0.05, zero_point))
    (top, bottom), (left, right) = pads
    x0_shape = (1, 9 - top - bottom, 8 - left - right, 5)
    g.add_tensor(Tensor("x0", x0_shape, np.int8, quant=QuantParams(0.05, zero_point)))
    names = ["x0", g.add_constant("paddings", np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32))]
    if pad_type == "PADV2":
        names.append(g.add_constant("fill", np.array(fill, np.int8), quant=QuantParams(0.05, zero_point)))
    g.ops.insert(0, Op(pad_type, names, ["x"], {}))
    g.inputs = ["x0"]
    return g, [np.random.default_rng(4).integers(-128, 128, x0_shape).astype(np.int8)]


@pytest.mark.parametrize("pad_type, zero_point", [("PADV2", -3), ("PAD", -128)])
@pytest.mark.parametrize("pads", [((1, 1), (0, 2)), ((2, 0), (1, 1))])
def test_a_pad_that_fills_with_the_lowest_int8_joins_the_chain_as_the_pools_padding(kernel_path, pad_type, zero_point,
                                                                                    pads):
    graph, inputs = padded_island_graph(pad_type, zero_point=zero_point, pads=pads)
    assert invoked_steps(graph) == 1
    content = write_tflite(graph)
    assert np.array_equal(run_edgeq(content, inputs)[0], run_litert(content, inputs, reference_kernels=True)[0])


def test_a_pad_that_fills_with_another_value_stays_a_pad():
    graph, inputs = padded_island_graph("PADV2", fill=0)
    assert invoked_steps(graph) == 2  # the PAD, then the chain as one int8 max pool
    content = write_tflite(graph)
    assert np.array_equal(run_edgeq(content, inputs)[0], run_litert(content, inputs, reference_kernels=True)[0])

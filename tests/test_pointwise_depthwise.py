"""A float 1x1 CONV_2D feeding a 3x3 DEPTHWISE_CONV_2D (and the 1x1 CONV_2D after it, if it alone reads
the depthwise's output) runs as one native kernel during invoke (the tensors between them never
exist): its outputs are the numpy path's, within the roundings of fused multiply-adds, and exactly
those of the native kernels run one after the other."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgeq.runtime import native
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph, Op, Tensor
from edgeq.runtime.kernels.pointwise_depthwise import isa_of_native_gemm
from edgeq.runtime.padding import output_size

# As tests/test_kernel_paths.py: float32 roundings of fused multiply-adds, relative to the largest value.
FMA_RTOL = 1e-5


@pytest.fixture
def fused_kernels(monkeypatch):
    monkeypatch.setattr(native, "ENABLED", True)
    if isa_of_native_gemm() is None:
        pytest.skip(f"the 1x1 + depthwise kernel needs the AVX-512 float GEMM: {native.describe()}")


def expand_then_depthwise(x_shape, expanded, stride, padding, pad_op=False, also_output_middle=False, seed=0,
                          project=None, also_output_y=False, first=(1, 1, "SAME")):
    """x -> CONV_2D (``first`` = (kernel size, stride, padding); RELU6) -> [PAD ->] 3x3 DEPTHWISE_CONV_2D
    (RELU6) -> y [-> 1x1 CONV_2D to ``project`` channels, no activation -> z], as in MobileNetV2."""
    rng = np.random.default_rng(seed)
    n, x_h, x_w, in_c = x_shape
    k, first_stride, first_padding = first
    h, w = output_size(first_padding, x_h, k, first_stride), output_size(first_padding, x_w, k, first_stride)
    g = Graph()
    g.add_tensor(Tensor("x", x_shape, np.float32))
    g.add_tensor(Tensor("middle", (n, h, w, expanded), np.float32))
    conv_inputs = ["x", g.add_constant("cw", rng.standard_normal((expanded, k, k, in_c)).astype(np.float32)),
                   g.add_constant("cb", rng.standard_normal(expanded).astype(np.float32))]
    g.add_op(Op("CONV_2D", conv_inputs, ["middle"], {"padding": first_padding, "stride_h": first_stride,
                                                      "stride_w": first_stride, "fused_activation_function": "RELU6"}))
    depthwise_input = "middle"
    if pad_op:  # TFLite's form of a stride-2 SAME depthwise: PAD, then VALID
        depthwise_input = "padded"
        g.add_tensor(Tensor("padded", (n, h + 1, w + 1, expanded), np.float32))
        paddings = g.add_constant("paddings", np.array([[0, 0], [0, 1], [0, 1], [0, 0]], np.int32))
        g.add_op(Op("PAD", ["middle", paddings], ["padded"], {}))
        h, w, padding = h + 1, w + 1, "VALID"
    y_shape = (n, output_size(padding, h, 3, stride), output_size(padding, w, 3, stride), expanded)
    g.add_tensor(Tensor("y", y_shape, np.float32))
    depthwise_inputs = [depthwise_input, g.add_constant("dw", rng.standard_normal((1, 3, 3, expanded)).astype(np.float32)),
                        g.add_constant("db", rng.standard_normal(expanded).astype(np.float32))]
    g.add_op(Op("DEPTHWISE_CONV_2D", depthwise_inputs, ["y"], {
        "padding": padding, "stride_h": stride, "stride_w": stride, "depth_multiplier": 1,
        "fused_activation_function": "RELU6"}))
    g.inputs, g.outputs = ["x"], ["y", "middle"] if also_output_middle else ["y"]
    if project is not None:
        g.add_tensor(Tensor("z", y_shape[:3] + (project,), np.float32))
        project_inputs = ["y", g.add_constant("pw", rng.standard_normal((project, 1, 1, expanded)).astype(np.float32)),
                          g.add_constant("pb", rng.standard_normal(project).astype(np.float32))]
        g.add_op(Op("CONV_2D", project_inputs, ["z"], {"padding": "SAME", "stride_h": 1, "stride_w": 1,
                                                        "fused_activation_function": "NONE"}))
        g.outputs = ["z", "y"] if also_output_y else ["z"]
    return g, [rng.standard_normal(x_shape).astype(np.float32)]


def fused_steps(interpreter) -> int:
    interpreter.allocate_tensors()
    return sum(step[0].__name__ == "conv_2d_then_depthwise_native" for step in interpreter._invoke_steps)


def numpy_path(graph, inputs, monkeypatch):
    monkeypatch.setattr(native, "ENABLED", False)
    result = Interpreter.from_graph(graph).run(inputs)
    monkeypatch.setattr(native, "ENABLED", True)
    return result


@pytest.mark.parametrize("stride, padding", list(itertools.product([1, 2], ["SAME", "VALID"])))
@pytest.mark.parametrize("expanded", [16, 40, 96])
def test_the_pair_gives_the_numpy_paths_values(fused_kernels, monkeypatch, stride, padding, expanded):
    # 2 images of 13 x 21 pixels: rows above and below the window, several pixel tiles per row, channel
    # tails (40) and the wide depthwise (96).
    graph, inputs = expand_then_depthwise((2, 13, 21, 8), expanded, stride, padding, seed=expanded + stride)
    interpreter = Interpreter.from_graph(graph)
    assert fused_steps(interpreter) == 1
    got, expected = interpreter.run(inputs)["y"], numpy_path(graph, inputs, monkeypatch)["y"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=FMA_RTOL * max(float(np.abs(expected).max()), 1.0))


def test_a_pad_folded_into_the_depthwise_is_fused_too(fused_kernels, monkeypatch):
    graph, inputs = expand_then_depthwise((1, 12, 12, 8), 24, 2, "SAME", pad_op=True)
    interpreter = Interpreter.from_graph(graph)
    assert fused_steps(interpreter) == 1 and len(interpreter._invoke_steps) == 1
    got, expected = interpreter.run(inputs)["y"], numpy_path(graph, inputs, monkeypatch)["y"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=FMA_RTOL * max(float(np.abs(expected).max()), 1.0))


def test_the_pair_equals_the_two_native_kernels_exactly(fused_kernels, monkeypatch):
    graph, inputs = expand_then_depthwise((1, 15, 15, 12), 72, 2, "SAME")
    fused = Interpreter.from_graph(graph).run(inputs)["y"]
    monkeypatch.setattr(Interpreter, "_fold_pointwise_into_depthwise", lambda self, steps, positions: (steps, positions))
    separate = Interpreter.from_graph(graph)
    assert fused_steps(separate) == 0
    assert np.array_equal(fused, separate.run(inputs)["y"])


def test_a_middle_tensor_the_graph_outputs_is_not_fused_away(fused_kernels, monkeypatch):
    graph, inputs = expand_then_depthwise((1, 9, 9, 8), 32, 1, "SAME", also_output_middle=True)
    interpreter = Interpreter.from_graph(graph)
    assert fused_steps(interpreter) == 0
    expected = numpy_path(graph, inputs, monkeypatch)
    got = interpreter.run(inputs)
    for name in ("y", "middle"):
        np.testing.assert_allclose(got[name], expected[name], rtol=0,
                                   atol=FMA_RTOL * max(float(np.abs(expected[name]).max()), 1.0))


def test_keeping_the_middle_tensor_runs_the_ops_as_written(fused_kernels):
    graph, inputs = expand_then_depthwise((1, 9, 9, 8), 32, 1, "SAME")
    kept = Interpreter.from_graph(graph).run(inputs, keep={"middle"})
    assert kept["middle"].shape == (1, 9, 9, 32) and np.all(kept["middle"] >= 0) and np.all(kept["middle"] <= 6)


def test_the_profile_counts_the_1x1_convolution_as_folded_into_the_depthwise(fused_kernels):
    graph, inputs = expand_then_depthwise((1, 9, 9, 8), 32, 1, "SAME")
    interpreter = Interpreter.from_graph(graph)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], inputs[0])
    entries = interpreter.profile(runs=1)
    assert [(entry["type"], entry.get("folded_into")) for entry in entries] == [("CONV_2D", 1),
                                                                                ("DEPTHWISE_CONV_2D", None)]


def test_two_threads_give_what_one_gives(fused_kernels):
    graph, inputs = expand_then_depthwise((2, 40, 40, 16), 64, 1, "SAME")
    one = Interpreter.from_graph(graph, num_threads=1).run(inputs)["y"]
    two = Interpreter.from_graph(graph, num_threads=2).run(inputs)["y"]
    assert np.array_equal(one, two)


def assert_close_to_numpy(got, expected):
    np.testing.assert_allclose(got, expected, rtol=0, atol=FMA_RTOL * max(float(np.abs(expected).max()), 1.0))


@pytest.mark.parametrize("stride, padding", list(itertools.product([1, 2], ["SAME", "VALID"])))
@pytest.mark.parametrize("expanded, project", [(24, 8), (96, 40)])
def test_expand_depthwise_and_project_give_the_numpy_paths_values(fused_kernels, monkeypatch, stride, padding,
                                                                   expanded, project):
    graph, inputs = expand_then_depthwise((2, 13, 21, 8), expanded, stride, padding, seed=expanded + stride,
                                          project=project)
    interpreter = Interpreter.from_graph(graph)
    assert fused_steps(interpreter) == 1 and len(interpreter._invoke_steps) == 1
    assert_close_to_numpy(interpreter.run(inputs)["z"], numpy_path(graph, inputs, monkeypatch)["z"])


def test_expand_depthwise_and_project_equal_the_three_native_kernels_exactly(fused_kernels, monkeypatch):
    graph, inputs = expand_then_depthwise((1, 15, 15, 12), 72, 1, "SAME", project=24)
    fused = Interpreter.from_graph(graph).run(inputs)["z"]
    monkeypatch.setattr(Interpreter, "_fold_pointwise_into_depthwise", lambda self, steps, positions: (steps, positions))
    assert np.array_equal(fused, Interpreter.from_graph(graph).run(inputs)["z"])


def test_a_depthwise_output_the_graph_outputs_keeps_the_project_apart(fused_kernels, monkeypatch):
    graph, inputs = expand_then_depthwise((1, 9, 9, 8), 32, 1, "SAME", project=16, also_output_y=True)
    interpreter = Interpreter.from_graph(graph)
    assert fused_steps(interpreter) == 1 and len(interpreter._invoke_steps) == 2
    got, expected = interpreter.run(inputs), numpy_path(graph, inputs, monkeypatch)
    for name in ("y", "z"):
        assert_close_to_numpy(got[name], expected[name])


def test_expand_depthwise_and_project_on_two_threads_give_what_one_gives(fused_kernels):
    graph, inputs = expand_then_depthwise((2, 40, 40, 16), 64, 2, "SAME", project=24)
    one = Interpreter.from_graph(graph, num_threads=1).run(inputs)["z"]
    two = Interpreter.from_graph(graph, num_threads=2).run(inputs)["z"]
    assert np.array_equal(one, two)


@pytest.mark.parametrize("k, stride, padding", [(3, 2, "SAME"), (3, 1, "VALID"), (5, 2, "VALID")])
def test_a_first_convolution_wider_than_1x1_is_fused_through_rows_of_im2col(fused_kernels, monkeypatch, k, stride,
                                                                          padding):
    # MobileNetV2's stem: a 3x3 stride-2 convolution of the image, then a depthwise and a 1x1 projection.
    graph, inputs = expand_then_depthwise((2, 23, 19, 3), 32, 1, "SAME", project=16, first=(k, stride, padding),
                                          seed=k + stride)
    interpreter = Interpreter.from_graph(graph)
    assert fused_steps(interpreter) == 1 and len(interpreter._invoke_steps) == 1
    assert_close_to_numpy(interpreter.run(inputs)["z"], numpy_path(graph, inputs, monkeypatch)["z"])


def test_a_pad_folded_into_the_first_convolution_is_fused_too(fused_kernels, monkeypatch):
    # TFLite's MobileNetV2 stem: PAD the image, then a 3x3 stride-2 VALID convolution.
    # 23 x 23 padded to 24 x 24 gives the 11 x 11 of the unpadded 23 x 23 VALID convolution built here.
    graph, inputs = expand_then_depthwise((1, 23, 23, 3), 32, 1, "SAME", project=16, first=(3, 2, "VALID"))
    graph.add_tensor(Tensor("padded_x", (1, 24, 24, 3), np.float32))
    paddings = graph.add_constant("x_paddings", np.array([[0, 0], [0, 1], [0, 1], [0, 0]], np.int32))
    graph.ops[0].inputs[0] = "padded_x"
    graph.ops.insert(0, Op("PAD", ["x", paddings], ["padded_x"], {}))
    interpreter = Interpreter.from_graph(graph)
    assert fused_steps(interpreter) == 1 and len(interpreter._invoke_steps) == 1
    assert_close_to_numpy(interpreter.run(inputs)["z"], numpy_path(graph, inputs, monkeypatch)["z"])

"""int8 TRANSPOSE_CONV, LOG_SOFTMAX and L2_NORMALIZATION against LiteRT's reference kernels.

Single-op int8 models (written with write_tflite) cover the kernels' parameter space; ONNX
ConvTranspose / LogSoftmax models converted with ``convert(quantize="int8")`` cover the path a user
takes. Either way our runtime must give BUILTIN_REF's integers in every tensor, and a converted
model's output must stay within a few output steps of onnxruntime's float result.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("ai_edge_litert")
from edgeq.testing import litert  # noqa: E402

from edgeq.converter.api import convert  # noqa: E402
from edgeq.converter.calibrate import calibrate  # noqa: E402
from edgeq.converter.quantize import quantize_int8  # noqa: E402
from edgeq.runtime.tflite_format.writer import operator_version, write_tflite  # noqa: E402
from edgeq.testing.referees import nchw_to_nhwc, nhwc_to_nchw, run_onnxruntime  # noqa: E402
from edgeq.runtime.interpreter import Interpreter  # noqa: E402
from edgeq.runtime.tflite_format.reader import read_tflite  # noqa: E402
from edgeq.runtime.ir import Graph, Op, QuantParams, Tensor
from edgeq.testing.int8_graphs import random_int8  # noqa: E402
from edgeq.testing.referees import assert_exact, max_diff_default_kernels  # noqa: E402

INTEGER_TYPES = (np.int8, np.uint8, np.int16, np.int32)
# A converted model's dequantized output may differ from the float model's by this many output
# quantization steps (input and weight rounding add up over the few terms of one output).
FLOAT_TOLERANCE_STEPS = 6


# -- single-op TRANSPOSE_CONV ------------------------------------------------------------------------

def transpose_conv_graph(x_shape, out_hw, k, stride, padding, out_c=5, bias=True, act="NONE",
                         in_q=(0.05, 3), out_q=(0.2, -5), seed=0):
    """An int8 TRANSPOSE_CONV with per-channel int8 filter [O, KH, KW, I] and optional int32 bias."""
    rng = np.random.default_rng(seed)
    n, _, _, in_c = x_shape
    k_h, k_w = (k, k) if isinstance(k, int) else k
    s_h, s_w = (stride, stride) if isinstance(stride, int) else stride
    g = Graph()
    y_shape = (n,) + tuple(out_hw) + (out_c,)
    g.add_tensor(Tensor("output_shape", (4,), np.int32, np.array(y_shape, np.int32)))
    scales = rng.uniform(0.001, 0.02, out_c)
    w_shape = (out_c, k_h, k_w, in_c)
    g.add_tensor(Tensor("w", w_shape, np.int8, random_int8(rng, w_shape).clip(-127, 127),
                        QuantParams(scales, np.zeros(out_c), 0)))
    g.add_tensor(Tensor("x", x_shape, np.int8, quant=QuantParams(*in_q)))
    inputs = ["output_shape", "w", "x"]
    if bias:
        bias_scales = np.float32(in_q[0]) * scales.astype(np.float32)
        g.add_tensor(Tensor("b", (out_c,), np.int32, rng.integers(-5000, 5000, out_c),
                            QuantParams(bias_scales, np.zeros(out_c), 0)))
        inputs.append("b")
    g.add_tensor(Tensor("y", y_shape, np.int8, quant=QuantParams(*out_q)))
    g.add_op(Op("TRANSPOSE_CONV", inputs, ["y"], {"padding": padding, "stride_h": s_h, "stride_w": s_w,
                                                  "fused_activation_function": act}))
    g.inputs, g.outputs = ["x"], ["y"]
    return g, [random_int8(rng, x_shape)]


def output_size(padding, in_size, k, stride, extra=0):
    """An output size TFLite accepts: SAME needs ceil(out / stride) == in, VALID needs
    (out - k) // stride + 1 == in; ``extra`` (< stride) takes a larger one of those."""
    if padding == "SAME":
        return (in_size - 1) * stride + 1 + extra
    return (in_size - 1) * stride + k + extra


GEOMETRIES = list(itertools.product([1, 2, 3, 4], [1, 2, 3], ["SAME", "VALID"]))


@pytest.mark.parametrize("k, stride, padding", GEOMETRIES)
def test_transpose_conv_geometries(k, stride, padding, kernel_path):
    for extra in sorted({0, stride - 1}):
        out_hw = (output_size(padding, 5, k, stride, extra), output_size(padding, 6, k, stride, extra))
        graph, inputs = transpose_conv_graph((2, 5, 6, 4), out_hw, k, stride, padding)
        assert_exact(graph, inputs)


@pytest.mark.parametrize("k, stride", [((2, 3), (1, 2)), ((4, 1), (3, 1)), ((3, 5), (2, 3))])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_transpose_conv_rectangular_filters_and_strides(k, stride, padding):
    out_hw = (output_size(padding, 4, k[0], stride[0]), output_size(padding, 7, k[1], stride[1]))
    graph, inputs = transpose_conv_graph((1, 4, 7, 3), out_hw, k, stride, padding)
    assert_exact(graph, inputs)


# (input (scale, zero point), output (scale, zero point)): typical, saturating, extreme zero points.
PARAMS = {
    "typical": ((0.05, 3), (0.2, -5)),
    "saturating": ((0.5, -128), (0.001, 127)),
    "coarse_output": ((0.01, 127), (3.0, 0)),
    "multiplier_near_one": ((0.02, 0), (0.0200001, 0)),
}


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("act", ["NONE", "RELU", "RELU6", "RELU_N1_TO_1"])
def test_transpose_conv_params_bias_and_fused_activation(params, bias, act, kernel_path):
    graph, inputs = transpose_conv_graph((2, 4, 5, 3), (8, 10), 3, 2, "SAME", bias=bias, act=act,
                                         in_q=PARAMS[params][0], out_q=PARAMS[params][1])
    expected_version = 4 if act != "NONE" else 3 if bias else 2
    assert operator_version(graph.ops[0], graph) == expected_version
    assert_exact(graph, inputs)


def test_transpose_conv_deep_input_uses_an_exact_accumulation(kernel_path):
    # Interior outputs of a 4x4 stride-2 filter sum 4 taps of 1101 channels, about 2^26 here, where
    # float32 drops low bits. Every tap's weights are v + d[ky // 2][kx // 2], so every interior
    # output sums v four times plus all of d, whatever its phase: with a constant input the bias
    # cancels that sum exactly and a multiplier of 1 shows any rounding as a nonzero output.
    rng = np.random.default_rng(5)
    in_c, out_c = 1101, 3
    graph, _ = transpose_conv_graph((1, 3, 3, in_c), (6, 6), 4, 2, "SAME", out_c=out_c, in_q=(0.01, 0),
                                    out_q=(0.0001, 0))
    v = rng.integers(90, 110, (out_c, 1, 1, in_c))
    d = rng.integers(-10, 11, (2, 2))
    weights = v + d[np.arange(4)[:, None] // 2, np.arange(4)[None, :] // 2][None, :, :, None]
    graph.tensors["w"].data = weights.astype(np.int8)
    graph.tensors["w"].quant = QuantParams(np.full(out_c, 0.01), np.zeros(out_c), 0)
    x_value = -127
    interior_sum = x_value * (4 * v.reshape(out_c, in_c).sum(axis=1) + in_c * d.sum())
    assert np.all(np.abs(interior_sum) > 2**25)
    graph.tensors["b"].data = (-interior_sum).astype(np.int32)
    graph.tensors["b"].quant = QuantParams(np.full(out_c, 0.0001), np.zeros(out_c), 0)
    inputs = [np.full((1, 3, 3, in_c), x_value, np.int8)]
    assert_exact(graph, inputs)
    y = Interpreter(model_content=write_tflite(graph)).run(inputs)["y"]
    assert np.all(y[0, 1:5, 1:5] == 0)


def test_transpose_conv_matches_the_default_kernels_within_one():
    graph, inputs = transpose_conv_graph((2, 5, 6, 4), (10, 12), 3, 2, "SAME")
    assert max_diff_default_kernels(graph, inputs) <= 1


def test_transpose_conv_runs_a_larger_batch_than_written():
    graph, inputs = transpose_conv_graph((1, 4, 4, 2), (8, 8), 3, 2, "SAME")
    x = random_int8(np.random.default_rng(3), (3, 4, 4, 2))
    batched = Interpreter(model_content=write_tflite(graph)).run([x])["y"]
    single = Interpreter(model_content=write_tflite(graph))
    for i in range(3):
        assert np.array_equal(batched[i:i + 1], single.run([x[i:i + 1]])["y"])


# -- single-op LOG_SOFTMAX and L2_NORMALIZATION -------------------------------------------------------

def unary_fixed_output_graph(op_type, shape, in_q, out_q, x=None, seed=0):
    rng = np.random.default_rng(seed)
    g = Graph()
    g.add_tensor(Tensor("x", shape, np.int8, quant=QuantParams(*in_q)))
    g.add_tensor(Tensor("y", shape, np.int8, quant=QuantParams(*out_q)))
    options = {"fused_activation_function": "NONE"} if op_type == "L2_NORMALIZATION" else {}
    g.add_op(Op(op_type, ["x"], ["y"], options))
    g.inputs, g.outputs = ["x"], ["y"]
    return g, [random_int8(rng, shape) if x is None else np.asarray(x, np.int8).reshape(shape)]


LOG_SOFTMAX_OUTPUT = (16.0 / 256, 127)
L2_NORMALIZATION_OUTPUT = (1.0 / 128, 0)


@pytest.mark.parametrize("input_scale", [0.001, 0.01, 0.05, 0.3, 1.0, 5.0, 40.0])
@pytest.mark.parametrize("zero_point", [-128, 0, 50])
@pytest.mark.parametrize("shape", [(3, 10), (2, 3, 4, 37), (4, 1)])
def test_log_softmax(input_scale, zero_point, shape):
    graph, inputs = unary_fixed_output_graph("LOG_SOFTMAX", shape, (input_scale, zero_point), LOG_SOFTMAX_OUTPUT)
    assert operator_version(graph.ops[0], graph) == 2
    assert_exact(graph, inputs)


@pytest.mark.parametrize("input_scale, depth, low", [(0.05, 1000, 100), (0.02, 3000, 120), (0.004, 500, -128),
                                                     (0.5, 16, 90)])
def test_log_softmax_long_and_near_equal_rows(input_scale, depth, low):
    # Large sums of exponentials exercise every range of the fixed-point log.
    x = np.random.default_rng(1).integers(low, 128, (3, depth))
    graph, inputs = unary_fixed_output_graph("LOG_SOFTMAX", (3, depth), (input_scale, 0), LOG_SOFTMAX_OUTPUT, x)
    assert_exact(graph, inputs)


def test_log_softmax_output_is_the_log_of_the_softmax():
    x = np.random.default_rng(2).integers(-128, 128, (4, 12))
    graph, inputs = unary_fixed_output_graph("LOG_SOFTMAX", (4, 12), (0.05, 0), LOG_SOFTMAX_OUTPUT, x)
    y = Interpreter(model_content=write_tflite(graph)).run(inputs)["y"]
    real = 0.05 * x
    expected = real - real.max(axis=1, keepdims=True)
    expected -= np.log(np.exp(expected).sum(axis=1, keepdims=True))
    representable = expected > -255 / 16
    dequantized = (y.astype(np.float64) - 127) / 16
    assert np.all(np.abs(dequantized - expected)[representable] <= 1 / 16)
    assert np.all(y[~representable] == -128)


@pytest.mark.parametrize("zero_point", [-128, 0, 5, 127])
@pytest.mark.parametrize("shape", [(3, 10), (2, 3, 4, 37), (4, 1), (2, 3000)])
def test_l2_normalization(zero_point, shape):
    graph, inputs = unary_fixed_output_graph("L2_NORMALIZATION", shape, (0.1, zero_point), L2_NORMALIZATION_OUTPUT)
    assert operator_version(graph.ops[0], graph) == 2
    assert_exact(graph, inputs)


def test_l2_normalization_of_all_zero_rows_and_single_values():
    x = np.array([[7, 7, 7, 7], [7, 8, 7, 7], [7, 6, 7, 7], [-128, 127, 7, 7]])
    graph, inputs = unary_fixed_output_graph("L2_NORMALIZATION", (4, 4), (0.1, 7), L2_NORMALIZATION_OUTPUT, x)
    assert_exact(graph, inputs)


def test_l2_normalization_float_matches_litert():
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 9)).astype(np.float32)
    x[0, 0, 0] = 0  # a zero row: LiteRT divides by epsilon, not by 0
    g = Graph()
    g.add_tensor(Tensor("x", x.shape, np.float32))
    g.add_tensor(Tensor("y", x.shape, np.float32))
    g.add_op(Op("L2_NORMALIZATION", ["x"], ["y"], {"fused_activation_function": "NONE"}))
    g.inputs, g.outputs = ["x"], ["y"]
    content = write_tflite(g)
    theirs = litert.Interpreter(model_content=content,
                                experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF)
    theirs.allocate_tensors()
    theirs.set_tensor(theirs.get_input_details()[0]["index"], x)
    theirs.invoke()
    expected = theirs.get_tensor(theirs.get_output_details()[0]["index"])
    np.testing.assert_allclose(Interpreter(model_content=content).run([x])["y"], expected, rtol=1e-6, atol=1e-7)


# -- converted ONNX models -----------------------------------------------------------------------------

def conv_transpose_model(in_c, out_c, k, hw=(5, 6), bias=True, seed=0, **attrs):
    """A float ONNX model: x [1, in_c, H, W] -> ConvTranspose -> y."""
    rng = np.random.default_rng(seed)
    k_h, k_w = (k, k) if isinstance(k, int) else k
    weight = rng.standard_normal((in_c, out_c, k_h, k_w)).astype(np.float32) * 0.3
    initializers = [onnx.numpy_helper.from_array(weight, "w")]
    inputs = ["x", "w"]
    if bias:
        initializers.append(onnx.numpy_helper.from_array(rng.standard_normal(out_c).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("ConvTranspose", inputs, ["y"], **attrs)
    graph = helper.make_graph([node], "conv_transpose",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_c, *hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def log_softmax_model(shape, axis):
    node = helper.make_node("LogSoftmax", ["x"], ["y"], axis=axis)
    graph = helper.make_graph([node], "log_softmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def convert_int8(model, tmp_path, samples):
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    np.savez(tmp_path / "calibration.npz", x=samples)
    return convert(str(path), quantize="int8", calibration=str(tmp_path / "calibration.npz"), float_fallback="none")


def assert_converted_model_is_exact_and_close(model, tmp_path, op_type, layout_nchw=True):
    rng = np.random.default_rng(7)
    x_shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    samples = rng.standard_normal((16, *x_shape[1:])).astype(np.float32)
    result = convert_int8(model, tmp_path, samples)
    assert not result.float_ops
    quantized = [op for op in result.graph.ops if op.type == op_type]
    assert quantized and all(result.graph[op.outputs[0]].dtype == np.int8 for op in quantized)

    content = result.content
    theirs = litert.Interpreter(model_content=content, experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF,
                                experimental_preserve_all_tensors=True, num_threads=1)
    ours = Interpreter(model_content=content, experimental_preserve_all_tensors=True)
    in_file = read_tflite(content)
    mismatches = {}
    for sample in samples[:4]:
        x = sample[None]
        feed = nchw_to_nhwc(x) if layout_nchw else x
        for interpreter in (theirs, ours):
            interpreter.allocate_tensors()
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], feed)
            interpreter.invoke()
        for detail in ours.get_tensor_details():
            if detail["dtype"] not in INTEGER_TYPES or in_file[detail["name"]].is_constant:
                continue
            differ = np.count_nonzero(theirs.get_tensor(detail["index"]) != ours.get_tensor(detail["index"]))
            mismatches[detail["name"]] = mismatches.get(detail["name"], 0) + int(differ)
        y = ours.get_tensor(ours.get_output_details()[0]["index"])
        expected = run_onnxruntime(model, {"x": x})[0]
        got = nhwc_to_nchw(y) if layout_nchw else y
        step = result.graph[quantized[-1].outputs[0]].quant.scale[0]
        assert got.shape == expected.shape
        assert np.max(np.abs(got - expected)) <= FLOAT_TOLERANCE_STEPS * step
    assert sum(mismatches.values()) == 0, mismatches


CONV_TRANSPOSE_CASES = {
    "stride1": dict(k=3),
    "stride2_pads": dict(k=3, strides=[2, 2], pads=[1, 1, 1, 1]),
    "stride2_output_padding": dict(k=3, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    "stride2_k4": dict(k=4, strides=[2, 2], pads=[1, 1, 1, 1]),
    "stride3_asymmetric_pads": dict(k=3, strides=[3, 3], pads=[0, 1, 2, 0]),
    "same_upper": dict(k=3, strides=[2, 2], auto_pad="SAME_UPPER"),
    "rectangular": dict(k=(2, 3), strides=[1, 2], pads=[0, 1, 0, 1]),
    "output_shape": dict(k=3, strides=[2, 2], output_shape=[9, 11]),
    "output_shape_odd_padding": dict(k=3, strides=[2, 2], output_shape=[10, 12]),
    "no_bias": dict(k=3, strides=[2, 2], bias=False),
}


@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES)
def test_converted_conv_transpose_is_int8_and_equals_litert_reference(case, tmp_path):
    attrs = dict(CONV_TRANSPOSE_CASES[case])
    k, bias = attrs.pop("k"), attrs.pop("bias", True)
    model = conv_transpose_model(4, 6, k, bias=bias, **attrs)
    assert_converted_model_is_exact_and_close(model, tmp_path, "TRANSPOSE_CONV")


@pytest.mark.parametrize("shape, axis", [([1, 10], -1), ([1, 3, 4, 5], 1), ([1, 7, 9], 1)])
def test_converted_log_softmax_is_int8_and_equals_litert_reference(shape, axis, tmp_path):
    model = log_softmax_model(shape, axis)
    assert_converted_model_is_exact_and_close(model, tmp_path, "LOG_SOFTMAX", layout_nchw=len(shape) == 4)


def test_quantized_float_l2_normalization_is_int8_and_equals_litert_reference():
    # The ONNX importer does not emit L2_NORMALIZATION; a float .tflite holding one is quantized too.
    rng = np.random.default_rng(6)
    g = Graph()
    g.add_tensor(Tensor("x", (1, 4, 4, 8), np.float32))
    g.add_tensor(Tensor("w", (8, 1, 1, 8), np.float32, rng.standard_normal((8, 1, 1, 8)).astype(np.float32)))
    g.add_tensor(Tensor("b", (8,), np.float32, rng.standard_normal(8).astype(np.float32)))
    g.add_tensor(Tensor("features", (1, 4, 4, 8), np.float32))
    g.add_tensor(Tensor("y", (1, 4, 4, 8), np.float32))
    g.add_op(Op("CONV_2D", ["x", "w", "b"], ["features"], {"padding": "SAME", "stride_h": 1, "stride_w": 1,
                                                          "fused_activation_function": "NONE"}))
    g.add_op(Op("L2_NORMALIZATION", ["features"], ["y"], {"fused_activation_function": "NONE"}))
    g.inputs, g.outputs = ["x"], ["y"]
    samples = rng.standard_normal((8, 4, 4, 8)).astype(np.float32)
    quantized = quantize_int8(g, calibrate(g, {"x": samples}, progress=False))
    l2 = next(op for op in quantized.ops if op.type == "L2_NORMALIZATION")
    assert quantized[l2.inputs[0]].dtype == np.int8 and not quantized.float_ops

    content = write_tflite(quantized)
    theirs = litert.Interpreter(model_content=content, experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF,
                                experimental_preserve_all_tensors=True, num_threads=1)
    ours = Interpreter(model_content=content, experimental_preserve_all_tensors=True)
    for interpreter in (theirs, ours):
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], samples[:1])
        interpreter.invoke()
    for detail in ours.get_tensor_details():
        if detail["dtype"] == np.int8 and quantized.tensors[detail["name"]].data is None:
            assert np.array_equal(theirs.get_tensor(detail["index"]), ours.get_tensor(detail["index"])), detail["name"]
    # The kernel's own error: against the exact L2 normalization of the int8 features it gets.
    index = {d["name"]: d["index"] for d in ours.get_tensor_details()}
    features = ours.get_tensor(index[l2.inputs[0]]).astype(np.float64) - quantized[l2.inputs[0]].quant.zero_point[0]
    expected = features / np.linalg.norm(features, axis=-1, keepdims=True)
    assert np.max(np.abs(ours.get_tensor(index[l2.outputs[0]]) / 128 - expected)) <= 1 / 128

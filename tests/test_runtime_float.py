"""The float32 runtime: each kernel against an independent reference (onnxruntime on a one-node
ONNX model, laid out NCHW/OIHW and transposed here; LiteRT on the .tflite file we write), and the
Interpreter's LiteRT-compatible API."""
from __future__ import annotations

import numpy as np
import pytest

from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph, ModelError, Op, QuantParams, Tensor

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

RNG = np.random.default_rng(1234)


# -- helpers ------------------------------------------------------------------------------------

def rand(*shape, low=-1.0, high=1.0):
    return RNG.uniform(low, high, size=shape).astype(np.float32)


def nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def run_onnx(op_type, inputs, attributes=None, initializers=None, opset=18, n_outputs=1):
    """Run one ONNX node on onnxruntime; ``inputs`` are fed, ``initializers`` are constants."""
    initializers = initializers or {}
    names = list(inputs) + list(initializers)
    outputs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outputs, **(attributes or {}))
    graph = helper.make_graph(
        [node], "single_op",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [onnx.numpy_helper.from_array(v, n) for n, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    results = session.run(None, dict(inputs))
    return results if n_outputs > 1 else results[0]


def single_op_graph(op_type, inputs, out_shapes, options=None, out_dtype=np.float32):
    """A graph of one op. ``inputs``: list of (name, array, is_constant); name '' = omitted."""
    tensors, input_names, graph_inputs = [], [], []
    for name, value, is_constant in inputs:
        input_names.append(name)
        if not name:
            continue
        value = np.asarray(value)
        tensors.append(Tensor(name, value.shape, value.dtype, value if is_constant else None))
        if not is_constant:
            graph_inputs.append(name)
    outputs = [f"out{i}" for i in range(len(out_shapes))]
    tensors += [Tensor(name, shape, out_dtype) for name, shape in zip(outputs, out_shapes)]
    return Graph(tensors, [Op(op_type, input_names, outputs, dict(options or {}))], graph_inputs, outputs)


def run_graph(graph, feeds):
    return Interpreter.from_graph(graph).run(feeds)


def run_single(op_type, inputs, out_shapes, options=None, out_dtype=np.float32):
    graph = single_op_graph(op_type, inputs, out_shapes, options, out_dtype)
    feeds = {name: value for name, value, is_constant in inputs if name and not is_constant}
    results = run_graph(graph, feeds)
    outputs = [results[name] for name in graph.outputs]
    return outputs if len(outputs) > 1 else outputs[0]


def assert_close(actual, expected, rtol=1e-5, atol=1e-5):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# -- convolution --------------------------------------------------------------------------------

CONV_CASES = {
    "same_3x3_stride1": dict(k=3, stride=1, dilation=1, padding="SAME"),
    "valid_3x3_stride2": dict(k=3, stride=2, dilation=1, padding="VALID"),
    "same_4x4_stride2_odd_padding": dict(k=4, stride=2, dilation=1, padding="SAME"),
    "same_3x3_dilation2": dict(k=3, stride=1, dilation=2, padding="SAME"),
    "valid_3x3_dilation2_stride2": dict(k=3, stride=2, dilation=2, padding="VALID"),
    "pointwise_1x1": dict(k=1, stride=1, dilation=1, padding="VALID"),
    "pointwise_1x1_stride2": dict(k=1, stride=2, dilation=1, padding="SAME"),
}


def _onnx_padding(padding, in_hw=None, k=None, stride=1, dilation=1):
    """ONNX padding attributes; onnxruntime refuses auto_pad with dilation, so spell pads out then:
    TFLite's SAME pads max((out-1)*stride + effective_k - in, 0) in total, the odd pixel at the end."""
    if padding != "SAME":
        return {"auto_pad": "VALID"}
    if dilation == 1:
        return {"auto_pad": "SAME_UPPER"}
    effective_k = (k - 1) * dilation + 1
    totals = [max((-(-size // stride) - 1) * stride + effective_k - size, 0) for size in in_hw]
    return {"pads": [t // 2 for t in totals] + [t - t // 2 for t in totals]}


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_2d_matches_onnxruntime(case):
    k, stride, dilation, padding = (CONV_CASES[case][key] for key in ("k", "stride", "dilation", "padding"))
    x, w, b = rand(2, 5, 11, 10), rand(7, 5, k, k), rand(7)
    attrs = dict(strides=[stride, stride], dilations=[dilation, dilation],
                 **_onnx_padding(padding, x.shape[2:], k, stride, dilation))
    expected = nhwc(run_onnx("Conv", {"x": x}, attrs, {"w": w, "b": b}))
    options = dict(padding=padding, stride_h=stride, stride_w=stride,
                   dilation_h_factor=dilation, dilation_w_factor=dilation)
    actual = run_single("CONV_2D", [("x", nhwc(x), False), ("w", w.transpose(0, 2, 3, 1), True),
                                    ("b", b, True)], [expected.shape], options)
    assert_close(actual, expected)


def test_conv_2d_without_bias_and_fused_relu6():
    x, w = rand(1, 3, 8, 8, low=-4, high=4), rand(4, 3, 3, 3)
    expected = np.clip(nhwc(run_onnx("Conv", {"x": x}, {"auto_pad": "SAME_UPPER"}, {"w": w})), 0, 6)
    actual = run_single("CONV_2D", [("x", nhwc(x), False), ("w", w.transpose(0, 2, 3, 1), True), ("", None, True)],
                        [expected.shape], dict(padding="SAME", stride_h=1, stride_w=1,
                                               fused_activation_function="RELU6"))
    assert_close(actual, expected)


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "SAME"), (2, "VALID")])
def test_depthwise_conv_2d_matches_onnxruntime(multiplier, stride, padding):
    channels = 6
    x, w, b = rand(2, channels, 9, 10), rand(channels * multiplier, 1, 3, 3), rand(channels * multiplier)
    attrs = dict(group=channels, strides=[stride, stride], **_onnx_padding(padding))
    expected = nhwc(run_onnx("Conv", {"x": x}, attrs, {"w": w, "b": b}))
    actual = run_single("DEPTHWISE_CONV_2D",
                        [("x", nhwc(x), False), ("w", w.transpose(1, 2, 3, 0), True), ("b", b, True)],
                        [expected.shape], dict(padding=padding, stride_h=stride, stride_w=stride,
                                               depth_multiplier=multiplier))
    assert_close(actual, expected)


def test_depthwise_conv_2d_dilation2_matches_onnxruntime():
    x, w = rand(1, 4, 12, 12), rand(4, 1, 3, 3)
    expected = nhwc(run_onnx("Conv", {"x": x}, dict(group=4, dilations=[2, 2], **_onnx_padding("SAME", (12, 12), 3, 1, 2)), {"w": w}))
    actual = run_single("DEPTHWISE_CONV_2D", [("x", nhwc(x), False), ("w", w.transpose(1, 2, 3, 0), True), ("", None, True)],
                        [expected.shape], dict(padding="SAME", stride_h=1, stride_w=1, depth_multiplier=1,
                                               dilation_h_factor=2, dilation_w_factor=2))
    assert_close(actual, expected)


@pytest.mark.parametrize("stride,padding,k", [(2, "SAME", 3), (2, "VALID", 3), (1, "SAME", 3), (2, "SAME", 4)])
def test_transpose_conv_matches_onnxruntime(stride, padding, k):
    x, w, b = rand(2, 5, 6, 7), rand(5, 4, k, k), rand(4)  # ONNX ConvTranspose filter: [I, O, KH, KW]
    attrs = dict(strides=[stride, stride], **_onnx_padding(padding))
    expected = nhwc(run_onnx("ConvTranspose", {"x": x}, attrs, {"w": w, "b": b}))
    actual = run_single("TRANSPOSE_CONV",
                        [("shape", np.array(expected.shape, np.int32), True), ("w", w.transpose(1, 2, 3, 0), True),
                         ("x", nhwc(x), False), ("b", b, True)],
                        [expected.shape], dict(padding=padding, stride_h=stride, stride_w=stride))
    assert_close(actual, expected)


# -- fully connected, matmul --------------------------------------------------------------------

def test_fully_connected_matches_gemm():
    x, w, b = rand(3, 20), rand(6, 20), rand(6)
    expected = run_onnx("Gemm", {"x": x}, {"transB": 1}, {"w": w, "b": b})
    actual = run_single("FULLY_CONNECTED", [("x", x, False), ("w", w, True), ("b", b, True)], [expected.shape])
    assert_close(actual, expected)


def test_fully_connected_flattens_input_to_rows_of_input_size():
    x, w = rand(2, 3, 8), rand(5, 8)
    actual = run_single("FULLY_CONNECTED", [("x", x, False), ("w", w, True), ("", None, True)], [(6, 5)])
    assert_close(actual, x.reshape(6, 8) @ w.T)


def test_fully_connected_keep_num_dims_keeps_leading_axes():
    x, w, b = rand(2, 3, 8), rand(5, 8), rand(5)
    expected = run_onnx("MatMul", {"x": x}, initializers={"w": np.ascontiguousarray(w.T)}) + b
    actual = run_single("FULLY_CONNECTED", [("x", x, False), ("w", w, True), ("b", b, True)], [(2, 3, 5)],
                        dict(keep_num_dims=True))
    assert_close(actual, expected)


@pytest.mark.parametrize("adj_x,adj_y", [(False, False), (True, False), (False, True), (True, True)])
def test_batch_matmul_adjoints_match_onnxruntime(adj_x, adj_y):
    a, b = rand(2, 3, 4, 5), rand(2, 3, 5, 6)
    expected = run_onnx("MatMul", {"a": a, "b": b})
    a_in = np.ascontiguousarray(np.swapaxes(a, -1, -2)) if adj_x else a
    b_in = np.ascontiguousarray(np.swapaxes(b, -1, -2)) if adj_y else b
    actual = run_single("BATCH_MATMUL", [("a", a_in, False), ("b", b_in, False)], [expected.shape],
                        dict(adj_x=adj_x, adj_y=adj_y))
    assert_close(actual, expected)


# -- elementwise and activations ----------------------------------------------------------------

@pytest.mark.parametrize("op_type,onnx_type", [("ADD", "Add"), ("SUB", "Sub"), ("MUL", "Mul"), ("DIV", "Div"),
                                               ("MAXIMUM", "Max"), ("MINIMUM", "Min")])
def test_binary_ops_broadcast_as_onnxruntime(op_type, onnx_type):
    a, b = rand(2, 4, 5, 6), rand(1, 1, 5, 1, low=0.5, high=2.0)
    expected = run_onnx(onnx_type, {"a": a, "b": b})
    assert_close(run_single(op_type, [("a", a, False), ("b", b, False)], [expected.shape]), expected)


def test_squared_difference_is_square_of_difference():
    a, b = rand(3, 4), rand(4)
    assert_close(run_single("SQUARED_DIFFERENCE", [("a", a, False), ("b", b, True)], [(3, 4)]),
                 ((a.astype(np.float64) - b) ** 2).astype(np.float32))


@pytest.mark.parametrize("activation,reference", [("RELU", lambda v: np.maximum(v, 0)),
                                                  ("RELU6", lambda v: np.clip(v, 0, 6)),
                                                  ("RELU_N1_TO_1", lambda v: np.clip(v, -1, 1)),
                                                  ("TANH", np.tanh)])
def test_fused_activation_applies_after_add(activation, reference):
    a, b = rand(2, 8, low=-8, high=8), rand(2, 8, low=-8, high=8)
    actual = run_single("ADD", [("a", a, False), ("b", b, False)], [(2, 8)],
                        dict(fused_activation_function=activation))
    assert_close(actual, reference(a + b).astype(np.float32))


UNARY_CASES = {
    "RELU": ("Relu", {}, None),
    "RELU6": ("Clip", {}, {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}),
    "RELU_N1_TO_1": ("Clip", {}, {"lo": np.array(-1, np.float32), "hi": np.array(1, np.float32)}),
    "LOGISTIC": ("Sigmoid", {}, None),
    "TANH": ("Tanh", {}, None),
    "HARD_SWISH": ("HardSwish", {}, None),
    "EXP": ("Exp", {}, None),
    "ABS": ("Abs", {}, None),
    "NEG": ("Neg", {}, None),
}


@pytest.mark.parametrize("op_type", UNARY_CASES)
def test_unary_activation_matches_onnxruntime(op_type):
    onnx_type, attrs, initializers = UNARY_CASES[op_type]
    x = rand(2, 50, low=-10, high=10)
    expected = run_onnx(onnx_type, {"x": x}, attrs, initializers)
    assert_close(run_single(op_type, [("x", x, False)], [x.shape]), expected, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("op_type,onnx_type", [("LOG", "Log"), ("SQRT", "Sqrt")])
def test_positive_domain_math_matches_onnxruntime(op_type, onnx_type):
    x = rand(3, 40, low=0.01, high=50)
    assert_close(run_single(op_type, [("x", x, False)], [x.shape]), run_onnx(onnx_type, {"x": x}), rtol=2e-6)


def test_rsqrt_is_reciprocal_square_root():
    x = rand(3, 40, low=0.01, high=50)
    assert_close(run_single("RSQRT", [("x", x, False)], [x.shape]), (1 / np.sqrt(x.astype(np.float64))).astype(np.float32),
                 rtol=2e-6)


def test_logistic_saturates_without_overflow_warnings():
    x = np.array([-1e4, -100, 0, 100, 1e4], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        actual = run_single("LOGISTIC", [("x", x, False)], [x.shape])
    assert_close(actual, np.array([0, 1 / (1 + np.exp(100.0)), 0.5, 1, 1], np.float32), atol=0)


def test_leaky_relu_uses_alpha_option():
    x = rand(4, 30, low=-5, high=5)
    expected = run_onnx("LeakyRelu", {"x": x}, {"alpha": 0.1})
    assert_close(run_single("LEAKY_RELU", [("x", x, False)], [x.shape], {"alpha": 0.1}), expected)


def test_prelu_broadcasts_alpha_over_channels():
    x, alpha = rand(2, 3, 4, 5, low=-5, high=5), rand(5)
    expected = run_onnx("PRelu", {"x": x}, initializers={"slope": alpha})
    assert_close(run_single("PRELU", [("x", x, False), ("alpha", alpha, True)], [x.shape]), expected)


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_matches_onnxruntime(approximate):
    x = rand(4, 100, low=-8, high=8)
    expected = run_onnx("Gelu", {"x": x}, {"approximate": "tanh" if approximate else "none"}, opset=20)
    assert_close(run_single("GELU", [("x", x, False)], [x.shape], {"approximate": approximate}), expected,
                 rtol=1e-5, atol=1e-6)


# -- pooling, normalization, softmax, reductions ------------------------------------------------

@pytest.mark.parametrize("k,stride,padding", [(3, 2, "SAME"), (2, 2, "VALID"), (3, 1, "SAME"), (3, 2, "VALID")])
def test_max_pool_2d_matches_onnxruntime(k, stride, padding):
    x = rand(2, 4, 9, 10)
    expected = nhwc(run_onnx("MaxPool", {"x": x}, dict(kernel_shape=[k, k], strides=[stride, stride],
                                                         **_onnx_padding(padding))))
    actual = run_single("MAX_POOL_2D", [("x", nhwc(x), False)], [expected.shape],
                        dict(padding=padding, stride_h=stride, stride_w=stride, filter_height=k, filter_width=k))
    assert_close(actual, expected)


@pytest.mark.parametrize("k,stride,padding", [(3, 2, "SAME"), (2, 2, "VALID"), (3, 1, "SAME"), (4, 3, "SAME")])
def test_average_pool_2d_same_padding_counts_only_valid_elements(k, stride, padding):
    x = rand(2, 4, 9, 10)
    attrs = dict(kernel_shape=[k, k], strides=[stride, stride], count_include_pad=0, **_onnx_padding(padding))
    expected = nhwc(run_onnx("AveragePool", {"x": x}, attrs))
    actual = run_single("AVERAGE_POOL_2D", [("x", nhwc(x), False)], [expected.shape],
                        dict(padding=padding, stride_h=stride, stride_w=stride, filter_height=k, filter_width=k))
    assert_close(actual, expected)


def test_average_pool_2d_over_whole_input_is_global_average():
    x = rand(3, 8, 7, 7)
    expected = nhwc(run_onnx("GlobalAveragePool", {"x": x}))
    actual = run_single("AVERAGE_POOL_2D", [("x", nhwc(x), False)], [expected.shape],
                        dict(padding="VALID", stride_h=1, stride_w=1, filter_height=7, filter_width=7))
    assert_close(actual, expected)


def test_local_response_normalization_matches_onnxruntime():
    size, alpha, beta, bias = 5, 1e-3, 0.75, 2.0
    x = rand(2, 12, 5, 6, low=-5, high=5)
    expected = nhwc(run_onnx("LRN", {"x": x}, dict(size=size, alpha=alpha, beta=beta, bias=bias)))
    # ONNX divides alpha by the window size; TFLite's radius excludes the centre.
    actual = run_single("LOCAL_RESPONSE_NORMALIZATION", [("x", nhwc(x), False)], [expected.shape],
                        dict(radius=(size - 1) // 2, bias=bias, alpha=alpha / size, beta=beta))
    assert_close(actual, expected)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_softmax_over_last_axis_with_beta(beta):
    x = rand(2, 3, 10, low=-20, high=20)
    expected = run_onnx("Softmax", {"x": x * np.float32(beta)}, {"axis": -1})
    assert_close(run_single("SOFTMAX", [("x", x, False)], [x.shape], {"beta": beta}), expected, atol=1e-7)


@pytest.mark.parametrize("op_type,onnx_type", [("MEAN", "ReduceMean"), ("SUM", "ReduceSum"),
                                               ("REDUCE_MAX", "ReduceMax")])
@pytest.mark.parametrize("keep_dims", [True, False])
def test_reductions_over_axis_tensor(op_type, onnx_type, keep_dims):
    x, axes = rand(2, 5, 6, 7), np.array([1, -2], np.int64)
    expected = run_onnx(onnx_type, {"x": x}, {"keepdims": int(keep_dims)}, {"axes": axes})
    actual = run_single(op_type, [("x", x, False), ("axes", axes.astype(np.int32), True)], [expected.shape],
                        {"keep_dims": keep_dims})
    assert_close(actual, expected)


# -- resize -------------------------------------------------------------------------------------

RESIZE_MODES = {
    "default": (dict(), "asymmetric"),
    "align_corners": (dict(align_corners=True), "align_corners"),
    "half_pixel_centers": (dict(half_pixel_centers=True), "half_pixel"),
}


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("out_hw", [(10, 14), (3, 4)])
def test_resize_bilinear_matches_onnxruntime(mode, out_hw):
    options, transform = RESIZE_MODES[mode]
    x = rand(2, 3, 5, 7)
    sizes = np.array([2, 3, *out_hw], np.int64)
    expected = nhwc(run_onnx("Resize", {"x": x}, dict(mode="linear", coordinate_transformation_mode=transform),
                             {"roi": np.zeros(0, np.float32), "scales": np.zeros(0, np.float32), "sizes": sizes}))
    actual = run_single("RESIZE_BILINEAR", [("x", nhwc(x), False), ("size", np.array(out_hw, np.int32), True)],
                        [expected.shape], options)
    assert_close(actual, expected)


NEAREST_MODES = {
    "default": (dict(), "asymmetric", "floor"),
    "align_corners": (dict(align_corners=True), "align_corners", "round_prefer_ceil"),
    "half_pixel_centers": (dict(half_pixel_centers=True), "tf_half_pixel_for_nn", "floor"),
}


@pytest.mark.parametrize("mode", NEAREST_MODES)
@pytest.mark.parametrize("out_hw", [(10, 14), (3, 5)])
def test_resize_nearest_neighbor_matches_onnxruntime(mode, out_hw):
    options, transform, nearest_mode = NEAREST_MODES[mode]
    x = rand(1, 2, 5, 7)
    sizes = np.array([1, 2, *out_hw], np.int64)
    attrs = dict(mode="nearest", coordinate_transformation_mode=transform, nearest_mode=nearest_mode)
    expected = nhwc(run_onnx("Resize", {"x": x}, attrs,
                             {"roi": np.zeros(0, np.float32), "scales": np.zeros(0, np.float32), "sizes": sizes},
                             opset=13))
    actual = run_single("RESIZE_NEAREST_NEIGHBOR", [("x", nhwc(x), False), ("size", np.array(out_hw, np.int32), True)],
                        [expected.shape], options)
    assert_close(actual, expected, atol=0, rtol=0)


# -- shape ops ----------------------------------------------------------------------------------

def test_reshape_takes_shape_from_second_input():
    x = rand(2, 3, 4)
    actual = run_single("RESHAPE", [("x", x, False), ("shape", np.array([-1, 4], np.int32), True)], [(6, 4)])
    assert_close(actual, x.reshape(6, 4))


def test_reshape_falls_back_to_new_shape_option():
    x = rand(2, 3, 4)
    actual = run_single("RESHAPE", [("x", x, False)], [(2, 12)], {"new_shape": [2, 12]})
    assert_close(actual, x.reshape(2, 12))


def test_transpose_matches_onnxruntime():
    x = rand(2, 3, 4, 5)
    expected = run_onnx("Transpose", {"x": x}, {"perm": [0, 3, 1, 2]})
    actual = run_single("TRANSPOSE", [("x", x, False), ("perm", np.array([0, 3, 1, 2], np.int32), True)],
                        [expected.shape])
    assert_close(actual, expected, atol=0, rtol=0)


@pytest.mark.parametrize("axis", [3, -1, 1])
def test_concatenation_along_axis(axis):
    a, b = rand(1, 4, 4, 3), rand(1, 4, 4, 3)
    expected = run_onnx("Concat", {"a": a, "b": b}, {"axis": axis})
    actual = run_single("CONCATENATION", [("a", a, False), ("b", b, False)], [expected.shape], {"axis": axis})
    assert_close(actual, expected, atol=0, rtol=0)


def test_concatenation_applies_fused_relu():
    a, b = rand(2, 3), rand(2, 2)
    actual = run_single("CONCATENATION", [("a", a, False), ("b", b, False)], [(2, 5)],
                        {"axis": 1, "fused_activation_function": "RELU"})
    assert_close(actual, np.maximum(np.concatenate([a, b], 1), 0))


@pytest.mark.parametrize("op_type,value", [("PAD", 0.0), ("PADV2", -3.5)])
def test_pad_fills_constant_value(op_type, value):
    x = rand(1, 3, 4, 2)
    paddings = np.array([[0, 0], [1, 2], [0, 3], [1, 0]], np.int32)
    expected = run_onnx("Pad", {"x": x}, {"mode": "constant"},
                        {"pads": paddings.T.reshape(-1).astype(np.int64), "value": np.array(value, np.float32)})
    inputs = [("x", x, False), ("paddings", paddings, True)]
    if op_type == "PADV2":
        inputs.append(("value", np.array([value], np.float32), True))
    assert_close(run_single(op_type, inputs, [expected.shape]), expected, atol=0, rtol=0)


def test_squeeze_and_expand_dims():
    x = rand(1, 3, 1, 4)
    assert run_single("SQUEEZE", [("x", x, False)], [(1, 3, 4)], {"squeeze_dims": [2]}).shape == (1, 3, 4)
    assert run_single("SQUEEZE", [("x", x, False)], [(3, 4)], {"squeeze_dims": []}).shape == (3, 4)
    expanded = run_single("EXPAND_DIMS", [("x", x, False), ("axis", np.array([-1], np.int32), True)], [(1, 3, 1, 4, 1)])
    assert_close(expanded, x[..., None], atol=0, rtol=0)


STRIDED_SLICE_CASES = {
    "plain": (dict(begin=[0, 1, 0], end=[2, 5, 6], strides=[1, 2, 1]), lambda x: x[0:2, 1:5:2, 0:6]),
    "negative_indices": (dict(begin=[0, -4, -1], end=[2, -1, -7], strides=[1, 1, -2]), lambda x: x[0:2, -4:-1, -1:-7:-2]),
    "masks": (dict(begin=[1, 2, 3], end=[0, 0, 0], strides=[1, 1, 1], begin_mask=0b101, end_mask=0b111),
              lambda x: x[:, 2:, :]),
    "shrink_axis": (dict(begin=[1, 0, 2], end=[2, 6, 3], strides=[1, 1, 1], shrink_axis_mask=0b101),
                    lambda x: x[1, 0:6, 2]),
    "offset": (dict(begin=[0, 1, 1], end=[2, 3, 2], strides=[1, 1, 1], offset=True), lambda x: x[0:2, 1:4, 1:3]),
}


@pytest.mark.parametrize("case", STRIDED_SLICE_CASES)
def test_strided_slice_follows_masks(case):
    spec, reference = STRIDED_SLICE_CASES[case]
    x = rand(2, 6, 7)
    expected = reference(x)
    options = {key: value for key, value in spec.items() if key not in ("begin", "end", "strides")}
    inputs = [("x", x, False)] + [(key, np.array(spec[key], np.int32), True) for key in ("begin", "end", "strides")]
    assert_close(run_single("STRIDED_SLICE", inputs, [expected.shape], options), expected, atol=0, rtol=0)


def test_slice_with_size_minus_one_runs_to_end():
    x = rand(2, 6, 7)
    expected = run_onnx("Slice", {"x": x}, initializers={"starts": np.array([0, 2, 1]), "ends": np.array([2, 6, 7])})
    actual = run_single("SLICE", [("x", x, False), ("begin", np.array([0, 2, 1], np.int32), True),
                                  ("size", np.array([-1, 4, -1], np.int32), True)], [expected.shape])
    assert_close(actual, expected, atol=0, rtol=0)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_along_axis_matches_onnxruntime(axis):
    params, indices = rand(4, 5, 6), np.array([[0, 3], [2, 2]], np.int64)
    expected = run_onnx("Gather", {"params": params}, {"axis": axis}, {"indices": indices})
    actual = run_single("GATHER", [("params", params, False), ("indices", indices.astype(np.int32), True)],
                        [expected.shape], {"axis": axis})
    assert_close(actual, expected, atol=0, rtol=0)


def test_split_takes_axis_first_and_returns_equal_parts():
    x = rand(2, 6, 4)
    parts = run_single("SPLIT", [("axis", np.array(1, np.int32), True), ("x", x, False)], [(2, 2, 4)] * 3,
                       {"num_splits": 3})
    for part, expected in zip(parts, np.split(x, 3, axis=1)):
        assert_close(part, expected, atol=0, rtol=0)


def test_split_v_resolves_minus_one_size():
    x = rand(2, 7)
    parts = run_single("SPLIT_V", [("x", x, False), ("sizes", np.array([2, -1, 1], np.int32), True),
                                   ("axis", np.array([-1], np.int32), True)], [(2, 2), (2, 4), (2, 1)],
                       {"num_splits": 3})
    assert [p.shape for p in parts] == [(2, 2), (2, 4), (2, 1)]
    assert_close(np.concatenate(parts, axis=1), x, atol=0, rtol=0)


def test_tile_pack_unpack_cast():
    x, y = rand(2, 3), rand(2, 3)
    assert_close(run_single("TILE", [("x", x, False), ("m", np.array([2, 1], np.int32), True)], [(4, 3)]),
                 np.tile(x, (2, 1)), atol=0, rtol=0)
    assert_close(run_single("PACK", [("x", x, False), ("y", y, False)], [(2, 2, 3)], {"axis": 1, "values_count": 2}),
                 np.stack([x, y], 1), atol=0, rtol=0)
    rows = run_single("UNPACK", [("x", x, False)], [(3,), (3,)], {"num": 2, "axis": 0})
    assert_close(rows[1], x[1], atol=0, rtol=0)
    cast = run_single("CAST", [("x", x * 10, False)], [(2, 3)], out_dtype=np.int32)
    assert cast.dtype == np.int32 and np.array_equal(cast, (x * 10).astype(np.int32))


# -- interpreter API ----------------------------------------------------------------------------

def two_op_graph():
    """x -> CONV_2D(3x3, SAME) -> hidden -> RELU -> y."""
    w, b = rand(4, 3, 3, 2), rand(4)
    tensors = [Tensor("x", (1, 6, 6, 2)), Tensor("w", w.shape, data=w), Tensor("b", (4,), data=b),
               Tensor("hidden", (1, 6, 6, 4)), Tensor("y", (1, 6, 6, 4))]
    ops = [Op("CONV_2D", ["x", "w", "b"], ["hidden"], dict(padding="SAME", stride_h=1, stride_w=1)),
           Op("RELU", ["hidden"], ["y"])]
    return Graph(tensors, ops, ["x"], ["y"])


DETAIL_KEYS = {"name", "index", "shape", "shape_signature", "dtype", "quantization",
               "quantization_parameters", "sparsity_parameters"}


def test_details_have_litert_keys_and_types():
    interpreter = Interpreter.from_graph(two_op_graph())
    interpreter.allocate_tensors()
    (detail,) = interpreter.get_input_details()
    assert set(detail) == DETAIL_KEYS
    assert detail["index"] == 0 and detail["name"] == "x" and detail["dtype"] is np.float32
    assert detail["shape"].dtype == np.int32 and detail["shape"].tolist() == [1, 6, 6, 2]
    assert detail["quantization"] == (0.0, 0)
    assert set(detail["quantization_parameters"]) >= {"scales", "zero_points", "quantized_dimension"}
    assert interpreter.get_output_details()[0]["index"] == 4
    assert [d["index"] for d in interpreter.get_tensor_details()] == [0, 1, 2, 3, 4]
    assert interpreter.get_signature_list() == {"serving_default": {"inputs": ["x"], "outputs": ["y"]}}


def test_invoke_before_allocate_tensors_raises_runtime_error():
    with pytest.raises(RuntimeError, match="not ready"):
        Interpreter.from_graph(two_op_graph()).invoke()


def test_set_tensor_before_allocate_tensors_raises():
    with pytest.raises(ValueError, match="allocate_tensors"):
        Interpreter.from_graph(two_op_graph()).set_tensor(0, rand(1, 6, 6, 2))


def test_set_tensor_rejects_wrong_dtype_and_shape():
    interpreter = Interpreter.from_graph(two_op_graph())
    interpreter.allocate_tensors()
    with pytest.raises(ValueError, match="Got value of type FLOAT64 but expected type FLOAT32"):
        interpreter.set_tensor(0, np.zeros((1, 6, 6, 2)))
    with pytest.raises(ValueError, match="Dimension mismatch. Got 3 but expected 4"):
        interpreter.set_tensor(0, rand(6, 6, 2))
    with pytest.raises(ValueError, match="Got 5 but expected 6 for dimension 1"):
        interpreter.set_tensor(0, rand(1, 5, 6, 2))


def test_bad_tensor_index_raises_value_error():
    interpreter = Interpreter.from_graph(two_op_graph())
    interpreter.allocate_tensors()
    with pytest.raises(ValueError, match="Invalid tensor index 99"):
        interpreter.get_tensor(99)


def test_missing_kernels_are_listed_together():
    graph = Graph([Tensor("x", (1, 4)), Tensor("y", (1, 4)), Tensor("z", (1, 4))],
                  [Op("NO_SUCH_OP", ["x"], ["y"]), Op("ALSO_MISSING", ["y"], ["z"])], ["x"], ["z"])
    with pytest.raises(ModelError, match="ALSO_MISSING, NO_SUCH_OP"):
        Interpreter.from_graph(graph).allocate_tensors()


def test_get_tensor_returns_a_copy_of_the_output():
    interpreter = Interpreter.from_graph(two_op_graph())
    interpreter.allocate_tensors()
    interpreter.set_tensor(0, rand(1, 6, 6, 2))
    interpreter.invoke()
    first = interpreter.get_tensor(4)
    first[...] = -1
    assert (interpreter.get_tensor(4) >= 0).all()


def test_preserve_all_tensors_keeps_intermediates():
    x = rand(1, 6, 6, 2)
    interpreter = Interpreter.from_graph(two_op_graph(), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(0, x)
    interpreter.invoke()
    hidden = interpreter.get_tensor(3)
    assert hidden.min() < 0
    assert_close(interpreter.get_tensor(4), np.maximum(hidden, 0), atol=0, rtol=0)


def test_intermediates_are_released_without_preserve():
    interpreter = Interpreter.from_graph(two_op_graph())
    interpreter.allocate_tensors()
    interpreter.invoke()
    with pytest.raises(ValueError, match="experimental_preserve_all_tensors"):
        interpreter.get_tensor(3)


def test_run_returns_outputs_and_requested_tensors():
    interpreter = Interpreter.from_graph(two_op_graph())
    x = rand(1, 6, 6, 2)
    results = interpreter.run({"x": x}, keep={"hidden"})
    assert list(results) == ["y", "hidden"]
    assert_close(results["y"], np.maximum(results["hidden"], 0), atol=0, rtol=0)
    assert set(interpreter.run([x], keep="all")) == {"x", "hidden", "y"}


def test_run_accepts_a_batch_on_the_first_axis():
    interpreter = Interpreter.from_graph(two_op_graph())
    batch = rand(5, 6, 6, 2)
    batched = interpreter.run({"x": batch})["y"]
    one_by_one = np.concatenate([interpreter.run({"x": batch[i:i + 1]})["y"] for i in range(5)])
    assert batched.shape == (5, 6, 6, 4)
    assert_close(batched, one_by_one, atol=1e-6, rtol=1e-6)


def test_batched_run_through_flatten_reshape_and_fully_connected():
    w, fc = rand(4, 3, 3, 2), rand(3, 64)
    tensors = [Tensor("x", (1, 4, 4, 2)), Tensor("w", w.shape, data=w), Tensor("c", (1, 4, 4, 4)),
               Tensor("shape", (2,), np.int32, np.array([1, 64], np.int32)), Tensor("flat", (1, 64)),
               Tensor("fc", fc.shape, data=fc), Tensor("y", (1, 3))]
    ops = [Op("CONV_2D", ["x", "w", ""], ["c"], dict(padding="SAME", stride_h=1, stride_w=1)),
           Op("RESHAPE", ["c", "shape"], ["flat"]), Op("FULLY_CONNECTED", ["flat", "fc", ""], ["y"])]
    interpreter = Interpreter.from_graph(Graph(tensors, ops, ["x"], ["y"]))
    batch = rand(3, 4, 4, 2)
    batched = interpreter.run([batch])["y"]
    assert batched.shape == (3, 3)
    assert_close(batched[2:], interpreter.run([batch[2:]])["y"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("quantized", [False, True])
def test_batched_run_joins_a_constant_class_token_to_each_sample(quantized):
    """ViT's class token is a constant of batch 1 put before each sample's patch embeddings; a batch
    of samples (as calibration runs) must get it once per sample."""
    token = np.arange(4, dtype=np.float32).reshape(1, 1, 4)
    dtype = np.int8 if quantized else np.float32
    quant = QuantParams(scale=np.array([0.5], np.float32), zero_point=np.array([1], np.int64)) if quantized else None
    tensors = [Tensor("patches", (1, 3, 4), dtype, quant=quant),
               Tensor("token", (1, 1, 4), dtype, data=token.astype(dtype), quant=quant),
               Tensor("tokens", (1, 4, 4), dtype, quant=quant)]
    ops = [Op("CONCATENATION", ["token", "patches"], ["tokens"], {"axis": 1})]
    interpreter = Interpreter.from_graph(Graph(tensors, ops, ["patches"], ["tokens"]))
    batch = (rand(5, 3, 4) * 10).astype(dtype)
    batched = interpreter.run([batch])["tokens"]
    assert batched.shape == (5, 4, 4)
    for sample in range(5):
        assert np.array_equal(batched[sample:sample + 1], interpreter.run([batch[sample:sample + 1]])["tokens"])


def test_batched_run_refuses_to_join_a_computed_batch_1_input_to_a_larger_batch():
    # Only constants are the same for every sample; a computed input with batch 1 next to a batch
    # of 3 means the graph folded the batch away, and repeating one sample would be wrong.
    tensors = [Tensor("a", (1, 2)), Tensor("b", (1, 2)), Tensor("b2", (1, 2)), Tensor("y", (1, 4))]
    ops = [Op("RELU", ["b"], ["b2"]), Op("CONCATENATION", ["a", "b2"], ["y"], {"axis": 1})]
    interpreter = Interpreter.from_graph(Graph(tensors, ops, ["a", "b"], ["y"]))
    with pytest.raises(ValueError):
        interpreter.run([rand(3, 2), rand(1, 2)])


def test_resize_tensor_input_is_not_implemented():
    with pytest.raises(NotImplementedError, match="static shapes"):
        Interpreter.from_graph(two_op_graph()).resize_tensor_input(0, [2, 6, 6, 2])


# -- against LiteRT on the file we write --------------------------------------------------------

def _conv_case(padding, stride, dilation=1, k=3, activation="NONE", in_c=5):
    return ("CONV_2D", [("x", rand(1, 11, 10, in_c), False), ("w", rand(6, k, k, in_c), True), ("b", rand(6), True)],
            dict(padding=padding, stride_h=stride, stride_w=stride, dilation_h_factor=dilation,
                 dilation_w_factor=dilation, fused_activation_function=activation))


def _depthwise_case(multiplier, padding, stride):
    return ("DEPTHWISE_CONV_2D", [("x", rand(1, 9, 10, 4), False), ("w", rand(1, 3, 3, 4 * multiplier), True),
                                  ("b", rand(4 * multiplier), True)],
            dict(padding=padding, stride_h=stride, stride_w=stride, depth_multiplier=multiplier))


def _pool_case(op_type, padding, k, stride):
    return (op_type, [("x", rand(1, 9, 10, 3), False)],
            dict(padding=padding, stride_h=stride, stride_w=stride, filter_height=k, filter_width=k))


def _unary_case(op_type, low=-6.0, high=6.0, **options):
    return (op_type, [("x", rand(2, 40, low=low, high=high), False)], options)


def _binary_case(op_type, **options):
    return (op_type, [("a", rand(1, 4, 5, 6), False), ("b", rand(1, 1, 5, 1, low=0.5, high=2), False)], options)


def _resize_case(op_type, **options):
    return (op_type, [("x", rand(1, 5, 7, 3), False), ("size", np.array([11, 9], np.int32), True)], options)


def _int32(values):
    return np.array(values, np.int32)


LITERT_CASES = {
    "conv_same_stride1": _conv_case("SAME", 1),
    "conv_valid_stride2": _conv_case("VALID", 2),
    "conv_same_stride2_k4": _conv_case("SAME", 2, k=4),
    "conv_same_dilation2": _conv_case("SAME", 1, dilation=2),
    "conv_1x1_relu6": _conv_case("VALID", 1, k=1, activation="RELU6"),
    "depthwise_m1_same_stride2": _depthwise_case(1, "SAME", 2),
    "depthwise_m2_valid_stride1": _depthwise_case(2, "VALID", 1),
    "transpose_conv_same_stride2": ("TRANSPOSE_CONV", [("shape", _int32([1, 12, 14, 4]), True),
                                                       ("w", rand(4, 3, 3, 5), True), ("x", rand(1, 6, 7, 5), False),
                                                       ("b", rand(4), True)],
                                    dict(padding="SAME", stride_h=2, stride_w=2)),
    "transpose_conv_valid_stride2": ("TRANSPOSE_CONV", [("shape", _int32([1, 13, 15, 4]), True),
                                                        ("w", rand(4, 3, 3, 5), True), ("x", rand(1, 6, 7, 5), False),
                                                        ("", None, True)],
                                     dict(padding="VALID", stride_h=2, stride_w=2)),
    "fully_connected": ("FULLY_CONNECTED", [("x", rand(3, 20), False), ("w", rand(7, 20), True), ("b", rand(7), True)],
                        dict(fused_activation_function="RELU")),
    "fully_connected_keep_num_dims": ("FULLY_CONNECTED", [("x", rand(2, 3, 20), False), ("w", rand(7, 20), True),
                                                          ("", None, True)], dict(keep_num_dims=True)),
    "batch_matmul_adj_y": ("BATCH_MATMUL", [("a", rand(2, 4, 5), False), ("b", rand(2, 6, 5), False)],
                           dict(adj_x=False, adj_y=True)),
    "add_relu": _binary_case("ADD", fused_activation_function="RELU"),
    "sub": _binary_case("SUB"),
    "mul_relu6": _binary_case("MUL", fused_activation_function="RELU6"),
    "div": _binary_case("DIV"),
    "maximum": _binary_case("MAXIMUM"),
    "minimum": _binary_case("MINIMUM"),
    "squared_difference": _binary_case("SQUARED_DIFFERENCE"),
    "relu": _unary_case("RELU"),
    "relu6": _unary_case("RELU6", low=-3, high=9),
    "relu_n1_to_1": _unary_case("RELU_N1_TO_1"),
    "leaky_relu": _unary_case("LEAKY_RELU", alpha=0.2),
    "prelu": ("PRELU", [("x", rand(1, 3, 4, 5, low=-4, high=4), False), ("alpha", rand(5), True)], {}),
    "logistic": _unary_case("LOGISTIC"),
    "tanh": _unary_case("TANH"),
    "hard_swish": _unary_case("HARD_SWISH"),
    "gelu": _unary_case("GELU", approximate=False),
    "gelu_tanh": _unary_case("GELU", approximate=True),
    "exp": _unary_case("EXP"),
    "log": _unary_case("LOG", low=0.01, high=10),
    "sqrt": _unary_case("SQRT", low=0.01, high=10),
    "rsqrt": _unary_case("RSQRT", low=0.01, high=10),
    "abs": _unary_case("ABS"),
    "neg": _unary_case("NEG"),
    "max_pool_same": _pool_case("MAX_POOL_2D", "SAME", 3, 2),
    "max_pool_valid": _pool_case("MAX_POOL_2D", "VALID", 2, 2),
    "average_pool_same": _pool_case("AVERAGE_POOL_2D", "SAME", 3, 2),
    "average_pool_valid": _pool_case("AVERAGE_POOL_2D", "VALID", 3, 1),
    "lrn": ("LOCAL_RESPONSE_NORMALIZATION", [("x", rand(1, 4, 5, 12, low=-3, high=3), False)],
            dict(radius=2, bias=1.5, alpha=0.01, beta=0.75)),
    "softmax_beta": ("SOFTMAX", [("x", rand(2, 10, low=-5, high=5), False)], dict(beta=0.7)),
    "mean_keep_dims": ("MEAN", [("x", rand(1, 6, 7, 4), False), ("axes", _int32([1, 2]), True)], dict(keep_dims=True)),
    "sum": ("SUM", [("x", rand(2, 6, 7, 4), False), ("axes", _int32([-1]), True)], dict(keep_dims=False)),
    "reduce_max": ("REDUCE_MAX", [("x", rand(2, 6, 7, 4), False), ("axes", _int32([1]), True)], dict(keep_dims=False)),
    "resize_bilinear": _resize_case("RESIZE_BILINEAR"),
    "resize_bilinear_align_corners": _resize_case("RESIZE_BILINEAR", align_corners=True),
    "resize_bilinear_half_pixel": _resize_case("RESIZE_BILINEAR", half_pixel_centers=True),
    "resize_nearest": _resize_case("RESIZE_NEAREST_NEIGHBOR"),
    "resize_nearest_align_corners": _resize_case("RESIZE_NEAREST_NEIGHBOR", align_corners=True),
    "resize_nearest_half_pixel": _resize_case("RESIZE_NEAREST_NEIGHBOR", half_pixel_centers=True),
    "reshape": ("RESHAPE", [("x", rand(1, 4, 3, 2), False), ("shape", _int32([1, -1]), True)], {}),
    "transpose": ("TRANSPOSE", [("x", rand(1, 4, 3, 2), False), ("perm", _int32([0, 3, 1, 2]), True)], {}),
    "concatenation": ("CONCATENATION", [("a", rand(1, 4, 3, 2), False), ("b", rand(1, 4, 3, 5), False)],
                      dict(axis=-1, fused_activation_function="NONE")),
    "pad": ("PAD", [("x", rand(1, 4, 3, 2), False), ("p", _int32([[0, 0], [1, 2], [2, 1], [0, 0]]), True)], {}),
    "padv2": ("PADV2", [("x", rand(1, 4, 3, 2), False), ("p", _int32([[0, 0], [1, 2], [2, 1], [0, 0]]), True),
                        ("v", np.array([-2.5], np.float32), True)], {}),
    "squeeze": ("SQUEEZE", [("x", rand(1, 4, 1, 2), False)], dict(squeeze_dims=[2])),
    "expand_dims": ("EXPAND_DIMS", [("x", rand(1, 4, 2), False), ("axis", _int32([1]), True)], {}),
    "strided_slice": ("STRIDED_SLICE", [("x", rand(1, 8, 7, 3), False), ("begin", _int32([0, 1, -1, 0]), True),
                                        ("end", _int32([1, 7, -8, 2]), True), ("strides", _int32([1, 2, -2, 1]), True)],
                      dict(begin_mask=0, end_mask=0b1000, shrink_axis_mask=0)),
    "strided_slice_shrink": ("STRIDED_SLICE", [("x", rand(2, 8, 3), False), ("begin", _int32([0, 2, 1]), True),
                                               ("end", _int32([2, 3, 3]), True), ("strides", _int32([1, 1, 1]), True)],
                             dict(shrink_axis_mask=0b010)),
    "slice": ("SLICE", [("x", rand(1, 8, 7, 3), False), ("begin", _int32([0, 2, 1, 0]), True),
                        ("size", _int32([-1, 3, -1, 2]), True)], {}),
    "gather": ("GATHER", [("x", rand(5, 6), False), ("i", _int32([4, 0, 2]), True)], dict(axis=0, batch_dims=0)),
    "gather_axis1": ("GATHER", [("x", rand(2, 6, 3), False), ("i", _int32([[1, 5], [0, 0]]), True)],
                     dict(axis=1, batch_dims=0)),
    "split": ("SPLIT", [("axis", _int32([-1]), True), ("x", rand(1, 3, 6), False)], dict(num_splits=3)),
    "split_v": ("SPLIT_V", [("x", rand(1, 7, 2), False), ("s", _int32([3, -1, 2]), True), ("axis", _int32([1]), True)],
                dict(num_splits=3)),
    "tile": ("TILE", [("x", rand(1, 2, 3), False), ("m", _int32([2, 1, 3]), True)], {}),
    "pack": ("PACK", [("a", rand(2, 3), False), ("b", rand(2, 3), False)], dict(axis=1, values_count=2)),
    "unpack": ("UNPACK", [("x", rand(3, 2, 4), False)], dict(num=2, axis=1)),
    "floor": _unary_case("FLOOR"),
    "ceil": _unary_case("CEIL"),
    "round": ("ROUND", [("x", np.array([[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, -0.6]], np.float32), False)], {}),
    "sin": _unary_case("SIN"),
    "cos": _unary_case("COS"),
    "sign": _unary_case("SIGN"),
    "elu": _unary_case("ELU"),
    "square": _unary_case("SQUARE"),
    "pow": ("POW", [("a", rand(3, 4, low=0.1, high=3), False), ("b", rand(3, 4, low=-2, high=2), False)], {}),
    "mirror_pad_reflect": ("MIRROR_PAD", [("x", rand(1, 4, 5, 2), False),
                                          ("p", _int32([[0, 0], [1, 2], [2, 1], [0, 0]]), True)], dict(mode="REFLECT")),
    "depth_to_space": ("DEPTH_TO_SPACE", [("x", rand(1, 3, 4, 8), False)], dict(block_size=2)),
    "space_to_depth": ("SPACE_TO_DEPTH", [("x", rand(1, 4, 6, 3), False)], dict(block_size=2)),
    "broadcast_to": ("BROADCAST_TO", [("x", rand(1, 1, 3), False), ("s", _int32([2, 4, 3]), True)], {}),
    "add_int32": ("ADD", [("a", np.array([[1, 2, 3]], np.int32), False), ("b", _int32([5]), True)], {}),
}


def _graph_for_litert(op_type, inputs, options):
    """The single-op graph with its output shapes filled in from one run of our runtime."""
    n_outputs = {"SPLIT": options.get("num_splits"), "SPLIT_V": options.get("num_splits"),
                 "UNPACK": options.get("num")}.get(op_type) or 1
    probe = single_op_graph(op_type, inputs, [()] * n_outputs, options)
    feeds = {name: value for name, value, is_constant in inputs if name and not is_constant}
    results = run_graph(probe, feeds)
    return single_op_graph(op_type, inputs, [results[name].shape for name in probe.outputs], options), feeds


def _litert(content):
    pytest.importorskip("ai_edge_litert")
    from edgeq.testing import litert
    interpreter = litert.Interpreter(model_content=content)
    interpreter.allocate_tensors()
    return interpreter


def _invoke(interpreter, feeds, graph):
    index = {name: i for i, name in enumerate(graph.tensors)}
    for name, value in feeds.items():
        interpreter.set_tensor(index[name], value)
    interpreter.invoke()
    return [interpreter.get_tensor(index[name]) for name in graph.outputs]


@pytest.mark.parametrize("case", list(LITERT_CASES))
def test_kernel_matches_litert_on_written_file(case):
    write_tflite = pytest.importorskip("edgeq.runtime.tflite_format.writer").write_tflite
    graph, feeds = _graph_for_litert(*LITERT_CASES[case])
    content = write_tflite(graph)
    expected = _invoke(_litert(content), feeds, graph)
    ours = Interpreter(model_content=content)
    ours.allocate_tensors()
    actual = _invoke(ours, feeds, graph)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype
        scale = max(float(np.abs(e).max()), 1e-30)
        assert float(np.abs(a - e).max()) / scale <= 1e-5


def test_details_equal_litert_details_on_written_file():
    write_tflite = pytest.importorskip("edgeq.runtime.tflite_format.writer").write_tflite
    content = write_tflite(two_op_graph())
    reference = _litert(content)
    ours = Interpreter(model_content=content)
    ours.allocate_tensors()
    for get in ("get_input_details", "get_output_details", "get_tensor_details"):
        for mine, theirs in zip(getattr(ours, get)(), getattr(reference, get)()):
            assert set(mine) == set(theirs)
            for key, value in theirs.items():
                if isinstance(value, np.ndarray):
                    assert mine[key].dtype == value.dtype and np.array_equal(mine[key], value), key
                elif isinstance(value, dict):
                    assert set(mine[key]) == set(value)
                    for sub_key, sub_value in value.items():
                        assert np.array_equal(mine[key][sub_key], sub_value), (key, sub_key)
                else:
                    assert mine[key] == value, key
    assert ours.get_signature_list() == reference.get_signature_list()


def test_model_path_runs_the_same_as_model_content(tmp_path):
    write_tflite = pytest.importorskip("edgeq.runtime.tflite_format.writer").write_tflite
    graph = two_op_graph()
    path = tmp_path / "model.tflite"
    path.write_bytes(write_tflite(graph))
    x = rand(1, 6, 6, 2)
    from_path = Interpreter(model_path=str(path))
    from_path.allocate_tensors()
    assert_close(_invoke(from_path, {"x": x}, graph)[0], Interpreter.from_graph(graph).run({"x": x})["y"],
                 atol=0, rtol=0)


def test_conv_2d_runs_large_batches_in_chunks(monkeypatch):
    from edgeq.runtime.kernels import conv

    monkeypatch.setattr(conv, "IM2COL_BUDGET_BYTES", 1)  # one sample per chunk
    x, w = rand(3, 7, 7, 2), rand(4, 3, 3, 2)
    inputs = [("x", x, False), ("w", w, True), ("", None, True)]
    options = dict(padding="SAME", stride_h=2, stride_w=2)
    batched = run_single("CONV_2D", inputs, [(1, 4, 4, 4)], options)
    one = run_single("CONV_2D", [("x", x[1:2], False)] + inputs[1:], [(1, 4, 4, 4)], options)
    assert batched.shape == (3, 4, 4, 4)
    assert_close(batched[1:2], one, atol=1e-6, rtol=1e-6)


# -- ops the ONNX importer emits beyond the core set ---------------------------------------------

@pytest.mark.parametrize("op_type,onnx_type", [("FLOOR", "Floor"), ("CEIL", "Ceil"), ("ROUND", "Round"),
                                               ("SIN", "Sin"), ("COS", "Cos"), ("SIGN", "Sign"), ("ELU", "Elu")])
def test_more_unary_ops_match_onnxruntime(op_type, onnx_type):
    x = np.concatenate([rand(2, 30, low=-4, high=4), np.array([[-2.5, -0.5, 0.5, 1.5, 2.5, 0.0] * 5] * 2, np.float32)])
    assert_close(run_single(op_type, [("x", x, False)], [x.shape]), run_onnx(onnx_type, {"x": x}), rtol=2e-6, atol=1e-7)


def test_pow_matches_onnxruntime():
    a, b = rand(3, 4, low=0.1, high=3), rand(4, low=-2, high=2)
    assert_close(run_single("POW", [("a", a, False), ("b", b, False)], [(3, 4)]), run_onnx("Pow", {"a": a, "b": b}),
                 rtol=2e-6)


@pytest.mark.parametrize("mode", ["REFLECT", "SYMMETRIC"])
def test_mirror_pad_modes(mode):
    x = rand(1, 4, 5, 2)
    paddings = np.array([[0, 0], [1, 2], [2, 1], [0, 0]], np.int32)
    expected = np.pad(x, paddings.tolist(), mode=mode.lower())
    actual = run_single("MIRROR_PAD", [("x", x, False), ("p", paddings, True)], [expected.shape], {"mode": mode})
    assert_close(actual, expected, atol=0, rtol=0)


def test_depth_to_space_and_back_match_onnxruntime():
    x = rand(1, 8, 3, 4)
    expected = nhwc(run_onnx("DepthToSpace", {"x": x}, {"blocksize": 2, "mode": "DCR"}))
    actual = run_single("DEPTH_TO_SPACE", [("x", nhwc(x), False)], [expected.shape], {"block_size": 2})
    assert_close(actual, expected, atol=0, rtol=0)
    back = run_single("SPACE_TO_DEPTH", [("x", actual, False)], [(1, 3, 4, 8)], {"block_size": 2})
    assert_close(back, nhwc(x), atol=0, rtol=0)


def test_broadcast_to_expands_to_shape():
    x = rand(1, 1, 3)
    actual = run_single("BROADCAST_TO", [("x", x, False), ("s", np.array([1, 4, 3], np.int32), True)], [(1, 4, 3)])
    assert_close(actual, np.broadcast_to(x, (1, 4, 3)), atol=0, rtol=0)


def test_num_threads_is_validated_and_caps_blas_while_running():
    with pytest.raises(ValueError, match="num_threads should >= 1"):
        Interpreter(model_path=two_op_graph(), num_threads=0)
    x = rand(1, 6, 6, 2)
    capped = Interpreter.from_graph(two_op_graph(), num_threads=1)
    graph = capped.graph
    assert_close(capped.run({"x": x})["y"], Interpreter.from_graph(graph).run({"x": x})["y"], atol=0, rtol=0)


def test_run_after_invoke_leaves_what_get_tensor_returns():
    # Kernels reuse their output buffers; invoke's outputs must not be the buffers run() writes.
    w = rand(3, 3, 3, 2)
    tensors = [Tensor("x", (1, 5, 5, 2)), Tensor("w", w.shape, data=w), Tensor("y", (1, 5, 5, 3))]
    ops = [Op("CONV_2D", ["x", "w", ""], ["y"], dict(padding="SAME", stride_h=1, stride_w=1))]
    interpreter = Interpreter.from_graph(Graph(tensors, ops, ["x"], ["y"]))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], rand(1, 5, 5, 2))
    interpreter.invoke()
    output = interpreter.get_output_details()[0]["index"]
    before = interpreter.get_tensor(output).copy()
    interpreter.run([rand(1, 5, 5, 2)])
    assert np.array_equal(interpreter.get_tensor(output), before)

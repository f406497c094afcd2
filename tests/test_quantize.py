"""Post-training quantization: the int8 spec's rules, and LiteRT loading and running what we make."""
import numpy as np
import pytest

from edgeq.converter.calibrate import calibrate
from edgeq.converter.quantize import (
    RULES,
    choose_activation_params,
    quantize_dynamic,
    quantize_float16,
    quantize_int8,
)
from edgeq.runtime.tflite_format.writer import write_tflite
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph, ModelError, Op, QuantParams, Tensor

pytest.importorskip("ai_edge_litert")
from edgeq.testing import litert  # noqa: E402

CONV = {"padding": "SAME", "stride_w": 1, "stride_h": 1, "dilation_w_factor": 1, "dilation_h_factor": 1,
        "fused_activation_function": "NONE"}
POOL = {"padding": "VALID", "stride_w": 2, "stride_h": 2, "filter_width": 2, "filter_height": 2,
        "fused_activation_function": "NONE"}


# -- small float graphs ----------------------------------------------------------------------------

class Builder:
    """A float graph built op by op from one NHWC input."""

    def __init__(self, shape=(1, 8, 8, 3), seed=0):
        self.rng = np.random.default_rng(seed)
        self.g = Graph([Tensor("x", shape)], inputs=["x"])
        self.last = "x"

    def const(self, name, shape, scale=1.0):
        return self.g.add_constant(name, (self.rng.normal(size=shape) * scale).astype(np.float32))

    def op(self, op_type, inputs, out_shape, options=None, name=None):
        out = self.g.add_activation(name or op_type.lower(), out_shape)
        self.g.add_op(Op(op_type, inputs, [out], dict(options or {})))
        self.last = out
        return out

    def done(self, *outputs):
        self.g.outputs = list(outputs) or [self.last]
        return self.g


def conv_relu6():
    b = Builder()
    b.op("CONV_2D", ["x", b.const("w", (4, 3, 3, 3), 0.5), b.const("b", (4,))], (1, 8, 8, 4),
         {**CONV, "fused_activation_function": "RELU6"})
    return b.done()


def depthwise():
    b = Builder()
    b.op("DEPTHWISE_CONV_2D", ["x", b.const("w", (1, 3, 3, 3)), b.const("b", (3,))], (1, 8, 8, 3),
         {**CONV, "depth_multiplier": 1, "fused_activation_function": "RELU"})
    return b.done()


def fully_connected():
    b = Builder(shape=(1, 16))
    b.op("FULLY_CONNECTED", ["x", b.const("w", (6, 16), 0.3), b.const("b", (6,))], (1, 6),
         {"fused_activation_function": "NONE"})
    return b.done()


def add_with_constant():
    b = Builder()
    b.op("ADD", ["x", b.const("k", (1, 1, 1, 3))], (1, 8, 8, 3), {"fused_activation_function": "NONE"})
    return b.done()


def pools():
    b = Builder()
    m = b.op("MAX_POOL_2D", ["x"], (1, 4, 4, 3), POOL)
    b.op("AVERAGE_POOL_2D", [m], (1, 2, 2, 3), POOL)
    return b.done()


def mean():
    b = Builder()
    axes = b.g.add_constant("axes", np.array([1, 2], np.int32))
    b.op("MEAN", ["x", axes], (1, 1, 1, 3), {"keep_dims": True})
    return b.done()


def concatenation():
    b = Builder()
    doubled = b.op("MUL", ["x", b.g.add_constant("two", np.full((1,), 2.0, np.float32))], (1, 8, 8, 3),
                   {"fused_activation_function": "NONE"})
    b.op("CONCATENATION", ["x", doubled], (1, 8, 8, 6), {"axis": 3, "fused_activation_function": "NONE"})
    return b.done()


def reshape_softmax():
    b = Builder()
    shape = b.g.add_constant("shape", np.array([1, 192], np.int32))
    r = b.op("RESHAPE", ["x", shape], (1, 192), {"new_shape": [1, 192]})
    b.op("SOFTMAX", [r], (1, 192), {"beta": 1.0})
    return b.done()


def logistic():
    b = Builder()
    b.op("LOGISTIC", ["x"], (1, 8, 8, 3))
    return b.done()


def hard_swish():
    b = Builder()
    b.op("HARD_SWISH", ["x"], (1, 8, 8, 3))
    return b.done()


def pad():
    b = Builder()
    paddings = b.g.add_constant("paddings", np.array([[0, 0], [1, 1], [2, 2], [0, 0]], np.int32))
    b.op("PAD", ["x", paddings], (1, 10, 12, 3))
    return b.done()


def mirror_pad():
    b = Builder()
    paddings = b.g.add_constant("paddings", np.array([[0, 0], [1, 2], [2, 1], [0, 0]], np.int32))
    b.op("MIRROR_PAD", ["x", paddings], (1, 11, 11, 3), {"mode": "REFLECT"})
    return b.done()


GRAPHS = {
    "conv_relu6": conv_relu6,
    "depthwise": depthwise,
    "fully_connected": fully_connected,
    "add": add_with_constant,
    "pools": pools,
    "mean": mean,
    "concatenation": concatenation,
    "reshape_softmax": reshape_softmax,
    "logistic": logistic,
    "hard_swish": hard_swish,
    "pad": pad,
    "mirror_pad": mirror_pad,
}


def samples_for(graph, n=32, seed=1):
    shape = graph[graph.inputs[0]].shape[1:]
    return {graph.inputs[0]: np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)}


def calibrated(graph):
    return calibrate(graph, samples_for(graph), progress=False)


def run_litert(model: bytes, x: np.ndarray, resolver) -> np.ndarray:
    interpreter = litert.Interpreter(model_content=model, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for sample in x:
        interpreter.set_tensor(inp["index"], sample[None].astype(inp["dtype"]))
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"]))
    return np.concatenate(results)


def output_step(q: Graph) -> float:
    """The quantization step of the int8 tensor that feeds the float graph output."""
    producer = q.producers()[q.outputs[0]]
    return float(q[producer.inputs[0]].quant.scale[0])


# -- LiteRT loads, runs and agrees ----------------------------------------------------------------

RESOLVERS = {"reference": litert.OpResolverType.BUILTIN_REF, "default": litert.OpResolverType.AUTO}


@pytest.mark.parametrize("resolver", RESOLVERS)
@pytest.mark.parametrize("name", GRAPHS)
def test_int8_graph_runs_in_litert_close_to_float(name, resolver):
    graph = GRAPHS[name]()
    q = quantize_int8(graph, calibrated(graph))
    assert q.float_ops == []
    x = samples_for(graph, n=4, seed=2)["x"]
    expected = Interpreter.from_graph(graph).run({"x": x})[graph.outputs[0]]
    got = run_litert(write_tflite(q), x, RESOLVERS[resolver])
    # Each quantized op adds at most about a step of error; these graphs are one or two ops deep.
    assert np.max(np.abs(got - expected)) <= 4 * output_step(q) + 1e-6


@pytest.mark.parametrize("io_dtype", ["int8", "uint8"])
def test_integer_io_runs_in_litert(io_dtype):
    graph = conv_relu6()
    q = quantize_int8(graph, calibrated(graph), io_dtype=io_dtype)
    assert q["x"].dtype == np.dtype(io_dtype) and q[q.outputs[0]].dtype == np.dtype(io_dtype)
    x = samples_for(graph, n=3, seed=2)["x"]
    in_q, out_q = q["x"].quant, q[q.outputs[0]].quant
    info = np.iinfo(io_dtype)
    x_int = np.clip(np.round(x / in_q.scale[0]) + in_q.zero_point[0], info.min, info.max).astype(io_dtype)
    got = run_litert(write_tflite(q), x_int, RESOLVERS["reference"])
    real = (got.astype(np.float64) - out_q.zero_point[0]) * out_q.scale[0]
    expected = Interpreter.from_graph(graph).run({"x": x})[graph.outputs[0]]
    assert np.max(np.abs(real - expected)) <= 4 * out_q.scale[0] + 4 * in_q.scale[0]


def test_uint8_io_shifts_the_zero_point_by_128():
    graph = conv_relu6()
    ranges = calibrated(graph)
    as_int8 = quantize_int8(graph, ranges, io_dtype="int8")
    as_uint8 = quantize_int8(graph, ranges, io_dtype="uint8")
    assert as_uint8["x"].quant.scale == as_int8["x"].quant.scale
    assert as_uint8["x"].quant.zero_point[0] == as_int8["x"].quant.zero_point[0] + 128


@pytest.mark.parametrize("resolver", RESOLVERS)
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("name", ["conv_relu6", "depthwise", "fully_connected"])
def test_dynamic_range_graph_runs_in_litert(name, per_channel, resolver):
    graph = GRAPHS[name]()
    q = quantize_dynamic(graph, per_channel=per_channel)
    weights = q[q.ops[0].inputs[1]]
    assert weights.dtype == np.int8 and q["x"].dtype == np.float32
    # LiteRT's hybrid depthwise kernel is only right with per-channel scales.
    assert weights.quant.per_channel == (per_channel or name == "depthwise")
    x = samples_for(graph, n=2, seed=2)["x"]
    expected = Interpreter.from_graph(graph).run({"x": x})[graph.outputs[0]]
    got = run_litert(write_tflite(q), x, RESOLVERS[resolver])
    assert np.allclose(got, expected, atol=0.05 * np.abs(expected).max() + 1e-3)


@pytest.mark.parametrize("name", ["conv_relu6", "fully_connected", "add"])
def test_float16_graph_runs_in_litert(name):
    graph = GRAPHS[name]()
    q = quantize_float16(graph)
    assert all(t.dtype != np.float32 for t in q.tensors.values() if t.is_constant)
    assert q.ops[0].type == "DEQUANTIZE"
    x = samples_for(graph, n=2, seed=2)["x"]
    expected = Interpreter.from_graph(graph).run({"x": x})[graph.outputs[0]]
    got = run_litert(write_tflite(q), x, RESOLVERS["reference"])
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)


# -- the spec's rules -----------------------------------------------------------------------------

def test_conv_weights_are_symmetric_per_output_channel_with_max_127():
    q = quantize_int8(conv_relu6(), calibrated(conv_relu6()))
    w = q["w"]
    assert w.dtype == np.int8 and w.quant.axis == 0 and w.quant.scale.size == 4
    assert np.all(w.quant.zero_point == 0)
    assert np.all(np.abs(w.data.reshape(4, -1)).max(axis=1) == 127)
    assert w.data.min() >= -127


def test_depthwise_weights_are_per_channel_along_axis_3():
    q = quantize_int8(depthwise(), calibrated(depthwise()))
    w = q["w"]
    assert w.quant.axis == 3 and w.quant.scale.size == 3
    assert np.all(np.abs(w.data).max(axis=(0, 1, 2)) == 127)


def test_fully_connected_weights_are_per_output_channel():
    q = quantize_int8(fully_connected(), calibrated(fully_connected()))
    assert q["w"].quant.axis == 0 and q["w"].quant.scale.size == 6


def test_bias_is_int32_with_scale_input_times_weight_scale():
    graph = conv_relu6()
    q = quantize_int8(graph, calibrated(graph))
    conv = next(op for op in q.ops if op.type == "CONV_2D")
    input_scale = q[conv.inputs[0]].quant.scale[0]
    bias = q["b"]
    assert bias.dtype == np.int32 and np.all(bias.quant.zero_point == 0)
    np.testing.assert_allclose(bias.quant.scale, input_scale * q["w"].quant.scale, rtol=1e-6)
    np.testing.assert_allclose(bias.data * bias.quant.scale, graph["b"].data, atol=bias.quant.scale.max())


@pytest.mark.parametrize("op_type, scale, zero_point", [
    ("SOFTMAX", 1 / 256, -128), ("LOGISTIC", 1 / 256, -128), ("TANH", 1 / 128, 0)])
def test_fixed_output_params(op_type, scale, zero_point):
    b = Builder()
    b.op(op_type, ["x"], (1, 8, 8, 3), {"beta": 1.0} if op_type == "SOFTMAX" else {})
    graph = b.done()
    q = quantize_int8(graph, {"x": (-3.0, 3.0), b.last: (0.0, 0.5)}, io_dtype="int8")
    assert q[b.last].quant == QuantParams(scale, zero_point)


def test_shared_ops_keep_input_params():
    graph = pools()
    ranges = calibrated(graph)
    q = quantize_int8(graph, ranges, io_dtype="int8")
    assert q["x"].quant == q["max_pool_2d"].quant == q["average_pool_2d"].quant


def test_concatenation_unions_the_ranges_of_its_inputs():
    graph = concatenation()
    ranges = {"x": (-1.0, 1.0), "mul": (-2.0, 2.0), "concatenation": (-2.0, 2.0)}
    q = quantize_int8(graph, ranges, io_dtype="int8")
    expected = QuantParams(*choose_activation_params(-2.0, 2.0))
    assert q["x"].quant == q["mul"].quant == q["concatenation"].quant == expected


def test_fused_relu6_narrows_the_output_range():
    graph = conv_relu6()
    ranges = dict(calibrated(graph), conv_2d=(-5.0, 9.0))
    q = quantize_int8(graph, ranges, io_dtype="int8")
    assert q["conv_2d"].quant == QuantParams(6.0 / 255, -128)


def test_activation_range_is_nudged_to_contain_zero():
    assert choose_activation_params(2.0, 4.0) == (pytest.approx(4.0 / 255), -128)
    assert choose_activation_params(-4.0, -2.0) == (pytest.approx(4.0 / 255), 127)
    scale, zero_point = choose_activation_params(-1.0, 3.0)
    assert zero_point == round(-128 + 1.0 / scale)


def test_ops_without_int8_rule_stay_float_between_dequantize_and_quantize():
    b = Builder()
    e = b.op("SIN", ["x"], (1, 8, 8, 3))
    b.op("RELU", [e], (1, 8, 8, 3))
    graph = b.done()
    assert "SIN" not in RULES
    q = quantize_int8(graph, calibrated(graph))
    assert [op.type for op in q.ops] == ["SIN", "QUANTIZE", "RELU", "DEQUANTIZE"]
    assert q.float_ops == ["SIN (no int8 kernel rule)"]
    x = samples_for(graph, n=2)["x"]
    got = run_litert(write_tflite(q), x, RESOLVERS["reference"])
    assert np.allclose(got, np.maximum(np.sin(x), 0), atol=2 * output_step(q))


def test_the_ops_left_in_float_survive_a_copy_of_the_quantized_graph():
    b = Builder()
    b.op("SIN", ["x"], (1, 8, 8, 3))
    graph = b.done()
    assert graph.float_ops == []
    assert quantize_int8(graph, calibrated(graph)).copy().float_ops == ["SIN (no int8 kernel rule)"]


def test_float_op_between_int8_ops_gets_dequantize_and_quantize():
    b = Builder()
    r = b.op("RELU", ["x"], (1, 8, 8, 3))
    e = b.op("SIN", [r], (1, 8, 8, 3))
    b.op("RELU6", [e], (1, 8, 8, 3))
    graph = b.done()
    q = quantize_int8(graph, calibrated(graph))
    assert [op.type for op in q.ops] == ["QUANTIZE", "RELU", "DEQUANTIZE", "SIN", "QUANTIZE", "RELU6", "DEQUANTIZE"]


def test_missing_range_is_a_clear_error():
    graph = conv_relu6()
    with pytest.raises(ModelError, match="conv_2d"):
        quantize_int8(graph, {"x": (-1.0, 1.0)})


def test_the_float_graph_is_left_untouched():
    graph = conv_relu6()
    before = graph.copy()
    quantize_int8(graph, calibrated(graph))
    assert graph["w"].dtype == np.float32 and np.array_equal(graph["w"].data, before["w"].data)
    assert [op.type for op in graph.ops] == [op.type for op in before.ops]


def residual_network():
    b = Builder()
    c = b.op("CONV_2D", ["x", b.const("w1", (8, 3, 3, 3), 0.4), b.const("b1", (8,))], (1, 8, 8, 8),
             {**CONV, "fused_activation_function": "RELU6"}, name="conv")
    d = b.op("DEPTHWISE_CONV_2D", [c, b.const("w2", (1, 3, 3, 8), 0.3), b.const("b2", (8,))], (1, 8, 8, 8),
             {**CONV, "depth_multiplier": 1, "fused_activation_function": "NONE"}, name="dw")
    s = b.op("ADD", [c, d], (1, 8, 8, 8), {"fused_activation_function": "RELU"}, name="residual")
    h = b.op("HARD_SWISH", [s], (1, 8, 8, 8), name="hswish")
    t = b.op("TANH", [s], (1, 8, 8, 8), name="tanh")
    cat = b.op("CONCATENATION", [h, t], (1, 8, 8, 16), {"axis": 3, "fused_activation_function": "NONE"})
    m = b.op("MEAN", [cat, b.g.add_constant("axes", np.array([1, 2], np.int32))], (1, 16),
             {"keep_dims": False})
    f = b.op("FULLY_CONNECTED", [m, b.const("w3", (5, 16), 0.5), b.const("b3", (5,))], (1, 5),
             {"fused_activation_function": "NONE"})
    b.op("SOFTMAX", [f], (1, 5), {"beta": 1.0})
    return b.done()


@pytest.mark.parametrize("resolver", RESOLVERS)
def test_residual_network_runs_in_litert_close_to_float(resolver):
    graph = residual_network()
    q = quantize_int8(graph, calibrate(graph, samples_for(graph, n=64), progress=False))
    assert q.float_ops == []
    # TANH's fixed params pin one concat input; the concat requantizes it to the shared scale.
    concat = next(op for op in q.ops if op.type == "CONCATENATION")
    assert len({q[n].quant.scale[0] for n in concat.inputs + concat.outputs}) == 1
    x = samples_for(graph, n=8, seed=3)["x"]
    expected = Interpreter.from_graph(graph).run({"x": x})[graph.outputs[0]]
    got = run_litert(write_tflite(q), x, RESOLVERS[resolver])
    assert np.max(np.abs(got - expected)) < 0.05


def test_per_tensor_fully_connected_also_runs_in_litert(monkeypatch):
    import edgeq.converter.quantize as quantize

    monkeypatch.setattr(quantize, "PER_CHANNEL_FULLY_CONNECTED", False)
    graph = fully_connected()
    q = quantize_int8(graph, calibrated(graph))
    assert not q["w"].quant.per_channel and q["b"].quant.scale.size == 1
    x = samples_for(graph, n=4, seed=2)["x"]
    expected = Interpreter.from_graph(graph).run({"x": x})[graph.outputs[0]]
    got = run_litert(write_tflite(q), x, RESOLVERS["reference"])
    assert np.max(np.abs(got - expected)) <= 4 * output_step(q)


def test_max_pool_padding_keeps_the_data_range_and_runs_on_litert_default_kernels(tmp_path):
    """ResNet's MaxPool (3x3, stride 2, pads 1) becomes PADV2 with the lowest float + VALID pool;
    the fill must not stretch the int8 range (XNNPACK refused the model when it did)."""
    import onnx
    from onnx import TensorProto, helper

    from edgeq.converter.api import convert
    from edgeq.testing.referees import run_litert

    rng = np.random.default_rng(0)
    weights = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], rng.standard_normal(108).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "m.onnx"))
    samples = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "calib.npy", samples)
    result = convert(tmp_path / "m.onnx", quantize="int8", calibration=tmp_path / "calib.npy")
    pad = next(op for op in result.graph.ops if op.type == "PADV2")
    assert result.graph[pad.inputs[0]].quant == result.graph[pad.outputs[0]].quant
    assert result.graph[pad.outputs[0]].quant.scale[0] < 1.0
    assert result.graph[pad.inputs[2]].data.reshape(-1)[0] == -128
    x = samples[:1].transpose(0, 2, 3, 1)
    (default,) = run_litert(result.content, [x])
    (reference,) = run_litert(result.content, [x], reference_kernels=True)
    assert np.max(np.abs(default - reference)) <= 2 * result.graph[pad.outputs[0]].quant.scale[0]

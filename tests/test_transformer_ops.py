"""Transformer-style ONNX ops: LayerNormalization, GELU written with Erf or as its tanh approximation,
Where, IsNaN, Einsum, and MatMul of two activations. Float: our runtime and LiteRT against onnxruntime.
int8: every integer tensor of our runtime equals LiteRT's reference kernels (BUILTIN_REF)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.converter.calibrate import calibrate
from edgeq.converter.onnx_import import import_onnx
from edgeq.converter.quantize import quantize_int8
from edgeq.runtime.tflite_format.writer import operator_version, write_tflite
from edgeq.testing.referees import (
    integer_tensor_mismatches,
    nchw_to_nhwc,
    nhwc_to_nchw,
    relative_max_error,
    run_edgeq,
    run_litert,
    run_onnxruntime,
)
from edgeq.testing.onnx_models import OPSET, make_model
from edgeq.runtime.ir import ModelError

RNG = np.random.default_rng(11)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def random_const(name, *shape, scale=0.5):
    return const(name, (RNG.standard_normal(shape) * scale).astype(np.float32))


def random_feeds(model) -> dict:
    feeds = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if i.type.tensor_type.elem_type == TensorProto.BOOL:
            feeds[i.name] = RNG.random(shape) < 0.5
        else:
            feeds[i.name] = RNG.standard_normal(shape).astype(np.float32)
    return feeds


def op_types(graph) -> list:
    return [op.type for op in graph.ops]


def assert_float_matches_onnxruntime(model, tolerance=1e-5, keep_onnx_layout=False):
    """Convert, run on our runtime and LiteRT, compare each output with onnxruntime."""
    feeds = random_feeds(model)
    expected = run_onnxruntime(model, feeds)
    graph = import_onnx(model, keep_onnx_layout=keep_onnx_layout)
    content = write_tflite(graph)
    to_storage, from_storage = (lambda a: a, lambda a: a) if keep_onnx_layout else (nchw_to_nhwc, nhwc_to_nchw)
    storage_feeds = [to_storage(feeds[i.name]) for i in model.graph.input]
    for engine in (run_litert, run_edgeq):
        outputs = engine(content, storage_feeds)
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            got = from_storage(got).reshape(want.shape)
            assert relative_max_error(got, want) <= tolerance, engine.__name__
    return graph


def assert_int8_matches_litert_reference(model, int8_ops=()):
    """Calibrate on random samples, quantize, and check every integer tensor against BUILTIN_REF; the
    ops named in ``int8_ops`` must have been quantized (not left as float islands)."""
    graph = import_onnx(model)
    samples = {}
    for name in graph.inputs:
        shape = graph[name].shape
        samples[name] = RNG.standard_normal((16,) + tuple(shape[1:])).astype(np.float32)
    qgraph = quantize_int8(graph, calibrate(graph, samples, "minmax", progress=False))
    for op_type in int8_ops:
        quantized = [op for op in qgraph.ops if op.type == op_type and qgraph[op.outputs[0]].dtype == np.int8]
        assert quantized, f"{op_type} stayed float: {qgraph.float_ops}"
    content = write_tflite(qgraph)
    for sample in range(3):
        feeds = [samples[name][sample:sample + 1] for name in qgraph.inputs]
        counts = integer_tensor_mismatches(content, feeds)
        assert counts and sum(counts.values()) == 0, {k: v for k, v in counts.items() if v}
    return qgraph


# -- LayerNormalization ----------------------------------------------------------------------------

def layer_norm_model(shape, axis=-1, bias=True, epsilon=1e-5, opset=OPSET):
    rank = len(shape)
    normalized = shape[axis % rank:]
    inputs = ["x", "scale"] + (["bias"] if bias else [])
    node = helper.make_node("LayerNormalization", inputs, ["y"], axis=axis, epsilon=epsilon)
    inits = [random_const("scale", *normalized, scale=1.0)] + ([random_const("bias", *normalized)] if bias else [])
    return make_model([node], [("x", list(shape))], ["y"], inits, opset=opset)


@pytest.mark.parametrize("shape, axis", [((1, 6, 16), -1), ((1, 5, 4, 8), -1), ((1, 4, 3, 5), 1), ((2, 8), 0)])
def test_layer_norm_matches_onnxruntime(shape, axis):
    graph = assert_float_matches_onnxruntime(layer_norm_model(shape, axis))
    assert "TRANSPOSE" not in op_types(graph)


def test_layer_norm_is_decomposed_into_builtins_reducing_over_the_last_axes():
    graph = import_onnx(layer_norm_model((1, 6, 16)))
    assert op_types(graph) == ["MEAN", "SUB", "MUL", "MEAN", "ADD", "RSQRT", "MUL", "MUL", "ADD"]
    mean = graph.ops[0]
    assert list(graph[mean.inputs[1]].data) == [2]


def test_layer_norm_on_nhwc_feature_map_reduces_over_storage_axes_of_channels_and_space():
    # ONNX axes 1..3 of an NCHW map are all of H, W, C in storage: NHWC axes 1, 2, 3.
    graph = import_onnx(layer_norm_model((1, 4, 3, 5), axis=1))
    assert list(graph[graph.ops[0].inputs[1]].data) == [1, 2, 3]


def test_layer_norm_without_bias_and_with_large_epsilon_matches_onnxruntime():
    graph = assert_float_matches_onnxruntime(layer_norm_model((1, 3, 10), bias=False, epsilon=0.5))
    assert op_types(graph)[-1] == "MUL"


def test_layer_norm_int8_matches_litert_reference():
    assert_int8_matches_litert_reference(layer_norm_model((1, 6, 16)), int8_ops=["MEAN", "RSQRT", "MUL"])


def test_layer_norm_on_float16_is_refused_by_name():
    model = layer_norm_model((1, 4, 8))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    for init in model.graph.initializer:
        init.CopyFrom(const(init.name, numpy_helper.to_array(init).astype(np.float16)))
    with pytest.raises(ModelError, match="LayerNormalization node 'y'.*float32"):
        import_onnx(model)


def pytorch_decomposed_layer_norm_model(shape):
    """What torch.onnx's older exporter writes for nn.LayerNorm: ReduceMean, Sub, Pow 2, ReduceMean, Add,
    Sqrt, Div, Mul, Add."""
    width = shape[-1]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]),
        helper.make_node("Sub", ["x", "mean"], ["centered"]),
        helper.make_node("Pow", ["centered", "two"], ["squared"]),
        helper.make_node("ReduceMean", ["squared"], ["variance"], axes=[-1]),
        helper.make_node("Add", ["variance", "epsilon"], ["shifted"]),
        helper.make_node("Sqrt", ["shifted"], ["std"]),
        helper.make_node("Div", ["centered", "std"], ["normalized"]),
        helper.make_node("Mul", ["normalized", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["y"]),
    ]
    inits = [const("two", np.float32(2.0)), const("epsilon", np.float32(1e-5)),
             random_const("gamma", width, scale=1.0), random_const("beta", width)]
    return make_model(nodes, [("x", list(shape))], ["y"], inits, opset=13)


def test_pytorch_decomposed_layer_norm_converts_through_the_per_op_rules():
    graph = assert_float_matches_onnxruntime(pytorch_decomposed_layer_norm_model((1, 6, 16)))
    assert "TRANSPOSE" not in op_types(graph)
    assert "DIV" in op_types(graph) and "SQRT" in op_types(graph)


# -- GELU written with Erf ---------------------------------------------------------------------------

def erf_gelu_nodes(ordering: str) -> tuple:
    """(nodes, initializers) of x * 0.5 * (1 + erf(x / sqrt 2)) as exporters write it."""
    if ordering == "div_then_times_x_then_half":  # torch.onnx: ((x * (1 + erf(x / 1.4142))) * 0.5)
        scale = [helper.make_node("Div", ["x", "sqrt_two"], ["scaled"])]
        tail = [helper.make_node("Mul", ["x", "one_plus_erf"], ["product"]),
                helper.make_node("Mul", ["product", "half"], ["y"])]
    elif ordering == "mul_then_half_then_times_x":  # ((0.5 * (1 + erf(x * 0.7071))) * x)
        scale = [helper.make_node("Mul", ["x", "inverse_sqrt_two"], ["scaled"])]
        tail = [helper.make_node("Mul", ["half", "one_plus_erf"], ["product"]),
                helper.make_node("Mul", ["product", "x"], ["y"])]
    else:  # "half_x_first": ((x * 0.5) * (1 + erf(x / 1.4142)))
        scale = [helper.make_node("Div", ["x", "sqrt_two"], ["scaled"])]
        tail = [helper.make_node("Mul", ["x", "half"], ["half_x"]),
                helper.make_node("Mul", ["half_x", "one_plus_erf"], ["y"])]
    nodes = scale + [helper.make_node("Erf", ["scaled"], ["erf"], name="erf"),
                     helper.make_node("Add", ["one", "erf"], ["one_plus_erf"])] + tail
    inits = [const("sqrt_two", np.float32(1.4142)), const("inverse_sqrt_two", np.float32(0.7071)),
             const("one", np.float32(1.0)), const("half", np.float32(0.5))]
    return nodes, inits


def erf_gelu_model(ordering, shape=(1, 4, 3, 5)):
    nodes, inits = erf_gelu_nodes(ordering)
    return make_model(nodes, [("x", list(shape))], ["y"], inits)


GELU_ORDERINGS = ["div_then_times_x_then_half", "mul_then_half_then_times_x", "half_x_first"]


@pytest.mark.parametrize("ordering", GELU_ORDERINGS)
def test_erf_gelu_pattern_becomes_one_gelu_op(ordering):
    graph = assert_float_matches_onnxruntime(erf_gelu_model(ordering), tolerance=1e-4)
    assert op_types(graph) == ["GELU"]
    assert graph.ops[0].options["approximate"] is False


def test_erf_gelu_after_a_projection_keeps_the_projection():
    nodes, inits = erf_gelu_nodes("div_then_times_x_then_half")
    nodes = [helper.make_node("MatMul", ["input", "w"], ["x"])] + nodes
    model = make_model(nodes, [("input", [1, 6, 8])], ["y"], inits + [random_const("w", 8, 5)])
    graph = assert_float_matches_onnxruntime(model, tolerance=1e-4)
    assert op_types(graph) == ["FULLY_CONNECTED", "GELU"]


def test_erf_whose_intermediate_is_used_elsewhere_is_not_fused_and_is_refused():
    nodes, inits = erf_gelu_nodes("div_then_times_x_then_half")
    model = make_model(nodes, [("x", [1, 8])], ["y", "erf"], inits)
    with pytest.raises(ModelError, match="unsupported ONNX ops: Erf \\(node 'erf'\\)"):
        import_onnx(model)


def test_lone_erf_is_refused_naming_the_node():
    # TFLite has no ERF operator; only the GELU pattern around an Erf converts.
    model = make_model([helper.make_node("Erf", ["x"], ["y"], name="lonely")], [("x", [1, 8])], ["y"])
    with pytest.raises(ModelError, match="unsupported ONNX ops: Erf \\(node 'lonely'\\)"):
        import_onnx(model)


def test_erf_gelu_int8_matches_litert_reference():
    assert_int8_matches_litert_reference(erf_gelu_model("half_x_first", (1, 6, 16)), int8_ops=["GELU"])


def tanh_gelu_nodes(form: str, cubic_coefficient: float = 0.044715) -> tuple:
    """(nodes, initializers) of 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))) as
    exporters write it."""
    c = lambda name, value: const(name, np.float32(value))
    inits = [c("one", 1.0), c("half", 0.5), c("k", math.sqrt(2 / math.pi)), c("a", cubic_coefficient), c("three", 3.0)]
    if form == "pow":  # Hugging Face gelu_new: 0.5 * x * (1 + tanh(k * (x + a * pow(x, 3))))
        inner = [helper.make_node("Pow", ["x", "three"], ["cube"]), helper.make_node("Mul", ["a", "cube"], ["a_cube"]),
                 helper.make_node("Add", ["x", "a_cube"], ["sum"]), helper.make_node("Mul", ["k", "sum"], ["t"])]
        tail = [helper.make_node("Mul", ["half", "x"], ["half_x"]),
                helper.make_node("Mul", ["half_x", "one_plus_tanh"], ["y"])]
    elif form == "products":  # nn.GELU(approximate="tanh"): x * x * x, then ((x * (1 + tanh)) * 0.5)
        inner = [helper.make_node("Mul", ["x", "x"], ["square"]), helper.make_node("Mul", ["square", "x"], ["cube"]),
                 helper.make_node("Mul", ["cube", "a"], ["a_cube"]), helper.make_node("Add", ["x", "a_cube"], ["sum"]),
                 helper.make_node("Mul", ["sum", "k"], ["t"])]
        tail = [helper.make_node("Mul", ["x", "one_plus_tanh"], ["product"]),
                helper.make_node("Mul", ["product", "half"], ["y"])]
    else:  # "factored", Hugging Face gelu_fast: tanh(x * k * (1 + a * x * x)), then (0.5 * (1 + tanh)) * x
        inner = [helper.make_node("Mul", ["x", "k"], ["kx"]), helper.make_node("Mul", ["a", "x"], ["ax"]),
                 helper.make_node("Mul", ["ax", "x"], ["axx"]), helper.make_node("Add", ["one", "axx"], ["factor"]),
                 helper.make_node("Mul", ["kx", "factor"], ["t"])]
        tail = [helper.make_node("Mul", ["half", "one_plus_tanh"], ["product"]),
                helper.make_node("Mul", ["product", "x"], ["y"])]
    nodes = inner + [helper.make_node("Tanh", ["t"], ["tanh"], name="tanh"),
                     helper.make_node("Add", ["tanh", "one"], ["one_plus_tanh"])] + tail
    return nodes, inits


def tanh_gelu_model(form, shape=(1, 4, 3, 5), cubic_coefficient=0.044715):
    nodes, inits = tanh_gelu_nodes(form, cubic_coefficient)
    return make_model(nodes, [("x", list(shape))], ["y"], inits)


@pytest.mark.parametrize("form", ["pow", "products", "factored"])
def test_tanh_gelu_pattern_becomes_one_approximate_gelu_op(form):
    graph = assert_float_matches_onnxruntime(tanh_gelu_model(form), tolerance=1e-5)
    assert op_types(graph) == ["GELU"]
    assert graph.ops[0].options["approximate"] is True


def test_tanh_of_another_polynomial_is_not_fused():
    graph = assert_float_matches_onnxruntime(tanh_gelu_model("pow", cubic_coefficient=0.05))
    assert "TANH" in op_types(graph) and "GELU" not in op_types(graph)


def test_tanh_gelu_whose_cube_is_used_elsewhere_is_not_fused():
    nodes, inits = tanh_gelu_nodes("pow")
    graph = assert_float_matches_onnxruntime(make_model(nodes, [("x", [1, 8])], ["y", "cube"], inits))
    assert "TANH" in op_types(graph) and "GELU" not in op_types(graph)


def test_tanh_gelu_int8_matches_litert_reference():
    assert_int8_matches_litert_reference(tanh_gelu_model("products", (1, 6, 16)), int8_ops=["GELU"])


# -- Where ---------------------------------------------------------------------------------------------

def causal_mask(size: int) -> np.ndarray:
    return np.tril(np.ones((size, size), bool))


def masked_scores_model(shape=(1, 2, 5, 5)):
    """Attention scores with a constant causal mask: Where(mask, scores, -10000)."""
    nodes = [helper.make_node("Where", ["mask", "scores", "fill"], ["y"], name="mask_scores")]
    inits = [const("mask", causal_mask(shape[-1])[None, None]), const("fill", np.float32(-1e4))]
    return make_model(nodes, [("scores", list(shape))], ["y"], inits)


def test_where_with_constant_mask_is_select_v2_in_the_scores_layout():
    graph = assert_float_matches_onnxruntime(masked_scores_model())
    assert op_types(graph) == ["SELECT_V2"]
    mask = graph[graph.ops[0].inputs[0]]
    assert mask.dtype == np.bool_ and mask.shape == (1, 5, 5, 1)  # the NCHW [1, 1, 5, 5] mask, stored NHWC


def test_where_with_a_computed_condition_matches_onnxruntime():
    nodes = [helper.make_node("Where", ["condition", "x", "y"], ["z"])]
    model = make_model(nodes, [("condition", [1, 3, 4], TensorProto.BOOL), ("x", [1, 3, 4]), ("y", [4])], ["z"])
    assert "SELECT_V2" in op_types(assert_float_matches_onnxruntime(model))


def test_where_on_float64_values_is_refused_by_name():
    nodes = [helper.make_node("Where", ["mask", "x", "x"], ["z"], name="pick")]
    model = make_model(nodes, [("x", [1, 4], TensorProto.DOUBLE)], [("z", TensorProto.DOUBLE)],
                       [const("mask", np.array([True, False, True, False]))])
    with pytest.raises(ModelError, match="Where node 'pick'.*float64"):
        import_onnx(model)


def test_where_int8_shares_params_and_matches_litert_reference():
    nodes = [helper.make_node("Mul", ["x", "three"], ["tripled"]),
             helper.make_node("Where", ["mask", "x", "tripled"], ["y"])]
    inits = [const("three", np.float32(3.0)), const("mask", causal_mask(6)[None])]
    qgraph = assert_int8_matches_litert_reference(make_model(nodes, [("x", [1, 6, 6])], ["y"], inits),
                                                  int8_ops=["SELECT_V2"])
    select = next(op for op in qgraph.ops if op.type == "SELECT_V2")
    assert qgraph[select.outputs[0]].quant == qgraph[select.inputs[1]].quant


def nan_guarded_softmax_model(shape=(1, 2, 4, 6)):
    """torch's export of scaled_dot_product_attention with a boolean mask: scores plus Where(mask, 0,
    -inf), Softmax, then Where(IsNaN(p), 0, p) so that a fully masked row gives zeros, not NaN."""
    nodes = [helper.make_node("Where", ["keep", "zero", "minus_inf"], ["additive"]),
             helper.make_node("Add", ["scores", "additive"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
             helper.make_node("IsNaN", ["p"], ["is_nan"], name="nan_guard"),
             helper.make_node("Where", ["is_nan", "zero", "p"], ["y"])]
    return make_model(nodes, [("scores", list(shape)), ("keep", [shape[0], 1, 1, shape[-1]], TensorProto.BOOL)],
                      ["y"], [const("zero", np.float32(0.0)), const("minus_inf", np.float32(-np.inf))])


def test_isnan_is_not_equal_to_itself_and_guards_the_softmax_like_onnxruntime():
    graph = assert_float_matches_onnxruntime(nan_guarded_softmax_model())
    guard = next(op for op in graph.ops if op.type == "NOT_EQUAL")
    assert guard.inputs[0] == guard.inputs[1] and graph[guard.outputs[0]].dtype == np.bool_


def test_isnan_zeroes_a_fully_masked_softmax_row_on_our_runtime_and_litert():
    model = nan_guarded_softmax_model(shape=(1, 1, 2, 3))
    scores = RNG.standard_normal((1, 1, 2, 3)).astype(np.float32)
    keep = np.zeros((1, 1, 1, 3), bool)
    (expected,) = run_onnxruntime(model, {"scores": scores, "keep": keep})
    assert np.all(expected == 0)
    content = write_tflite(import_onnx(model))
    for engine in (run_litert, run_edgeq):
        (got,) = engine(content, [nchw_to_nhwc(scores), nchw_to_nhwc(keep)])
        assert np.all(nhwc_to_nchw(got) == 0), engine.__name__


def test_int8_keeps_an_infinite_attention_mask_and_its_softmax_float():
    """No int8 scale holds -inf: the mask, the scores it is added to and the softmax reading them
    stay float (the softmax output is finite and is quantized again); the rest is int8."""
    nodes = [helper.make_node("Where", ["keep", "zero", "minus_inf"], ["additive"]),
             helper.make_node("MatMul", ["x", "w"], ["scores"]),
             helper.make_node("Add", ["scores", "additive"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    model = make_model(nodes, [("x", [1, 6, 8]), ("keep", [1, 1, 6], TensorProto.BOOL)], ["y"],
                       [const("zero", np.float32(0.0)), const("minus_inf", np.float32(-np.inf)),
                        random_const("w", 8, 6), random_const("v", 6, 5)])
    graph = import_onnx(model)
    keep = np.ones((16, 1, 6), bool)
    keep[8:, :, 4:] = False  # half of the samples padded at the end
    samples = {"x": RNG.standard_normal((16, 6, 8)).astype(np.float32), "keep": keep}
    ranges = calibrate(graph, samples, "minmax", progress=False)
    qgraph = quantize_int8(graph, ranges)
    float_types = sorted(op.split(" ")[0] for op in qgraph.float_ops)
    assert float_types == ["ADD", "SELECT_V2", "SOFTMAX"]
    assert all("infinite" in op for op in qgraph.float_ops)
    assert {qgraph[op.outputs[0]].dtype for op in qgraph.ops if op.type == "FULLY_CONNECTED"} == {np.dtype(np.int8)}
    content = write_tflite(qgraph)
    for sample in (0, 12):
        feeds = [samples[name][sample:sample + 1] for name in qgraph.inputs]
        (expected,) = run_onnxruntime(model, {"x": feeds[0], "keep": feeds[1]})
        (got,) = run_edgeq(content, feeds)
        assert relative_max_error(got.reshape(expected.shape), expected) < 0.05
        counts = integer_tensor_mismatches(content, feeds)
        assert counts and sum(counts.values()) == 0, {k: v for k, v in counts.items() if v}


def test_isnan_of_integers_is_refused_by_name():
    nodes = [helper.make_node("IsNaN", ["x"], ["y"], name="nan_check")]
    model = make_model(nodes, [("x", [1, 4], TensorProto.INT32)], [("y", TensorProto.BOOL)])
    with pytest.raises(ModelError, match="IsNaN node 'nan_check'.*int32"):
        import_onnx(model)


# -- Einsum --------------------------------------------------------------------------------------------

def einsum_model(equation, shapes, constant_right=False):
    names = ["a", "b"][:len(shapes)]
    node = helper.make_node("Einsum", names, ["y"], equation=equation, name="einsum")
    inputs = list(zip(names, [list(s) for s in shapes]))
    inits = []
    if constant_right:
        inits = [random_const("b", *shapes[1])]
        inputs = inputs[:1]
    return make_model([node], inputs, ["y"], inits, opset=12)


@pytest.mark.parametrize("equation, shapes, adjoints", [
    ("bhqd,bhkd->bhqk", [(1, 2, 5, 4), (1, 2, 6, 4)], (False, True)),  # attention scores: K read transposed
    ("bhqk,bhkd->bhqd", [(1, 2, 5, 6), (1, 2, 6, 4)], (False, False)),  # attention-weighted values
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)], (False, False)),
    ("...ij,...jk->...ik", [(1, 2, 3, 4), (1, 2, 4, 5)], (False, False)),
    ("bji,bjk->bik", [(2, 4, 3), (2, 4, 5)], (True, False)),
])
def test_einsum_attention_products_are_one_batch_matmul_without_transposes(equation, shapes, adjoints):
    graph = assert_float_matches_onnxruntime(einsum_model(equation, shapes), keep_onnx_layout=True)
    assert op_types(graph) == ["BATCH_MATMUL"]
    options = graph.ops[0].options
    assert (options["adj_x"], options["adj_y"]) == adjoints


def test_einsum_with_heads_after_the_sequence_transposes_each_operand_once():
    graph = assert_float_matches_onnxruntime(einsum_model("bqhd,bkhd->bhqk", [(1, 5, 2, 4), (1, 6, 2, 4)]),
                                             keep_onnx_layout=True)
    assert op_types(graph).count("BATCH_MATMUL") == 1
    assert op_types(graph).count("TRANSPOSE") <= 2


@pytest.mark.parametrize("equation, shapes", [
    ("bid,jd->bij", [(1, 6, 8), (5, 8)]),  # a Linear layer with torch's [out, in] weight
    ("bi,ij->bj", [(3, 8), (8, 5)]),
    ("bsd,dhk->bshk", [(1, 6, 8), (8, 2, 3)]),  # a projection split into heads
])
def test_einsum_with_a_constant_weight_is_fully_connected(equation, shapes):
    graph = assert_float_matches_onnxruntime(einsum_model(equation, shapes, constant_right=True),
                                             keep_onnx_layout=True)
    assert "FULLY_CONNECTED" in op_types(graph) and "TRANSPOSE" not in op_types(graph)


def test_einsum_channel_mixing_on_a_feature_map_reads_nhwc_storage_directly():
    # A 1x1 convolution written as Einsum: the channels are innermost in NHWC storage already.
    graph = assert_float_matches_onnxruntime(einsum_model("bchw,dc->bdhw", [(1, 4, 3, 5), (6, 4)], constant_right=True))
    assert op_types(graph) == ["FULLY_CONNECTED"]


@pytest.mark.parametrize("equation, shapes", [
    ("bhqd,bkhd->bqhk", [(1, 2, 5, 4), (1, 6, 2, 4)]),
    ("ij,jk", [(3, 4), (4, 5)]),  # implicit output: "ik"
    ("bij,bkj->bjik", [(2, 3, 4), (2, 5, 4)]),  # a batch letter that is not leading in the output
    ("bij,bjk->bk", [(2, 3, 4), (2, 4, 5)]),  # a letter only one operand has is summed first
    ("bqd,bkd->bqk", [(2, 1, 4), (2, 6, 4)]),
])
def test_einsum_general_two_operand_forms_match_onnxruntime(equation, shapes):
    assert "BATCH_MATMUL" in op_types(assert_float_matches_onnxruntime(einsum_model(equation, shapes)))


@pytest.mark.parametrize("equation, shape", [("ij->ji", (3, 4)), ("bij->bj", (2, 3, 4)), ("bchw->bhwc", (1, 3, 4, 5))])
def test_einsum_of_one_operand_is_a_layout_or_a_sum(equation, shape):
    graph = assert_float_matches_onnxruntime(einsum_model(equation, [shape]))
    assert set(op_types(graph)) <= {"SUM", "TRANSPOSE", "RESHAPE"}


@pytest.mark.parametrize("equation, shapes, reason", [
    ("ii->i", [(4, 4)], "diagonal"),
    ("i,i", [(5,), (5,)], "scalar"),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)], "one or two operands"),
])
def test_unsupported_einsum_is_refused_naming_node_and_equation(equation, shapes, reason):
    names = ["a", "b", "c"][:len(shapes)]
    node = helper.make_node("Einsum", names, ["y"], equation=equation, name="einsum")
    model = make_model([node], list(zip(names, [list(s) for s in shapes])), ["y"], opset=12)
    with pytest.raises(ModelError, match=f"Einsum node 'einsum' \\(equation '{equation}'\\).*{reason}"):
        import_onnx(model)


# -- int8 BATCH_MATMUL ---------------------------------------------------------------------------------

def attention_model(sequence=6, width=8):
    """softmax(q k^T / sqrt(d)) v with q, k, v projections of one input: the int8 path of a transformer."""
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Einsum", ["q", "k"], ["scores"], equation="bqd,bkd->bqk"),
        helper.make_node("Mul", ["scores", "inverse_sqrt_d"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "v"], ["y"]),
    ]
    inits = [random_const(w, width, width) for w in ("wq", "wk", "wv")]
    inits.append(const("inverse_sqrt_d", np.float32(1 / np.sqrt(width))))
    return make_model(nodes, [("x", [1, sequence, width])], ["y"], inits)


def test_attention_block_matches_onnxruntime():
    graph = assert_float_matches_onnxruntime(attention_model(), tolerance=1e-5)
    assert op_types(graph).count("BATCH_MATMUL") == 2 and "TRANSPOSE" not in op_types(graph)


def test_attention_block_int8_matches_litert_reference():
    qgraph = assert_int8_matches_litert_reference(attention_model(), int8_ops=["BATCH_MATMUL", "SOFTMAX"])
    assert not qgraph.float_ops


def test_where_on_five_dimensional_values_is_select_v2_version_2():
    nodes = [helper.make_node("Where", ["mask", "x", "fill"], ["y"])]
    inits = [const("mask", RNG.random((1, 2, 1, 3, 4)) < 0.5), const("fill", np.float32(-1.0))]
    model = make_model(nodes, [("x", [1, 2, 2, 3, 4])], ["y"], inits)
    graph = assert_float_matches_onnxruntime(model)
    assert operator_version(graph.ops[-1], graph) == 2

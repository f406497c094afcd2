"""Ops that detector, OCR and transformer exports use on activations: comparisons and boolean logic,
Where on a computed condition, ArgMax/ArgMin, Softplus/Mish/Selu/Celu, InstanceNormalization, the
L1/L2/log-sum-exp/sum-of-squares reductions, CumSum, Tile, Mod and TopK.

Float: our runtime and LiteRT against onnxruntime (integer and bool outputs exactly). int8: every
integer tensor of our runtime equals LiteRT's reference kernels (BUILTIN_REF)."""
from __future__ import annotations

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
from edgeq.testing import litert
from edgeq.runtime.ir import ModelError

RNG = np.random.default_rng(23)
FLOAT, BOOL, INT64, INT32 = TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64, TensorProto.INT32


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def random_input(shape, elem_type) -> np.ndarray:
    if elem_type == BOOL:
        return RNG.random(shape) < 0.5
    if elem_type == FLOAT:
        # Halves make ties, so comparisons see equal values too.
        return (np.round(RNG.standard_normal(shape) * 4) / 2).astype(np.float32)
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    return RNG.integers(-5 if np.dtype(dtype).kind == "i" else 0, 6, shape).astype(dtype)


def random_feeds(model) -> dict:
    return {i.name: random_input([d.dim_value for d in i.type.tensor_type.shape.dim], i.type.tensor_type.elem_type)
            for i in model.graph.input}


def op_types(graph) -> list:
    return [op.type for op in graph.ops]


def assert_float_matches_onnxruntime(model, tolerance=1e-5, feeds=None):
    """Convert, run on our runtime and LiteRT, compare each output with onnxruntime."""
    feeds = feeds or random_feeds(model)
    expected = run_onnxruntime(model, feeds)
    graph = import_onnx(model)
    content = write_tflite(graph)
    storage_feeds = [nchw_to_nhwc(feeds[i.name]) for i in model.graph.input]
    for engine in (run_litert, run_edgeq):
        outputs = engine(content, storage_feeds)
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            got = nhwc_to_nchw(got).reshape(want.shape)
            assert got.dtype == want.dtype, engine.__name__
            if want.dtype.kind == "f":
                assert relative_max_error(got, want) <= tolerance, engine.__name__
            else:
                np.testing.assert_array_equal(got, want, err_msg=engine.__name__)
    return graph


def assert_int8_matches_litert_reference(model, int8_ops=(), builtin_kernels=False):
    """Calibrate on random samples, quantize, and check every integer tensor against BUILTIN_REF; the
    ops named in ``int8_ops`` must have been quantized (not left as float islands). A graph with an int8
    SUM is held to LiteRT's builtin kernels instead: BUILTIN_REF's int8 SUM is broken in LiteRT 2.3
    (see runtime/kernels/reduce.py); so is one where ``builtin_kernels`` says BUILTIN_REF lacks an op."""
    graph = import_onnx(model)
    samples = {name: RNG.standard_normal((16,) + tuple(graph[name].shape[1:])).astype(np.float32)
               for name in graph.inputs}
    qgraph = quantize_int8(graph, calibrate(graph, samples, "minmax", progress=False))
    for op_type in int8_ops:
        quantized = [op for op in qgraph.ops
                     if op.type == op_type and any(qgraph[n].dtype == np.int8 for n in op.inputs + op.outputs if n)]
        assert quantized, f"{op_type} stayed float: {qgraph.float_ops}"
    content = write_tflite(qgraph)
    has_int8_sum = any(op.type == "SUM" and qgraph[op.outputs[0]].dtype == np.int8 for op in qgraph.ops)
    resolver = (litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if has_int8_sum or builtin_kernels
                else litert.OpResolverType.BUILTIN_REF)
    for sample in range(3):
        feeds = [samples[name][sample:sample + 1] for name in qgraph.inputs]
        counts = integer_tensor_mismatches(content, feeds, resolver, kinds="iub")
        assert counts and sum(counts.values()) == 0, {k: v for k, v in counts.items() if v}
    return qgraph


# -- comparisons and logic -----------------------------------------------------------------------------

COMPARISONS = {"Equal": "EQUAL", "Greater": "GREATER", "Less": "LESS", "GreaterOrEqual": "GREATER_EQUAL",
               "LessOrEqual": "LESS_EQUAL"}


@pytest.mark.parametrize("op_type", sorted(COMPARISONS))
def test_comparison_of_two_feature_maps_is_one_builtin_in_nhwc(op_type):
    node = helper.make_node(op_type, ["a", "b"], ["y"])
    model = make_model([node], [("a", [1, 3, 4, 5]), ("b", [1, 3, 4, 5])], [("y", BOOL)])
    graph = assert_float_matches_onnxruntime(model)
    assert op_types(graph) == [COMPARISONS[op_type]]


@pytest.mark.parametrize("op_type", sorted(COMPARISONS))
def test_comparison_with_a_per_channel_constant_broadcasts_in_nhwc(op_type):
    node = helper.make_node(op_type, ["x", "threshold"], ["y"])
    model = make_model([node], [("x", [1, 3, 4, 5])], [("y", BOOL)],
                       [const("threshold", np.array([-0.5, 0.0, 0.5], np.float32).reshape(3, 1, 1))])
    graph = assert_float_matches_onnxruntime(model)
    assert graph[graph.ops[0].inputs[1]].shape == (1, 1, 1, 3)


def test_attention_mask_equal_zero_selects_a_large_negative_score():
    """BERT's exported mask: Where(mask == 0, -10000, scores) with the int64 mask an input."""
    nodes = [helper.make_node("Equal", ["mask", "zero"], ["masked"]),
             helper.make_node("Where", ["masked", "fill", "scores"], ["y"])]
    inits = [const("zero", np.array(0, np.int64)), const("fill", np.float32(-1e4))]
    model = make_model(nodes, [("scores", [1, 2, 6, 6]), ("mask", [1, 1, 1, 6], INT64)], [("y", FLOAT)], inits)
    feeds = random_feeds(model)
    feeds["mask"] = (RNG.random((1, 1, 1, 6)) < 0.5).astype(np.int64)
    graph = assert_float_matches_onnxruntime(model, feeds=feeds)
    assert op_types(graph) == ["EQUAL", "SELECT_V2"]


@pytest.mark.parametrize("elem_type", [TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT32,
                                       TensorProto.INT32, TensorProto.FLOAT16])
def test_comparison_of_other_types_is_exact_through_a_wider_type(elem_type):
    node = helper.make_node("Greater", ["a", "b"], ["y"])
    model = make_model([node], [("a", [2, 7], elem_type), ("b", [7], elem_type)], [("y", BOOL)])
    graph = assert_float_matches_onnxruntime(model)
    assert op_types(graph)[-1] == "GREATER"


def test_comparison_of_float64_is_refused_by_name():
    node = helper.make_node("Less", ["a", "b"], ["y"], name="compare")
    model = make_model([node], [("a", [4], TensorProto.DOUBLE), ("b", [4], TensorProto.DOUBLE)], [("y", BOOL)])
    with pytest.raises(ModelError, match="Less node 'compare'.*float64"):
        import_onnx(model)


@pytest.mark.parametrize("op_type, tfl_type", [("And", "LOGICAL_AND"), ("Or", "LOGICAL_OR"), ("Xor", "NOT_EQUAL")])
def test_logic_on_comparisons_of_a_feature_map(op_type, tfl_type):
    nodes = [helper.make_node("Greater", ["x", "low"], ["above"]),
             helper.make_node("Less", ["x", "high"], ["below"]),
             helper.make_node(op_type, ["above", "below"], ["y"])]
    inits = [const("low", np.float32(-0.5)), const("high", np.float32(1.0))]
    model = make_model(nodes, [("x", [1, 2, 3, 4])], [("y", BOOL)], inits)
    graph = assert_float_matches_onnxruntime(model)
    assert op_types(graph) == ["GREATER", "LESS", tfl_type]


def test_not_of_a_comparison_runs_as_logical_not():
    nodes = [helper.make_node("Greater", ["x", "zero"], ["positive"]),
             helper.make_node("Not", ["positive"], ["y"])]
    model = make_model(nodes, [("x", [1, 2, 3, 4])], [("y", BOOL)], [const("zero", np.float32(0))])
    graph = assert_float_matches_onnxruntime(model)
    assert op_types(graph) == ["GREATER", "LOGICAL_NOT"]


def test_logic_broadcasts_a_lower_rank_bool_input():
    node = helper.make_node("And", ["a", "b"], ["y"])
    model = make_model([node], [("a", [2, 3, 4], BOOL), ("b", [4], BOOL)], [("y", BOOL)])
    assert_float_matches_onnxruntime(model)


def test_a_comparison_cast_to_float_masks_a_feature_map():
    """PyTorch's ``x * (x > t).float()``: the bool result CAST to float32."""
    nodes = [helper.make_node("Greater", ["x", "threshold"], ["keep"]),
             helper.make_node("Cast", ["keep"], ["keep_float"], to=FLOAT),
             helper.make_node("Mul", ["x", "keep_float"], ["y"])]
    model = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", FLOAT)], [const("threshold", np.float32(0.25))])
    graph = assert_float_matches_onnxruntime(model)
    assert op_types(graph) == ["GREATER", "CAST", "MUL"]


def test_where_on_a_computed_condition_in_an_int8_graph_matches_litert_reference():
    """A Relu-like gate written as Where(x > 0, 2x, x / 2): the comparison stays float (its output is
    bool), the selection is int8."""
    nodes = [helper.make_node("Greater", ["x", "zero"], ["positive"]),
             helper.make_node("Mul", ["x", "two"], ["doubled"]),
             helper.make_node("Mul", ["x", "half"], ["halved"]),
             helper.make_node("Where", ["positive", "doubled", "halved"], ["y"])]
    inits = [const("zero", np.float32(0)), const("two", np.float32(2)), const("half", np.float32(0.5))]
    model = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", FLOAT)], inits)
    assert_float_matches_onnxruntime(model)
    assert_int8_matches_litert_reference(model, int8_ops=["SELECT_V2"])


# -- ArgMax / ArgMin -----------------------------------------------------------------------------------

def arg_model(op_type, shape, **attrs):
    node = helper.make_node(op_type, ["x"], ["y"], name="pick", **attrs)
    return make_model([node], [("x", shape)], [("y", INT64)])


@pytest.mark.parametrize("keepdims", [0, 1])
def test_argmax_over_channels_of_a_segmentation_map_reads_the_last_nhwc_axis(keepdims):
    graph = assert_float_matches_onnxruntime(arg_model("ArgMax", [1, 5, 6, 7], axis=1, keepdims=keepdims))
    assert "TRANSPOSE" not in op_types(graph)
    arg = graph.ops[0]
    assert arg.type == "ARG_MAX" and list(graph[arg.inputs[1]].data) == [3]


@pytest.mark.parametrize("op_type", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("shape, axis, keepdims", [([2, 9], -1, 1), ([3, 4, 5], 0, 0), ([1, 3, 4, 5], 2, 1),
                                                   ([1, 3, 4, 5], -1, 0), ([8], 0, 0)])
def test_arg_min_max_match_onnxruntime(op_type, shape, axis, keepdims):
    assert_float_matches_onnxruntime(arg_model(op_type, shape, axis=axis, keepdims=keepdims))


def test_argmax_of_integer_values():
    for elem_type in (INT32, TensorProto.INT8, TensorProto.UINT8):
        node = helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0)
        assert_float_matches_onnxruntime(make_model([node], [("x", [3, 6], elem_type)], [("y", INT64)]))


def test_argmax_over_the_classes_of_a_sequence_output_is_the_last_axis():
    """A CTC recognizer's greedy decode: ArgMax over the classes of [N, T, C]."""
    graph = assert_float_matches_onnxruntime(arg_model("ArgMax", [1, 12, 37], axis=2, keepdims=0))
    assert op_types(graph) == ["ARG_MAX"] and list(graph[graph.ops[0].inputs[1]].data) == [2]


def test_argmax_select_last_index_is_refused_by_name():
    with pytest.raises(ModelError, match="ArgMax node 'pick'.*select_last_index"):
        import_onnx(arg_model("ArgMax", [2, 5], axis=1, select_last_index=1))


def test_argmax_after_an_int8_convolution_matches_litert_reference():
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["features"], pads=[1, 1, 1, 1]),
             helper.make_node("ArgMax", ["features"], ["y"], axis=1, keepdims=1)]
    inits = [const("w", (RNG.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)),
             const("b", (RNG.standard_normal(4) * 0.1).astype(np.float32))]
    model = make_model(nodes, [("x", [1, 3, 6, 6])], [("y", INT64)], inits)
    assert_float_matches_onnxruntime(model, tolerance=1e-4)
    assert_int8_matches_litert_reference(model, int8_ops=["CONV_2D"])


# -- InstanceNormalization -----------------------------------------------------------------------------

def instance_norm_model(shape, epsilon=1e-5):
    channels = shape[1]
    node = helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["y"], epsilon=epsilon)
    inits = [const("scale", (RNG.standard_normal(channels) + 1).astype(np.float32)),
             const("bias", (RNG.standard_normal(channels) * 0.5).astype(np.float32))]
    return make_model([node], [("x", shape)], [("y", FLOAT)], inits)


@pytest.mark.parametrize("shape", [[1, 4, 5, 6], [2, 3, 7], [1, 2, 3, 4, 5]])
def test_instance_norm_matches_onnxruntime(shape):
    graph = assert_float_matches_onnxruntime(instance_norm_model(shape), tolerance=1e-5)
    assert "TRANSPOSE" not in op_types(graph)


def test_instance_norm_reduces_over_the_spatial_axes_of_nhwc_storage():
    graph = import_onnx(instance_norm_model([1, 4, 5, 6]))
    assert op_types(graph) == ["MEAN", "SUB", "MUL", "MEAN", "ADD", "RSQRT", "MUL", "MUL", "ADD"]
    assert list(graph[graph.ops[0].inputs[1]].data) == [1, 2]
    assert graph[graph.ops[-1].inputs[1]].shape == (1, 1, 1, 4)


def test_instance_norm_with_a_computed_scale_is_refused_by_name():
    node = helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["y"], name="norm")
    model = make_model([node], [("x", [1, 2, 3, 3]), ("scale", [2])], [("y", FLOAT)], [const("bias", np.zeros(2, np.float32))])
    with pytest.raises(ModelError, match="InstanceNormalization node 'norm'.*constants"):
        import_onnx(model)


def test_instance_norm_int8_matches_litert_reference():
    assert_int8_matches_litert_reference(instance_norm_model([1, 4, 5, 6]), int8_ops=["MEAN", "RSQRT", "MUL", "ADD"])


# -- Softplus, Mish, Selu, Celu ------------------------------------------------------------------------

def unary_model(op_type, shape=(1, 3, 4, 5), opset=18, **attrs):
    return make_model([helper.make_node(op_type, ["x"], ["y"], **attrs)], [("x", list(shape))], [("y", FLOAT)],
                      opset=opset)


def wide_feeds(model, spread=8.0) -> dict:
    return {i.name: (RNG.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]) * spread).astype(np.float32)
            for i in model.graph.input}


@pytest.mark.parametrize("op_type, attrs", [("Softplus", {}), ("Mish", {}), ("Selu", {}), ("Selu", {"alpha": 2.0, "gamma": 3.0}),
                                            ("Celu", {}), ("Celu", {"alpha": 0.5})])
def test_composed_activations_match_onnxruntime(op_type, attrs):
    model = unary_model(op_type, opset=18, **attrs)
    graph = assert_float_matches_onnxruntime(model, tolerance=1e-6, feeds=wide_feeds(model))
    assert "TRANSPOSE" not in op_types(graph)


def test_softplus_does_not_overflow_for_large_inputs():
    model = unary_model("Softplus", shape=(1, 6))
    feeds = {"x": np.array([[-200.0, -90.0, -1.0, 0.0, 90.0, 200.0]], np.float32)}
    assert_float_matches_onnxruntime(model, tolerance=1e-6, feeds=feeds)


def test_softplus_keeps_its_relative_precision_for_negative_inputs():
    """log(1 + exp(x)) computed plainly would lose the digits 1 + exp(x) rounds off (mish(x) ~ x * softplus(x)
    there). LiteRT's default LOG (XNNPACK) is itself off by up to 1.2e-7 near 1; its reference LOG is exact."""
    model = unary_model("Softplus", shape=(1, 8))
    x = np.array([[-30.0, -20.0, -16.0, -12.0, -10.0, -8.0, -4.0, -1.0]], np.float32)
    expected = run_onnxruntime(model, {"x": x})[0]
    content = write_tflite(import_onnx(model))
    np.testing.assert_allclose(run_edgeq(content, [x])[0], expected, rtol=1e-5, atol=0)
    np.testing.assert_allclose(run_litert(content, [x], reference_kernels=True)[0], expected, rtol=1e-5, atol=0)
    np.testing.assert_allclose(run_litert(content, [x])[0], expected, rtol=1e-5, atol=2e-7)


def test_mish_is_softplus_tanh_and_a_product():
    graph = import_onnx(unary_model("Mish"))
    assert op_types(graph) == ["ABS", "MUL", "EXP", "ADD", "SUB", "LOG", "ADD", "SUB", "RELU", "ADD", "TANH", "MUL"]


@pytest.mark.parametrize("op_type", ["Softplus", "Mish"])
def test_softplus_and_mish_int8_match_litert_reference(op_type):
    qgraph = assert_int8_matches_litert_reference(unary_model(op_type), int8_ops=["EXP", "LOG", "ADD", "MUL"])
    assert not qgraph.float_ops


# -- ReduceL1 / ReduceL2 / ReduceSumSquare / ReduceLogSumExp -------------------------------------------

def reduce_model(op_type, shape, axes, keepdims, opset=OPSET):
    node = helper.make_node(op_type, ["x"], ["y"], axes=axes, keepdims=keepdims)
    return make_model([node], [("x", shape)], [("y", FLOAT)], opset=opset)


@pytest.mark.parametrize("op_type", ["ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"])
@pytest.mark.parametrize("shape, axes, keepdims", [([1, 4, 5, 6], [2, 3], 1), ([1, 4, 5, 6], [1], 0), ([3, 7], [-1], 0),
                                                   ([2, 3, 4], [0, 2], 1)])
def test_composed_reductions_match_onnxruntime(op_type, shape, axes, keepdims):
    model = reduce_model(op_type, shape, axes, keepdims)
    graph = assert_float_matches_onnxruntime(model, tolerance=2e-6, feeds=wide_feeds(model, spread=3.0))
    assert "TRANSPOSE" not in op_types(graph)


def test_reduce_log_sum_exp_does_not_overflow():
    model = reduce_model("ReduceLogSumExp", [2, 3], [1], 0)
    feeds = {"x": np.array([[100.0, 101.0, 99.0], [-100.0, -101.0, -99.0]], np.float32)}
    assert_float_matches_onnxruntime(model, tolerance=1e-6, feeds=feeds)


def test_reduce_l2_over_channels_of_a_feature_map_reduces_the_last_nhwc_axis():
    graph = import_onnx(reduce_model("ReduceL2", [1, 4, 5, 6], [1], 1))
    assert op_types(graph) == ["MUL", "SUM", "SQRT"]
    assert list(graph[graph.ops[1].inputs[1]].data) == [3]


def test_reduce_l2_with_axes_as_an_input_at_opset_18():
    node = helper.make_node("ReduceL2", ["x", "axes"], ["y"], keepdims=0)
    model = make_model([node], [("x", [2, 3, 4])], [("y", FLOAT)], [const("axes", np.array([1], np.int64))], opset=18)
    assert_float_matches_onnxruntime(model)


@pytest.mark.parametrize("op_type, int8_ops", [("ReduceL1", ["ABS", "SUM"]), ("ReduceLogSumExp", ["REDUCE_MAX", "EXP", "LOG"])])
def test_composed_reductions_int8_match_litert_reference(op_type, int8_ops):
    assert_int8_matches_litert_reference(reduce_model(op_type, [1, 4, 5, 6], [2, 3], 1), int8_ops=int8_ops)


# -- Tile, CumSum, Mod, TopK, Range --------------------------------------------------------------------

def test_tile_of_a_feature_map_tiles_its_storage_axes():
    node = helper.make_node("Tile", ["x", "repeats"], ["y"])
    model = make_model([node], [("x", [1, 2, 3, 4])], [("y", FLOAT)], [const("repeats", np.array([2, 3, 1, 2], np.int64))])
    graph = assert_float_matches_onnxruntime(model)
    assert op_types(graph) == ["TILE"] and list(graph[graph.ops[0].inputs[1]].data) == [2, 1, 2, 3]


def test_tile_int8_shares_params_and_matches_litert():
    """LiteRT's BUILTIN_REF resolver registers no int8 TILE (version 3); its builtin kernels run it."""
    nodes = [helper.make_node("Mul", ["x", "two"], ["doubled"]), helper.make_node("Tile", ["doubled", "repeats"], ["y"])]
    inits = [const("two", np.float32(2)), const("repeats", np.array([1, 2, 2], np.int64))]
    assert_int8_matches_litert_reference(make_model(nodes, [("x", [1, 3, 4])], [("y", FLOAT)], inits), int8_ops=["TILE"],
                                         builtin_kernels=True)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("elem_type, axis", [(FLOAT, 1), (FLOAT, -1), (INT32, 0), (INT64, 2)])
def test_cumsum_matches_onnxruntime(exclusive, reverse, elem_type, axis):
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=exclusive, reverse=reverse)
    model = make_model([node], [("x", [2, 3, 4, 5], elem_type)], [("y", elem_type)], [const("axis", np.array(axis, np.int64))])
    graph = assert_float_matches_onnxruntime(model)
    assert op_types(graph) == ["CUMSUM"]


def test_cumsum_with_a_computed_axis_is_refused_by_name():
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], name="running_total")
    model = make_model([node], [("x", [2, 3]), ("axis", [], INT64)], [("y", FLOAT)])
    with pytest.raises(ModelError, match="CumSum node 'running_total'.*axis must be a constant"):
        import_onnx(model)


@pytest.mark.parametrize("elem_type", [INT32, INT64, TensorProto.INT8, TensorProto.UINT16])
def test_mod_with_the_divisor_sign_matches_onnxruntime(elem_type):
    node = helper.make_node("Mod", ["a", "b"], ["y"])
    model = make_model([node], [("a", [3, 8], elem_type), ("b", [8], elem_type)], [("y", elem_type)])
    feeds = random_feeds(model)
    feeds["b"] = np.where(feeds["b"] == 0, 3, feeds["b"]).astype(feeds["b"].dtype)
    graph = assert_float_matches_onnxruntime(model, feeds=feeds)
    assert "FLOOR_MOD" in op_types(graph)


def test_float_mod_with_the_divisor_sign_matches_numpy():
    """Float Mod with fmod=0 is ONNX's from opset 28 on (onnxruntime here has it not yet): numpy's mod is its reference."""
    node = helper.make_node("Mod", ["a", "b"], ["y"])
    model = make_model([node], [("a", [3, 8]), ("b", [8])], [("y", FLOAT)])
    a = (RNG.standard_normal((3, 8)) * 5).astype(np.float32)
    b = np.where(RNG.random(8) < 0.5, -1.5, 2.25).astype(np.float32)
    content = write_tflite(import_onnx(model))
    for engine in (run_litert, run_edgeq):
        np.testing.assert_allclose(engine(content, [a, b])[0], np.mod(a, b), rtol=1e-6, atol=1e-6, err_msg=engine.__name__)


def test_mod_fmod_1_is_refused_by_name():
    node = helper.make_node("Mod", ["a", "b"], ["y"], fmod=1, name="remainder")
    model = make_model([node], [("a", [4]), ("b", [4])], [("y", FLOAT)])
    with pytest.raises(ModelError, match="Mod node 'remainder'.*fmod=1"):
        import_onnx(model)


def topk_model(shape, k, axis=-1, largest=1, elem_type=FLOAT):
    node = helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=axis, largest=largest)
    return make_model([node], [("x", shape, elem_type)], [("values", elem_type), ("indices", INT64)],
                      [const("k", np.array([k], np.int64))])


@pytest.mark.parametrize("shape, k, axis, largest", [([2, 10], 3, -1, 1), ([1, 6, 4, 5], 2, 1, 1), ([3, 7, 4], 4, 1, 1),
                                                      ([2, 10], 4, -1, 0), ([1, 6, 4, 5], 3, 3, 0)])
def test_topk_matches_onnxruntime_with_ties_taking_the_lower_index(shape, k, axis, largest):
    assert_float_matches_onnxruntime(topk_model(shape, k, axis, largest))


def test_topk_over_channels_of_a_feature_map_needs_no_transpose():
    graph = assert_float_matches_onnxruntime(topk_model([1, 8, 3, 3], 3, axis=1))
    assert op_types(graph) == ["TOPK_V2", "CAST"]


def test_topk_of_int32_values():
    assert_float_matches_onnxruntime(topk_model([3, 9], 4, elem_type=INT32))


def test_topk_of_int8_values_writes_the_int8_version_of_topk_v2():
    model = topk_model([3, 9], 4, elem_type=TensorProto.INT8)
    x = RNG.integers(-128, 128, (3, 9)).astype(np.int8)
    order = np.argsort(-x.astype(np.int64), axis=-1, kind="stable")[:, :4]
    graph = import_onnx(model)
    assert operator_version(graph.ops[0], graph) == 2
    content = write_tflite(graph)
    for engine in (run_litert, run_edgeq):
        values, indices = engine(content, [x])
        np.testing.assert_array_equal(values, np.take_along_axis(x, order, axis=-1), err_msg=engine.__name__)
        np.testing.assert_array_equal(indices, order, err_msg=engine.__name__)


def test_topk_with_a_computed_k_is_refused_by_name():
    node = helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="best")
    model = make_model([node], [("x", [2, 5]), ("k", [1], INT64)], [("values", FLOAT), ("indices", INT64)])
    with pytest.raises(ModelError, match="TopK node 'best'.*constant"):
        import_onnx(model)


def test_range_of_constants_is_folded_away():
    nodes = [helper.make_node("Range", ["start", "limit", "delta"], ["positions"]),
             helper.make_node("Cast", ["positions"], ["positions_float"], to=FLOAT),
             helper.make_node("Add", ["x", "positions_float"], ["y"])]
    inits = [const("start", np.array(0, np.int64)), const("limit", np.array(6, np.int64)), const("delta", np.array(1, np.int64))]
    graph = assert_float_matches_onnxruntime(make_model(nodes, [("x", [2, 6])], [("y", FLOAT)], inits))
    assert op_types(graph) == ["ADD"]

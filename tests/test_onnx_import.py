"""ONNX import: small models built with onnx.helper, converted, and run in LiteRT against onnxruntime;
plus the layout promises (no stray TRANSPOSE), the clean-up passes, and the error messages."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.converter.onnx_import import import_onnx
from edgeq.runtime.tflite_format.writer import write_tflite
from edgeq.testing.referees import nchw_to_nhwc, nhwc_to_nchw, relative_max_error, run_edgeq, run_litert, run_onnxruntime
from edgeq.testing.onnx_models import OPSET, make_model
from edgeq.runtime.ir import ModelError

RNG = np.random.default_rng(0)


def weight(*shape, name):
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.3).astype(np.float32), name)


def op_types(graph) -> list:
    return [op.type for op in graph.ops]


def assert_matches_onnxruntime(model, keep_onnx_layout=False, tolerance=1e-5):
    """Convert, run in LiteRT, compare every output with onnxruntime on the same random input."""
    feeds = {
        i.name: RNG.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in model.graph.input
    }
    expected = run_onnxruntime(model, feeds)
    graph = import_onnx(model, keep_onnx_layout=keep_onnx_layout)
    to_storage = (lambda a: a) if keep_onnx_layout else nchw_to_nhwc
    from_storage = (lambda a: a) if keep_onnx_layout else nhwc_to_nchw
    content = write_tflite(graph)
    storage_feeds = [to_storage(feeds[i.name]) for i in model.graph.input]
    for engine in (run_litert, run_edgeq):
        for got, want in zip(engine(content, storage_feeds), expected):
            got = from_storage(got).reshape(want.shape)
            assert relative_max_error(got, want) <= tolerance, engine.__name__
    return graph


def conv_node(x, w, y, **attrs):
    return helper.make_node("Conv", [x, w, f"{w}_b"], [y], name=y, **attrs)


def conv_weights(w, out_c, in_c, k):
    return [weight(out_c, in_c, k, k, name=w), weight(out_c, name=f"{w}_b")]


# -- numerics against onnxruntime ------------------------------------------------------------

def test_conv_relu_pool_flatten_gemm_matches_onnxruntime_without_transposes():
    nodes = [
        conv_node("x", "w1", "c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p1"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    inits = conv_weights("w1", 4, 3, 3) + [weight(5, 4 * 4 * 4, name="fc_w"), weight(5, name="fc_b")]
    graph = assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 8, 8])], ["y"], inits))
    assert "TRANSPOSE" not in op_types(graph)
    assert "FULLY_CONNECTED" in op_types(graph)


def test_reshape_to_batch_by_features_before_matmul_folds_layout_into_weights():
    nodes = [
        conv_node("x", "w1", "c1"),
        helper.make_node("Reshape", ["c1", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "fc_w"], ["y"]),
    ]
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    inits = conv_weights("w1", 4, 3, 3) + [shape, weight(4 * 6 * 6, 7, name="fc_w")]
    graph = assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 8, 8])], ["y"], inits))
    assert "TRANSPOSE" not in op_types(graph)


def test_channel_shuffle_needs_exactly_one_transpose():
    nodes = [
        conv_node("x", "w1", "c1"),
        helper.make_node("Reshape", ["c1", "s5"], ["r5"]),
        helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t5", "s4"], ["r4"]),
        conv_node("r4", "w2", "y"),
    ]
    inits = conv_weights("w1", 6, 3, 1) + conv_weights("w2", 2, 6, 1) + [
        numpy_helper.from_array(np.array([1, 2, 3, 5, 5], np.int64), "s5"),
        numpy_helper.from_array(np.array([1, 6, 5, 5], np.int64), "s4"),
    ]
    graph = assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 5, 5])], ["y"], inits))
    assert op_types(graph).count("TRANSPOSE") == 1


def test_pointwise_conv_runs_on_any_layout_with_channels_last():
    # Swapping H and W leaves the channels stored last: a 1x1 conv needs no TRANSPOSE to NHWC.
    nodes = [
        helper.make_node("Transpose", ["x"], ["swapped"], perm=[0, 1, 3, 2]),
        conv_node("swapped", "w", "mixed"),
        helper.make_node("Transpose", ["mixed"], ["y"], perm=[0, 1, 3, 2]),
    ]
    model = make_model(nodes, [("x", [1, 6, 4, 5])], ["y"], conv_weights("w", 3, 6, 1))
    graph = assert_matches_onnxruntime(model)
    assert "TRANSPOSE" not in op_types(graph)


def test_depthwise_and_grouped_convolutions_match_onnxruntime():
    nodes = [
        helper.make_node("Conv", ["x", "dw", "dw_b"], ["d"], group=4, pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["d", "gw", "gw_b"], ["y"], group=2),
    ]
    inits = [weight(8, 1, 3, 3, name="dw"), weight(8, name="dw_b"), weight(4, 4, 1, 1, name="gw"), weight(4, name="gw_b")]
    graph = assert_matches_onnxruntime(make_model(nodes, [("x", [1, 4, 9, 9])], ["y"], inits))
    assert "DEPTHWISE_CONV_2D" in op_types(graph)


def test_asymmetric_pads_become_pad_and_valid_conv():
    nodes = [conv_node("x", "w1", "y", pads=[0, 1, 2, 1])]
    graph = assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 7, 7])], ["y"], conv_weights("w1", 2, 3, 3)))
    assert op_types(graph) == ["PAD", "CONV_2D"]


def test_same_upper_auto_pad_uses_tflite_same_padding():
    nodes = [conv_node("x", "w1", "y", auto_pad="SAME_UPPER", strides=[2, 2])]
    graph = assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 8, 8])], ["y"], conv_weights("w1", 2, 3, 3)))
    assert op_types(graph) == ["CONV_2D"] and graph.ops[0].options["padding"] == "SAME"


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_with_pads_matches_onnxruntime(count_include_pad):
    nodes = [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                              count_include_pad=count_include_pad)]
    assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 8, 8])], ["y"]))


def test_ceil_mode_max_pool_matches_onnxruntime():
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)]
    assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 8, 8])], ["y"]))


def test_broadcast_arithmetic_with_per_channel_constants_matches_onnxruntime():
    scale = numpy_helper.from_array(RNG.standard_normal((3, 1, 1)).astype(np.float32), "scale")
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["m"]),
        helper.make_node("Sub", ["m", "x2"], ["s"]),
        helper.make_node("Div", ["s", "scale"], ["d"]),
        helper.make_node("Sum", ["d", "x", "m"], ["y"]),
    ]
    assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 4, 5]), ("x2", [1, 3, 4, 5])], ["y"], [scale]))


def test_concat_softmax_and_reduce_on_channels_need_no_transpose():
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
        helper.make_node("Softmax", ["c"], ["s"], axis=1),
        helper.make_node("ReduceMean", ["s"], ["y"], axes=[2, 3], keepdims=1),
    ]
    graph = assert_matches_onnxruntime(make_model(nodes, [("a", [1, 2, 4, 4]), ("b", [1, 3, 4, 4])], ["y"]), tolerance=1e-5)
    assert "TRANSPOSE" not in op_types(graph)


@pytest.mark.parametrize("op_type, attrs", [
    ("Sigmoid", {}), ("Tanh", {}), ("LeakyRelu", {"alpha": 0.2}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
    ("HardSwish", {}), ("Exp", {}), ("Abs", {}), ("Neg", {}),
])
def test_unary_activation_matches_onnxruntime(op_type, attrs):
    nodes = [helper.make_node(op_type, ["x"], ["y"], **attrs)]
    assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 4, 4])], ["y"]))


@pytest.mark.parametrize("bounds, expected_op", [((0.0, 6.0), "RELU6"), ((-1.0, 1.0), "RELU_N1_TO_1"), ((-0.5, 0.7), "MINIMUM")])
def test_clip_maps_onto_tflite_activations(bounds, expected_op):
    inits = [numpy_helper.from_array(np.array(b, np.float32), n) for b, n in zip(bounds, ("lo", "hi"))]
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])]
    graph = assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 4, 4])], ["y"], inits))
    assert expected_op in op_types(graph)


def test_lrn_matches_onnxruntime():
    nodes = [helper.make_node("LRN", ["x"], ["y"], size=5, alpha=1e-2, beta=0.75, bias=2.0)]
    assert_matches_onnxruntime(make_model(nodes, [("x", [1, 8, 4, 4])], ["y"]))


def test_slice_pad_and_resize_match_onnxruntime():
    inits = [
        numpy_helper.from_array(np.array([1, 1], np.int64), "starts"),
        numpy_helper.from_array(np.array([3, 7], np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 0, 2, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["s"]),
        helper.make_node("Pad", ["s", "pads"], ["p"], mode="reflect"),
        helper.make_node("Resize", ["p", "", "scales"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel"),
    ]
    assert_matches_onnxruntime(make_model(nodes, [("x", [1, 4, 6, 8])], ["y"], inits))


def test_keep_onnx_layout_puts_nchw_at_the_boundary():
    model = make_model([conv_node("x", "w1", "y")], [("x", [1, 3, 6, 6])], ["y"], conv_weights("w1", 2, 3, 3))
    graph = assert_matches_onnxruntime(model, keep_onnx_layout=True)
    assert graph["x"].shape == (1, 3, 6, 6) and graph["y"].shape == (1, 2, 4, 4)
    assert op_types(graph).count("TRANSPOSE") == 2


def test_default_boundary_is_nhwc_with_onnx_names():
    model = make_model([conv_node("x", "w1", "y")], [("x", [1, 3, 6, 6])], ["y"], conv_weights("w1", 2, 3, 3))
    graph = import_onnx(model)
    assert graph.inputs == ["x"] and graph.outputs == ["y"]
    assert graph["x"].shape == (1, 6, 6, 3) and graph["y"].shape == (1, 4, 4, 2)
    assert graph.ops[0].name == "y"


# -- clean-up passes --------------------------------------------------------------------------

def test_batch_norm_after_conv_is_folded_into_its_weights():
    bn = [numpy_helper.from_array(v.astype(np.float32), n) for v, n in (
        (RNG.uniform(0.5, 1.5, 4), "gamma"), (RNG.standard_normal(4), "beta"),
        (RNG.standard_normal(4), "mean"), (RNG.uniform(0.5, 1.5, 4), "var"))]
    nodes = [conv_node("x", "w1", "c1"), helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["y"])]
    graph = assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 6, 6])], ["y"], conv_weights("w1", 4, 3, 3) + bn))
    assert op_types(graph) == ["CONV_2D"]


def test_relu_after_conv_is_fused():
    nodes = [conv_node("x", "w1", "c1"), helper.make_node("Relu", ["c1"], ["y"])]
    graph = assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 6, 6])], ["y"], conv_weights("w1", 2, 3, 3)))
    assert op_types(graph) == ["CONV_2D"]
    assert graph.ops[0].options["fused_activation_function"] == "RELU"


def test_relu_is_not_fused_when_the_conv_output_has_another_consumer():
    nodes = [conv_node("x", "w1", "c1"), helper.make_node("Relu", ["c1"], ["r"]), helper.make_node("Add", ["c1", "r"], ["y"])]
    graph = assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 6, 6])], ["y"], conv_weights("w1", 2, 3, 3)))
    assert "RELU" in op_types(graph)


def test_dropout_and_identity_are_removed():
    nodes = [
        helper.make_node("Identity", ["x"], ["i"]),
        helper.make_node("Dropout", ["i"], ["d"]),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    graph = assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 4, 4])], ["y"]))
    assert op_types(graph) == ["RELU"]


def test_shape_computations_are_folded_to_constants():
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero_axis"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus_one"], ["new_shape"], axis=0),
        helper.make_node("Reshape", ["x", "new_shape"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_axis"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]
    graph = assert_matches_onnxruntime(make_model(nodes, [("x", [2, 3, 4])], ["y"], inits))
    assert op_types(graph) == ["RESHAPE"]


def test_initializer_listed_as_graph_input_is_a_constant():
    model = make_model([conv_node("x", "w1", "y")], [("x", [1, 3, 6, 6])], ["y"], conv_weights("w1", 2, 3, 3))
    model.graph.input.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, [2, 3, 3, 3]))
    graph = import_onnx(model)
    assert graph.inputs == ["x"]


# -- errors -----------------------------------------------------------------------------------

def test_unsupported_ops_error_lists_every_op_and_node():
    nodes = [
        helper.make_node("Trilu", ["x", "k"], ["v1"], name="trilu"),
        helper.make_node("NonMaxSuppression", ["x"], ["n"], name="nms_1"),
        helper.make_node("Trilu", ["x", "k"], ["v2"], name="trilu_2"),
    ]
    k = numpy_helper.from_array(np.array(1, np.int64), "k")
    model = make_model(nodes, [("x", [1, 4])], ["v1", "n", "v2"], [k])
    with pytest.raises(ModelError) as info:
        import_onnx(model)
    message = str(info.value)
    assert "Trilu (nodes 'trilu', 'trilu_2')" in message
    assert "NonMaxSuppression (node 'nms_1')" in message


def test_dynamic_dimension_error_names_the_input_and_the_fix():
    model = make_model([helper.make_node("Relu", ["images"], ["y"])], [("images", ["batch", 3, 224, 224])], ["y"])
    with pytest.raises(ModelError, match=r"'images'.*dimension 0.*--input-shape images:1,3,224,224"):
        import_onnx(model)


def test_dynamic_width_error_asks_for_the_width_by_name():
    model = make_model([helper.make_node("Relu", ["images"], ["y"])], [("images", [1, 1, 32, "width"])], ["y"])
    with pytest.raises(ModelError, match=r"dimension 3 \('width'\).*--input-shape images:1,1,32,<width>"):
        import_onnx(model)


def test_input_shapes_fix_dynamic_dimensions():
    model = make_model([helper.make_node("Relu", ["images"], ["y"])], [("images", ["batch", 3, 8, 8])], ["y"])
    graph = import_onnx(model, input_shapes={"images": (2, 3, 8, 8)})
    assert graph["images"].shape == (2, 8, 8, 3)


def test_non_onnx_file_gives_model_error(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_bytes(b"\x00\xffthis is not a protobuf\x12\x99" * 10)
    with pytest.raises(ModelError, match="not an ONNX model"):
        import_onnx(path)


def test_missing_file_gives_model_error(tmp_path):
    with pytest.raises(ModelError, match="no such ONNX file"):
        import_onnx(tmp_path / "absent.onnx")


def test_too_new_opset_is_rejected():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 3])], ["y"], opset=99)
    with pytest.raises(ModelError, match="opset 99"):
        import_onnx(model)


def test_old_opset_model_is_upgraded_and_its_unused_dropout_mask_ignored():
    nodes = [
        helper.make_node("Dropout", ["x"], ["d", "unused_mask"]),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    graph = assert_matches_onnxruntime(make_model(nodes, [("x", [1, 3, 4, 4])], ["y"], opset=9))
    assert op_types(graph) == ["RELU"]


# -- types TFLite kernels do not compute on plainly ------------------------------------------

def typed_model(nodes, inputs, output_types, initializers=(), opset=OPSET):
    """A model whose inputs are (name, numpy array) and outputs (name, ONNX elem type)."""
    typed_inputs = [(n, a.shape, helper.np_dtype_to_tensor_dtype(a.dtype)) for n, a in inputs]
    return make_model(nodes, typed_inputs, output_types, initializers, opset, name="typed")


def assert_typed_model_matches_reference(model, inputs):
    """LiteRT and our runtime on the converted model equal ONNX's reference evaluator, dtype included."""
    from onnx.reference import ReferenceEvaluator

    feeds = [array for _, array in inputs]
    expected = ReferenceEvaluator(model).run(None, dict(inputs))
    content = write_tflite(import_onnx(model, keep_onnx_layout=True))
    for engine, outputs in (("LiteRT", run_litert(content, feeds)), ("edgeq", run_edgeq(content, feeds))):
        for got, want in zip(outputs, expected):
            assert got.dtype == want.dtype, engine
            np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-6, err_msg=engine)
    return content


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16])
def test_narrow_integer_arithmetic_wraps_as_onnx_does(op_type, dtype):
    """TFLite's int8/uint8/int16 kernels are quantized and saturate (and abort without quantization
    parameters); the importer computes in int32 and casts back, which wraps as ONNX does."""
    info = np.iinfo(dtype)
    x = np.array([info.max, info.min, 100, -7 if info.min < 0 else 7, 3], dtype=dtype)
    y = np.array([1, 1 if op_type != "Sub" else 1, 100, 2, -2 if info.min < 0 else 2], dtype=dtype)
    model = typed_model([helper.make_node(op_type, ["x", "y"], ["z"])], [("x", x), ("y", y)],
                        [("z", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))])
    assert_typed_model_matches_reference(model, [("x", x), ("y", y)])


def test_uint32_add_is_computed_in_int64_and_wraps():
    x = np.array([4294967295, 5, 0], dtype=np.uint32)
    y = np.array([2, 7, 0], dtype=np.uint32)
    model = typed_model([helper.make_node("Add", ["x", "y"], ["z"])], [("x", x), ("y", y)], [("z", TensorProto.UINT32)])
    assert_typed_model_matches_reference(model, [("x", x), ("y", y)])


def test_float16_max_is_computed_in_float32_and_cast_back():
    x = (RNG.standard_normal((3, 4)) * 100).astype(np.float16)
    y = (RNG.standard_normal((3, 4)) * 100).astype(np.float16)
    model = typed_model([helper.make_node("Max", ["x", "y"], ["z"])], [("x", x), ("y", y)], [("z", TensorProto.FLOAT16)])
    assert_typed_model_matches_reference(model, [("x", x), ("y", y)])


def test_uint64_arithmetic_and_float64_max_are_refused_by_name():
    x = np.array([1, 2], dtype=np.uint64)
    model = typed_model([helper.make_node("Add", ["x", "x"], ["z"], name="add_u64")], [("x", x)], [("z", TensorProto.UINT64)])
    with pytest.raises(ModelError, match="'add_u64'.*uint64"):
        import_onnx(model, keep_onnx_layout=True)
    x = np.array([1.0, 2.0], dtype=np.float64)
    model = typed_model([helper.make_node("Max", ["x", "x"], ["z"], name="max_f64")], [("x", x)], [("z", TensorProto.DOUBLE)])
    with pytest.raises(ModelError, match="'max_f64'.*float64"):
        import_onnx(model, keep_onnx_layout=True)


def test_int8_clip_with_relu_bounds_compares_integers():
    x = np.array([-128, -1, 0, 5, 127], dtype=np.int8)
    low = numpy_helper.from_array(np.array(0, np.int8), "low")
    model = typed_model([helper.make_node("Clip", ["x", "low"], ["z"])], [("x", x)], [("z", TensorProto.INT8)], [low])
    assert_typed_model_matches_reference(model, [("x", x)])


@pytest.mark.parametrize("base, exponent", [
    (np.array([1.5, 2.0, 3.0], np.float32), np.array([2, 3, 1], np.int64)),
    (np.array([1, 2, 3], np.int32), np.array([4.0, 5.0, 0.5], np.float32)),
])
def test_pow_with_mixed_types_follows_the_base_type(base, exponent):
    model = typed_model([helper.make_node("Pow", ["x", "y"], ["z"])], [("x", base), ("y", exponent)],
                        [("z", helper.np_dtype_to_tensor_dtype(base.dtype))])
    assert_typed_model_matches_reference(model, [("x", base), ("y", exponent)])


def test_uint8_max_pool_gets_identity_quantization_and_matches_the_reference():
    x = RNG.integers(0, 256, (1, 2, 5, 5)).astype(np.uint8)
    model = typed_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2])], [("x", x)],
                        [("y", TensorProto.UINT8)])
    assert_typed_model_matches_reference(model, [("x", x)])
    pooled = import_onnx(model, keep_onnx_layout=True)
    quant = pooled["y"].quant
    assert quant is not None and quant.scale.tolist() == [1.0] and quant.zero_point.tolist() == [0]


def test_plain_int8_reaching_a_rescaling_quantized_kernel_is_refused_by_name():
    """ONNX Neg of int8 -128 wraps to -128; TFLite's quantized NEG would saturate: refuse, naming the op."""
    x = np.array([-128, 3], dtype=np.int8)
    model = typed_model([helper.make_node("Neg", ["x"], ["y"], name="negate")], [("x", x)], [("y", TensorProto.INT8)])
    with pytest.raises(ModelError, match="NEG 'negate'.*plain int8"):
        import_onnx(model, keep_onnx_layout=True)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_elu_with_alpha_other_than_one_matches_onnxruntime(alpha):
    model = make_model([helper.make_node("Elu", ["x"], ["y"], alpha=alpha)], [("x", [2, 3, 4])], ["y"])
    assert_matches_onnxruntime(model, keep_onnx_layout=True)


def test_gemm_with_transposed_a_and_a_matrix_c_matches_onnxruntime():
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1, alpha=0.5, beta=2.0)
    inits = [weight(5, 3, name="b"), weight(4, 5, name="c")]
    graph = assert_matches_onnxruntime(make_model([node], [("a", [3, 4])], ["y"], inits), keep_onnx_layout=True)
    assert op_types(graph).count("TRANSPOSE") == 1


@pytest.mark.parametrize("a_shape, b_shape", [([4], [2, 4, 3]), ([2, 3, 4], [4]), ([3, 4], [4])])
def test_matmul_with_a_vector_operand_matches_onnxruntime(a_shape, b_shape):
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], [("a", a_shape), ("b", b_shape)], ["y"])
    assert_matches_onnxruntime(model, keep_onnx_layout=True)


def test_matmul_of_an_activation_vector_by_constant_weights_is_fully_connected():
    model = make_model([helper.make_node("MatMul", ["a", "w"], ["y"])], [("a", [4])], ["y"], [weight(4, 3, name="w")])
    graph = assert_matches_onnxruntime(model, keep_onnx_layout=True)
    assert "FULLY_CONNECTED" in op_types(graph)


@pytest.mark.parametrize("node", [
    helper.make_node("Conv", ["x", "w1"], ["y"], pads=[1, 2], strides=[2]),
    helper.make_node("ConvTranspose", ["x", "w1t"], ["y"], strides=[2]),
    helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3], pads=[1, 1], strides=[2]),
    helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2], ceil_mode=1, strides=[2]),
], ids=lambda n: n.op_type)
def test_one_dimensional_conv_and_pool_run_as_two_dimensional_ones(node):
    inits = [weight(4, 3, 3, name="w1"), weight(3, 4, 3, name="w1t")]
    model = make_model([node], [("x", [1, 3, 9])], ["y"], [i for i in inits if i.name in node.input])
    graph = assert_matches_onnxruntime(model)
    assert op_types(graph).count("TRANSPOSE") <= 2

"""The IR <-> TFLite flatbuffer mapping: round trips, buffer sharing, operator codes, and LiteRT as referee."""
import numpy as np
import pytest
import tflite

from edgeq.runtime.tflite_format.writer import write_tflite
from edgeq.runtime.tflite_format import schema
from edgeq.runtime.ir import Graph, ModelError, Op, QuantParams, Tensor
from edgeq.runtime.tflite_format.reader import read_tflite

RNG = np.random.default_rng(7)


def _float(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _conv_same_nhwc(x, w, b):
    """Stride-1 SAME convolution, NHWC input, [O, H, W, I] filter."""
    kh, kw = w.shape[1:3]
    padded = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))  # N,H,W,I,kh,kw
    return np.einsum("nhwiyx,oyxi->nhwo", windows, w) + b


def _int8_conv_graph():
    """QUANTIZE -> CONV_2D (int8, per-channel weights) -> DEQUANTIZE."""
    w = _float(4, 3, 3, 2)
    w_scale = np.abs(w).reshape(4, -1).max(axis=1) / 127
    w_q = np.round(w / w_scale[:, None, None, None]).astype(np.int8)
    x_scale, y_scale = 0.02, 0.1
    bias = _float(4)
    bias_q = np.round(bias / (x_scale * w_scale)).astype(np.int32)
    graph = Graph(
        [
            Tensor("x", (1, 6, 6, 2)),
            Tensor("x_q", (1, 6, 6, 2), np.int8, quant=QuantParams(x_scale, 1)),
            Tensor("w_q", w_q.shape, np.int8, w_q, QuantParams(w_scale, np.zeros(4), axis=0)),
            Tensor("b_q", (4,), np.int32, bias_q, QuantParams(x_scale * w_scale, np.zeros(4), axis=0)),
            Tensor("y_q", (1, 6, 6, 4), np.int8, quant=QuantParams(y_scale, -2)),
            Tensor("y", (1, 6, 6, 4)),
        ],
        [
            Op("QUANTIZE", ["x"], ["x_q"]),
            Op("CONV_2D", ["x_q", "w_q", "b_q"], ["y_q"], {"padding": "SAME", "stride_w": 1, "stride_h": 1}),
            Op("DEQUANTIZE", ["y_q"], ["y"]),
        ],
        ["x"],
        ["y"],
    )
    return graph, w, bias


def _mixed_graph():
    """A float network touching several option kinds, plus an int8 per-channel conv branch."""
    int8_branch, _, _ = _int8_conv_graph()
    tensors = [
        Tensor("image", (1, 6, 6, 2)),
        Tensor("conv_w", (4, 3, 3, 2), data=_float(4, 3, 3, 2)),
        Tensor("conv_b", (4,), data=_float(4)),
        Tensor("conv", (1, 6, 6, 4)),
        Tensor("dw_w", (1, 3, 3, 4), data=_float(1, 3, 3, 4)),
        Tensor("dw_b", (4,), data=_float(4)),
        Tensor("dw", (1, 6, 6, 4)),
        Tensor("pool", (1, 3, 3, 4)),
        Tensor("flat_shape", (2,), np.int32, np.array([1, 36], np.int32)),
        Tensor("flat", (1, 36)),
        Tensor("fc_w", (10, 36), data=_float(10, 36)),
        Tensor("fc_b", (10,), data=_float(10)),
        Tensor("fc", (1, 10)),
        Tensor("both", (1, 20)),
        Tensor("expanded_shape", (3,), np.int32, np.array([1, 1, 20], np.int32)),
        Tensor("expanded", (1, 1, 20)),
        Tensor("squeezed", (1, 20)),
        Tensor("probs", (1, 20)),
    ]
    ops = [
        Op("CONV_2D", ["image", "conv_w", "conv_b"], ["conv"],
           {"padding": "SAME", "stride_w": 1, "stride_h": 1, "fused_activation_function": "RELU6"}),
        Op("DEPTHWISE_CONV_2D", ["conv", "dw_w", "dw_b"], ["dw"],
           {"padding": "SAME", "stride_w": 1, "stride_h": 1, "depth_multiplier": 1}),
        Op("MAX_POOL_2D", ["dw"], ["pool"],
           {"padding": "VALID", "stride_w": 2, "stride_h": 2, "filter_width": 2, "filter_height": 2}),
        Op("RESHAPE", ["pool", "flat_shape"], ["flat"], {"new_shape": [1, 36]}),
        Op("FULLY_CONNECTED", ["flat", "fc_w", "fc_b"], ["fc"], {"fused_activation_function": "RELU"}),
        Op("CONCATENATION", ["fc", "fc"], ["both"], {"axis": 1}),
        Op("RESHAPE", ["both", "expanded_shape"], ["expanded"], {"new_shape": [1, 1, 20]}),
        Op("SQUEEZE", ["expanded"], ["squeezed"], {"squeeze_dims": [1]}),
        Op("SOFTMAX", ["squeezed"], ["probs"], {"beta": 0.5}),
    ]
    graph = Graph(tensors + list(int8_branch.tensors.values()), ops + int8_branch.ops)
    graph.inputs = ["image", "x"]
    graph.outputs = ["probs", "y"]
    return graph


def _opcodes(data: bytes) -> list:
    model = tflite.Model.GetRootAs(data, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    return [(c.BuiltinCode(), c.DeprecatedBuiltinCode(), c.Version()) for c in codes]


def _litert(data: bytes, reference_kernels: bool = False):
    from edgeq.testing.litert import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    interpreter = Interpreter(model_content=data, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter


# -- round trip -----------------------------------------------------------------------------------

def test_round_trip_keeps_tensors_data_and_quantization():
    graph = _mixed_graph()
    read = read_tflite(write_tflite(graph))
    assert list(read.tensors) == list(graph.tensors)
    for name, tensor in graph.tensors.items():
        got = read[name]
        assert (got.shape, got.dtype, got.quant) == (tensor.shape, tensor.dtype, tensor.quant), name
        if tensor.is_constant:
            np.testing.assert_array_equal(got.data, tensor.data)
        else:
            assert got.data is None, name
    assert read["w_q"].quant.per_channel and read["w_q"].quant.axis == 0


def test_round_trip_keeps_ops_options_and_graph_boundary():
    graph = _mixed_graph()
    read = read_tflite(write_tflite(graph))
    assert [(op.type, op.inputs, op.outputs) for op in read.ops] == [
        (op.type, op.inputs, op.outputs) for op in graph.ops
    ]
    for written, got in zip(graph.ops, read.ops):
        assert got.options == schema.options_with_defaults(written.type, written.options), written.type
    assert (read.inputs, read.outputs) == (graph.inputs, graph.outputs)


def test_read_options_carry_schema_defaults_and_enum_names():
    read = read_tflite(write_tflite(_mixed_graph()))
    conv = read.ops[0].options
    assert conv["padding"] == "SAME" and conv["fused_activation_function"] == "RELU6"
    assert conv["dilation_w_factor"] == 1 and conv["dilation_h_factor"] == 1
    assert read.ops[4].options["weights_format"] == "DEFAULT"
    assert read.ops[8].options["beta"] == 0.5


def test_omitted_optional_input_round_trips_as_empty_name():
    graph = Graph(
        [Tensor("x", (1, 4)), Tensor("w", (3, 4), data=_float(3, 4)), Tensor("y", (1, 3))],
        [Op("FULLY_CONNECTED", ["x", "w", ""], ["y"])],
        ["x"],
        ["y"],
    )
    assert read_tflite(write_tflite(graph)).ops[0].inputs == ["x", "w", ""]


def test_read_constants_are_read_only_views_of_the_file():
    data = write_tflite(_mixed_graph())
    weights = read_tflite(data)["fc_w"].data
    assert not weights.flags.writeable
    assert not weights.flags.owndata


def test_constant_buffers_are_16_byte_aligned():
    data = write_tflite(_mixed_graph())
    start = np.frombuffer(data, np.uint8).ctypes.data
    read = read_tflite(data)
    offsets = [t.data.ctypes.data - start for t in read.tensors.values() if t.is_constant]
    assert offsets and all(offset % 16 == 0 for offset in offsets)


def test_unnamed_tensors_get_unique_names_and_io_keeps_signature_names():
    graph = _mixed_graph()
    named, unnamed = write_tflite(graph), write_tflite(graph, store_names=False)
    assert len(unnamed) < len(named)
    read = read_tflite(unnamed)
    assert len(set(read.tensors)) == len(graph.tensors)
    assert (read.inputs, read.outputs) == (graph.inputs, graph.outputs)


# -- buffers and operator codes -------------------------------------------------------------------

def _two_convs(second_weights):
    first = _float(8, 3, 3, 8)
    graph = Graph(
        [
            Tensor("x", (1, 4, 4, 8)), Tensor("w1", first.shape, data=first),
            Tensor("w2", first.shape, data=second_weights(first)), Tensor("b", (8,), data=np.zeros(8, np.float32)),
            Tensor("h", (1, 4, 4, 8)), Tensor("y", (1, 4, 4, 8)),
        ],
        [
            Op("CONV_2D", ["x", "w1", "b"], ["h"], {"padding": "SAME", "stride_w": 1, "stride_h": 1}),
            Op("CONV_2D", ["h", "w2", "b"], ["y"], {"padding": "SAME", "stride_w": 1, "stride_h": 1}),
        ],
        ["x"],
        ["y"],
    )
    return graph, first.nbytes


def test_identical_constant_buffers_are_stored_once():
    shared, weight_bytes = _two_convs(lambda w: w.copy())
    distinct, _ = _two_convs(lambda w: w + 1)
    shared_data, distinct_data = write_tflite(shared), write_tflite(distinct)
    subgraph = tflite.Model.GetRootAs(shared_data, 0).Subgraphs(0)
    buffer_of = {subgraph.Tensors(i).Name(): subgraph.Tensors(i).Buffer() for i in range(subgraph.TensorsLength())}
    assert buffer_of[b"w1"] == buffer_of[b"w2"] != 0
    assert len(distinct_data) - len(shared_data) >= weight_bytes
    np.testing.assert_array_equal(read_tflite(shared_data)["w2"].data, shared["w2"].data)


def test_activations_use_the_empty_buffer_zero():
    data = write_tflite(_mixed_graph())
    model = tflite.Model.GetRootAs(data, 0)
    subgraph = model.Subgraphs(0)
    assert model.Buffers(0).DataLength() == 0
    for i in range(subgraph.TensorsLength()):
        if subgraph.Tensors(i).Name() in (b"image", b"conv", b"probs"):
            assert subgraph.Tensors(i).Buffer() == 0


def test_operator_codes_are_deduplicated_with_both_code_fields():
    graph, _ = _two_convs(lambda w: w + 1)
    assert _opcodes(write_tflite(graph)) == [(3, 3, 1)]
    gelu = Graph([Tensor("x", (1, 4)), Tensor("y", (1, 4))], [Op("GELU", ["x"], ["y"])], ["x"], ["y"])
    assert _opcodes(write_tflite(gelu)) == [(150, 127, 1)]


def test_int8_operator_versions_follow_tflite():
    graph, _, _ = _int8_conv_graph()
    versions = {code: version for code, _, version in _opcodes(write_tflite(graph))}
    assert versions == {
        schema.builtin_code("QUANTIZE"): 1,
        schema.builtin_code("CONV_2D"): 3,
        schema.builtin_code("DEQUANTIZE"): 2,
    }


def test_writer_rejects_unknown_option_and_enum_names():
    def single_conv(options):
        return Graph(
            [Tensor("x", (1, 3, 3, 1)), Tensor("w", (1, 1, 1, 1), data=np.ones((1, 1, 1, 1), np.float32)),
             Tensor("y", (1, 3, 3, 1))],
            [Op("CONV_2D", ["x", "w", ""], ["y"], options)],
            ["x"],
            ["y"],
        )

    with pytest.raises(ModelError, match="strides"):
        write_tflite(single_conv({"strides": 1}))
    with pytest.raises(ModelError, match="HALF"):
        write_tflite(single_conv({"padding": "HALF"}))


EDGEQ_OPS = (
    "CONV_2D DEPTHWISE_CONV_2D FULLY_CONNECTED ADD SUB MUL DIV MAXIMUM MINIMUM RELU RELU6 RELU_N1_TO_1 LEAKY_RELU"
    " PRELU LOGISTIC TANH HARD_SWISH MAX_POOL_2D AVERAGE_POOL_2D MEAN SUM REDUCE_MAX RESHAPE TRANSPOSE"
    " CONCATENATION SOFTMAX PAD PADV2 LOCAL_RESPONSE_NORMALIZATION QUANTIZE DEQUANTIZE SQUEEZE STRIDED_SLICE"
    " GATHER SPLIT SPLIT_V RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR TRANSPOSE_CONV BATCH_MATMUL GELU EXP LOG SQRT"
    " RSQRT POW SQUARE CAST SLICE TILE EXPAND_DIMS PACK UNPACK SELECT_V2 SQUARED_DIFFERENCE MIRROR_PAD ABS NEG"
    " FLOOR CEIL ARG_MAX"
).split()
# LiteRT's reference resolver lacks CEIL entirely and registers TILE only up to version 2 (int8 is 3).
NOT_IN_REFERENCE_RESOLVER = {("CEIL", "float32"), ("CEIL", "int8"), ("CEIL", "int16"), ("TILE", "int8")}


@pytest.mark.parametrize("dtype", ["float32", "int8", "int16"])
def test_litert_resolves_every_op_at_the_version_we_write(dtype):
    from edgeq.testing.litert import Interpreter, OpResolverType

    quant = None if dtype == "float32" else QuantParams(0.1, 0)
    refused = []
    for op_type in EDGEQ_OPS:
        # Op resolution happens when the interpreter is built, before shapes are checked.
        graph = Graph([Tensor(n, (1, 2, 2, 2), dtype, quant=quant) for n in ("a", "b", "c", "y")],
                      [Op(op_type, ["a", "b", "c"], ["y"])], ["a"], ["y"])
        data = write_tflite(graph)
        for resolver in (OpResolverType.AUTO, OpResolverType.BUILTIN_REF):
            if resolver == OpResolverType.BUILTIN_REF and (op_type, dtype) in NOT_IN_REFERENCE_RESOLVER:
                continue
            try:
                Interpreter(model_content=data, experimental_op_resolver_type=resolver)
            except (RuntimeError, ValueError):
                refused.append((op_type, resolver.name))
    assert refused == []


# -- LiteRT as referee ----------------------------------------------------------------------------

def test_litert_runs_float_conv_add_like_numpy():
    w, b, c = _float(4, 3, 3, 2), _float(4), _float(1, 5, 5, 4)
    graph = Graph(
        [Tensor("x", (1, 5, 5, 2)), Tensor("w", w.shape, data=w), Tensor("b", (4,), data=b),
         Tensor("h", (1, 5, 5, 4)), Tensor("c", c.shape, data=c), Tensor("y", (1, 5, 5, 4))],
        [Op("CONV_2D", ["x", "w", "b"], ["h"], {"padding": "SAME", "stride_w": 1, "stride_h": 1}),
         Op("ADD", ["h", "c"], ["y"])],
        ["x"],
        ["y"],
    )
    x = _float(1, 5, 5, 2)
    interpreter = _litert(write_tflite(graph))
    assert interpreter.get_signature_list() == {"serving_default": {"inputs": ["x"], "outputs": ["y"]}}
    got = interpreter.get_signature_runner("serving_default")(x=x)["y"]
    np.testing.assert_allclose(got, _conv_same_nhwc(x, w, b) + c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reference_kernels", [False, True], ids=["default", "builtin_ref"])
def test_litert_runs_int8_per_channel_conv(reference_kernels):
    graph, w, bias = _int8_conv_graph()
    x = RNG.uniform(-1, 1, (1, 6, 6, 2)).astype(np.float32)
    interpreter = _litert(write_tflite(graph), reference_kernels)
    got = interpreter.get_signature_runner()(x=x)["y"]
    # Input, weight and output rounding together stay within a few output steps (0.1 each).
    np.testing.assert_allclose(got, _conv_same_nhwc(x, w, bias), atol=0.25)


def test_litert_loads_file_without_tensor_names():
    graph, _, _ = _int8_conv_graph()
    interpreter = _litert(write_tflite(graph, store_names=False))
    assert interpreter.get_signature_list()["serving_default"] == {"inputs": ["x"], "outputs": ["y"]}
    got = interpreter.get_signature_runner()(x=np.zeros((1, 6, 6, 2), np.float32))["y"]
    assert got.shape == (1, 6, 6, 4)


# -- malformed files ------------------------------------------------------------------------------

def test_read_rejects_a_non_flatbuffer():
    with pytest.raises(ModelError, match="TFL3"):
        read_tflite(b"this is plainly not a model file")


def test_read_rejects_a_wrong_file_identifier():
    data = bytearray(write_tflite(_mixed_graph()))
    data[4:8] = b"TFL2"
    with pytest.raises(ModelError, match="identifier"):
        read_tflite(bytes(data))


@pytest.mark.parametrize("kept_fraction", [0.02, 0.5, 0.9])
def test_read_rejects_a_truncated_file(kept_fraction):
    data = write_tflite(_mixed_graph())
    with pytest.raises(ModelError):
        read_tflite(data[: int(len(data) * kept_fraction)])


def test_read_names_the_tensor_whose_buffer_does_not_fit_its_shape():
    graph = Graph([Tensor("w", (2, 2), data=np.ones((2, 2), np.float32)), Tensor("x", (2, 3)), Tensor("y", (2, 3))],
                  [Op("ADD", ["x", "w"], ["y"])], ["x"], ["y"])
    graph["w"].shape = (2, 3)  # now 16 bytes of data claim to be 24
    with pytest.raises(ModelError, match="tensor 'w'.*16 bytes"):
        read_tflite(write_tflite(graph))

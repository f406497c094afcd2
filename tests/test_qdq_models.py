"""Quantized ONNX models as quantization tools write them.

QDQ models (onnxruntime's ``quantize_static`` in the QDQ format; tests/models/qat_cnn_qdq.onnx, a
PyTorch quantization-aware-training export) convert to int8 TFLite with the scales and zero points the
model states, with no calibration samples. The referee is onnxruntime running the QDQ model itself
(unoptimized: each QuantizeLinear/DequantizeLinear as written, the QDQ semantics): our int8 outputs
stay within 2 steps of the output's quantization, and every integer tensor equals LiteRT's reference
kernels (BUILTIN_REF) on our file. Dynamically quantized models are refused with what to do instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

quantization = pytest.importorskip("onnxruntime.quantization")

from edgeq.converter.api import convert  # noqa: E402
from edgeq.runtime.ir import ModelError  # noqa: E402
from edgeq.testing.referees import integer_tensor_mismatches, nchw_to_nhwc, nhwc_to_nchw, run_edgeq, run_onnxruntime  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parent / "models"
INPUT_SHAPE = (1, 3, 16, 16)
# Our int8 output against onnxruntime's QDQ output, in steps of the output's scale (the model's own):
# the float arithmetic between onnxruntime's Q/DQ pairs and TFLite's fixed-point requantization round
# apart by one step now and then, in any layer.
MAX_OUTPUT_STEPS = 2
VARIANTS = [("QUInt8", False), ("QUInt8", True), ("QInt8", False), ("QInt8", True)]


def float_cnn(softmax: bool = False) -> onnx.ModelProto:
    """conv 3x3 + relu, maxpool, depthwise 3x3, conv 1x1 + relu, a residual add, global average pool,
    flatten and gemm (then softmax): the ops of a small classifier, on a [1, 3, 16, 16] image."""
    rng = np.random.default_rng(0)

    def weight(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8, name="depthwise2"),
        helper.make_node("Conv", ["c2", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Add", ["r3", "c3"], ["a3"], name="add3"),
        helper.make_node("GlobalAveragePool", ["a3"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["logits" if softmax else "y"], transB=1, name="fc"),
    ] + ([helper.make_node("Softmax", ["logits"], ["y"], axis=-1, name="softmax")] if softmax else [])
    initializers = [weight("w1", 8, 3, 3, 3), weight("b1", 8, scale=0.1), weight("w2", 8, 1, 3, 3),
                    weight("b2", 8, scale=0.1), weight("w3", 16, 8, 1, 1), weight("b3", 16, scale=0.1),
                    weight("w4", 10, 16), weight("b4", 10, scale=0.1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, INPUT_SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def images(count: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(INPUT_SHAPE).astype(np.float32) for _ in range(count)]


class Samples(quantization.CalibrationDataReader):
    def __init__(self):
        self.feeds = iter({"x": x} for x in images(16, seed=1))

    def get_next(self):
        return next(self.feeds, None)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Path of the float CNN ("float"), and of its QDQ quantizations by (activation type, per channel),
    ("QUInt8 weights", True) and ("QUInt8 softmax", True) (the CNN ending in a softmax)."""
    folder = tmp_path_factory.mktemp("qdq")
    paths = {"float": folder / "float.onnx", "float softmax": folder / "float_softmax.onnx"}
    onnx.save(float_cnn(), str(paths["float"]))
    onnx.save(float_cnn(softmax=True), str(paths["float softmax"]))
    QuantType = quantization.QuantType
    for activations, per_channel in VARIANTS + [("QUInt8 weights", True), ("QUInt8 softmax", True)]:
        path = folder / f"{activations.replace(' ', '_')}_{per_channel}.onnx"
        weights = QuantType.QUInt8 if activations == "QUInt8 weights" else QuantType.QInt8
        source = paths["float softmax" if activations.endswith("softmax") else "float"]
        quantization.quantize_static(str(source), str(path), Samples(),
                                     quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel,
                                     activation_type=getattr(QuantType, activations.split()[0]),
                                     weight_type=weights)
        paths[(activations, per_channel)] = path
    return paths


def output_steps(model_path: Path, result, inputs: list) -> float:
    """The largest difference between onnxruntime on the QDQ model and our runtime on the int8 file,
    in steps of the int8 output's scale."""
    model = onnx.load(str(model_path))
    output = result.graph[result.graph.outputs[0]]
    worst = 0.0
    for x in inputs:
        (expected,) = run_onnxruntime(model, {model.graph.input[0].name: x})
        (got,) = run_edgeq(result.content, [nchw_to_nhwc(x)])
        worst = max(worst, float(np.max(np.abs(nhwc_to_nchw(got) - expected))))
    scale = output.quant.scale[0] if output.quant is not None else result.graph[inner_output(result)].quant.scale[0]
    return worst / float(scale)


def inner_output(result) -> str:
    """The int8 tensor that the graph's final DEQUANTIZE reads."""
    (dequantize,) = [op for op in result.graph.ops if op.outputs == [result.graph.outputs[0]]]
    return dequantize.inputs[0]


def stated_params(model_path: Path, tensor: str) -> tuple:
    """(scale, zero point as int8) of the QuantizeLinear that reads ``tensor`` in the QDQ model."""
    model = onnx.load(str(model_path))
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    (node,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor]
    zero_point = constants[node.input[2]]
    shift = 128 if zero_point.dtype == np.uint8 else 0
    return float(constants[node.input[1]]), int(zero_point) - shift


@pytest.mark.parametrize("activations, per_channel", VARIANTS)
def test_qdq_model_converts_to_int8_without_calibration_and_matches_onnxruntime(models, activations, per_channel):
    path = models[(activations, per_channel)]
    result = convert(path, quantize="int8")
    steps = output_steps(path, result, images(16, seed=2))
    print(f"{activations} per_channel={per_channel}: worst output difference {steps:.2f} steps")
    assert steps <= MAX_OUTPUT_STEPS
    assert result.float_ops == []


@pytest.mark.parametrize("activations, per_channel", VARIANTS)
def test_qdq_int8_model_equals_litert_reference_in_every_integer_tensor(models, activations, per_channel):
    content = convert(models[(activations, per_channel)], quantize="int8").content
    for x in images(4, seed=3):
        mismatches = integer_tensor_mismatches(content, [nchw_to_nhwc(x)])
        assert mismatches and sum(mismatches.values()) == 0, {k: v for k, v in mismatches.items() if v}


def test_qdq_pairs_are_dissolved_leaving_conversions_only_at_the_inputs_and_outputs(models):
    graph = convert(models[("QUInt8", True)], quantize="int8").graph
    conversions = [(i, op) for i, op in enumerate(graph.ops) if op.type in ("QUANTIZE", "DEQUANTIZE")]
    assert [(i, op.type) for i, op in conversions] == [(0, "QUANTIZE"), (len(graph.ops) - 1, "DEQUANTIZE")]
    assert conversions[0][1].inputs == graph.inputs and conversions[1][1].outputs == graph.outputs


def test_uint8_activation_params_are_the_models_with_the_zero_point_shifted_by_128(models):
    path = models[("QUInt8", False)]
    graph = convert(path, quantize="int8").graph
    # onnxruntime folds relu1 into the QuantizeLinear after conv1 (zero point 0, so the int8 range
    # starts at 0) and names conv1's output r1.
    scale, zero_point = stated_params(path, "r1")
    assert graph["r1"].quant.scale[0] == np.float32(scale)
    assert graph["r1"].quant.zero_point[0] == zero_point == -128


def test_per_channel_weight_scales_are_the_models_own(models):
    path = models[("QInt8", True)]
    model = onnx.load(str(path))
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    (conv3,) = [n for n in model.graph.node if n.name == "conv3"]
    (weight_dq,) = [n for n in model.graph.node if n.output[0] == conv3.input[1]]
    stated = constants[weight_dq.input[1]]
    assert stated.shape == (16,)
    graph = convert(path, quantize="int8").graph
    (op,) = [op for op in graph.ops if op.name == "conv3"]
    np.testing.assert_array_equal(graph[op.inputs[1]].quant.scale, stated)
    np.testing.assert_array_equal(graph[op.inputs[1]].data.transpose(0, 3, 1, 2), constants[weight_dq.input[0]])


def test_softmax_takes_the_specs_fixed_output_scale_and_says_where_it_overrides_the_model(models):
    """onnxruntime quantizes a softmax output with scale 1/255; TFLite's int8 softmax writes 1/256. The
    two output grids differ by up to half a step more."""
    path = models[("QUInt8 softmax", True)]
    result = convert(path, quantize="int8")
    output = result.graph[inner_output(result)]
    assert (output.quant.scale[0], output.quant.zero_point[0]) == (np.float32(1 / 256), -128)
    assert any("'y': the int8 spec fixes (scale 0.00390625, zero point -128) where the model states (scale 0.00392157"
               in note for note in result.notes), result.notes
    assert output_steps(path, result, images(16, seed=2)) <= MAX_OUTPUT_STEPS + 0.5


def test_uint8_weights_are_requantized_to_symmetric_int8_with_a_note(models):
    path = models[("QUInt8 weights", True)]
    result = convert(path, quantize="int8")
    assert sum("uint8 weights requantized to symmetric int8" in note for note in result.notes) == 4
    for op in result.graph.ops:
        if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            weights = result.graph[op.inputs[1]]
            assert weights.dtype == np.int8 and not weights.quant.zero_point.any()
    assert output_steps(path, result, images(16, seed=2)) <= MAX_OUTPUT_STEPS + 1  # weights on another grid


def test_float_conversion_of_a_qdq_model_is_its_float_model_and_says_so(models):
    result = convert(models[("QInt8", True)])
    assert {op.type for op in result.graph.ops}.isdisjoint({"QUANTIZE", "DEQUANTIZE"})
    assert any("--quantize int8 keeps its own scales" in note for note in result.notes)


def test_dynamically_quantized_model_is_refused_with_what_to_do(models, tmp_path):
    path = tmp_path / "dynamic.onnx"
    quantization.quantize_dynamic(str(models["float"]), str(path), weight_type=quantization.QuantType.QInt8)
    with pytest.raises(ModelError, match=r"^dynamically quantized ONNX \(DynamicQuantizeLinear '.+'\) is not "
                                         r"supported: convert the float model with --quantize dynamic"):
        convert(path, quantize="int8")


def test_qoperator_model_is_refused_with_what_to_do(models, tmp_path):
    path = tmp_path / "qoperator.onnx"
    quantization.quantize_static(str(models["float"]), str(path), Samples(),
                                 quant_format=quantization.QuantFormat.QOperator)
    with pytest.raises(ModelError, match=r"QOperator format \(QLinearConv 'conv1_quant'\) is not supported: "
                                         r"quantize the float model in the QDQ format"):
        convert(path, quantize="int8")


# -- PyTorch's quantization-aware-training export (tests/models/qat_cnn_qdq.onnx, made by
# scripts/make_qat_model.py: fake-quantized float weights behind Q/DQ, no Q/DQ after pool and flatten)

QAT_MODEL = MODELS_DIR / "qat_cnn_qdq.onnx"


def test_pytorch_qat_export_converts_to_int8_within_two_output_steps_of_onnxruntime():
    result = convert(QAT_MODEL, quantize="int8")
    steps = output_steps(QAT_MODEL, result, images(16, seed=2))
    print(f"PyTorch QAT export: worst output difference {steps:.2f} steps; notes {result.notes}")
    assert steps <= MAX_OUTPUT_STEPS
    assert [op.type for op in result.graph.ops].count("QUANTIZE") == 1


def test_pytorch_qat_export_equals_litert_reference_in_every_integer_tensor():
    content = convert(QAT_MODEL, quantize="int8").content
    for x in images(4, seed=3):
        mismatches = integer_tensor_mismatches(content, [nchw_to_nhwc(x)])
        assert mismatches and sum(mismatches.values()) == 0, {k: v for k, v in mismatches.items() if v}


def test_tensors_the_qat_export_leaves_unquantized_take_their_inputs_params():
    """PyTorch's quantized average pool and flatten keep their input's params, so its export puts no
    QuantizeLinear after them."""
    result = convert(QAT_MODEL, quantize="int8")
    graph = result.graph
    (mean,) = [op for op in graph.ops if op.type == "MEAN"]
    (reshape,) = [op for op in graph.ops if op.type == "RESHAPE"]
    assert graph[mean.outputs[0]].quant == graph[mean.inputs[0]].quant == graph[reshape.outputs[0]].quant
    assert any("tensors the model states no quantization for take their input's" in n for n in result.notes)


def test_qat_weights_at_minus_128_are_requantized_to_tflites_symmetric_range_with_a_note():
    """PyTorch's symmetric int8 weights span [-128, 127]; TFLite's span [-127, 127]."""
    result = convert(QAT_MODEL, quantize="int8")
    flagged = [n for n in result.notes if "int8 weights reach -128" in n]
    assert flagged
    for op in result.graph.ops:
        if op.type in ("CONV_2D", "FULLY_CONNECTED"):
            assert result.graph[op.inputs[1]].data.min() >= -127


# -- a transformer quantized by onnxruntime (tests/models/bert_encoder.onnx): LayerNormalization is one
# ONNX node between Q/DQ pairs, but several TFLite ops inside, whose tensors the model states nothing for

BERT_INPUTS = ("input_ids", "attention_mask")


def bert_inputs(split: str, count: int) -> list:
    with np.load(MODELS_DIR / "bert_encoder_data.npz") as data:
        return [{n: data[f"{split}_{n}"][i:i + 1] for n in BERT_INPUTS} for i in range(count)]


class BertSamples(quantization.CalibrationDataReader):
    def __init__(self):
        self.feeds = iter(bert_inputs("calib", 16))

    def get_next(self):
        return next(self.feeds, None)


@pytest.fixture(scope="module")
def qdq_bert(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("qdq_bert") / "bert_encoder_qdq.onnx"
    quantization.quantize_static(str(MODELS_DIR / "bert_encoder.onnx"), str(path), BertSamples(),
                                 quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                                 activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8)
    return path


def embedding_cosine(model_path: Path, content: bytes) -> float:
    """Cosine of our runtime's outputs to onnxruntime's on the QDQ model, over 16 evaluation sentences."""
    model = onnx.load(str(model_path))
    expected, got = [], []
    for feeds in bert_inputs("eval", 16):
        (want,) = run_onnxruntime(model, feeds)
        expected.append(want)
        got.append(run_edgeq(content, [feeds[n] for n in BERT_INPUTS])[0].reshape(want.shape))
    a, b = np.concatenate(got).ravel(), np.concatenate(expected).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_ops_a_qdq_model_states_nothing_for_stay_float_without_calibration_and_say_why(qdq_bert):
    result = convert(qdq_bert, quantize="int8", input_shapes={n: (1, 16) for n in BERT_INPUTS})
    unstated = [op for op in result.float_ops if "the model states no quantization for" in op]
    assert any("LayerNormalization" in op and op.startswith("RSQRT") for op in unstated)
    assert {result.graph[op.outputs[0]].dtype for op in result.graph.ops
            if op.type in ("FULLY_CONNECTED", "BATCH_MATMUL")} == {np.dtype(np.int8)}
    cosine = embedding_cosine(qdq_bert, result.content)
    print(f"QDQ bert_encoder, no calibration: {len(unstated)} ops float, cosine to onnxruntime {cosine:.5f}")
    assert cosine >= 0.998


def test_calibration_samples_range_only_what_a_qdq_model_leaves_unstated(qdq_bert, tmp_path):
    calibration = tmp_path / "calibration.npz"
    with np.load(MODELS_DIR / "bert_encoder_data.npz") as data:
        np.savez(calibration, **{n: data[f"calib_{n}"] for n in BERT_INPUTS})
    shapes = {n: (1, 16) for n in BERT_INPUTS}
    result = convert(qdq_bert, quantize="int8", input_shapes=shapes, calibration=calibration)
    assert all("no int8 kernel rule" in op for op in result.float_ops), result.float_ops
    uncalibrated = convert(qdq_bert, quantize="int8", input_shapes=shapes).graph
    for op in result.graph.ops:  # a tensor the model states params for keeps them
        if op.type == "FULLY_CONNECTED" and uncalibrated[op.outputs[0]].dtype == np.int8:
            assert result.graph[op.outputs[0]].quant == uncalibrated[op.outputs[0]].quant
    cosine = embedding_cosine(qdq_bert, result.content)
    print(f"QDQ bert_encoder with calibration: cosine to onnxruntime {cosine:.5f}")
    assert cosine >= 0.998


def concat_model() -> onnx.ModelProto:
    """Two convolutions of one image, one with weights 10x the other's, concatenated on the channels."""
    rng = np.random.default_rng(5)
    weights = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * s).astype(np.float32), f"w{i}")
               for i, s in enumerate((0.1, 1.0))]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["small"], pads=[1, 1, 1, 1], name="conv_small"),
             helper.make_node("Conv", ["x", "w1"], ["large"], pads=[1, 1, 1, 1], name="conv_large"),
             helper.make_node("Concat", ["small", "large"], ["y"], axis=1, name="concat")]
    graph = helper.make_graph(nodes, "concat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, INPUT_SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_concat_inputs_share_one_scale_and_the_note_says_which_of_the_models(tmp_path):
    """TFLite's int8 CONCATENATION does not requantize: its inputs and output take one set of params,
    the widest the model states for them, and the narrower branch loses resolution."""
    source, path = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(concat_model(), str(source))
    quantization.quantize_static(str(source), str(path), Samples(), quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=True)
    result = convert(path, quantize="int8")
    (concat,) = [op for op in result.graph.ops if op.type == "CONCATENATION"]
    output = result.graph[concat.outputs[0]].quant
    assert all(result.graph[n].quant == output for n in concat.inputs)
    assert any("take (scale" in note and "(the spec asks one scale)" in note for note in result.notes), result.notes
    assert output_steps(path, result, images(8, seed=2)) <= MAX_OUTPUT_STEPS


def test_cli_converts_a_qdq_model_to_int8_without_calibration(tmp_path):
    from click.testing import CliRunner

    from edgeq.cli import main

    out = tmp_path / "qat.tflite"
    result = CliRunner().invoke(main, ["convert", str(QAT_MODEL), "-o", str(out), "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    assert "note: quantized (QDQ) model: int8 with its own scales and zero points" in result.output
    assert out.read_bytes()[4:8] == b"TFL3"


def test_cli_refuses_a_dynamically_quantized_model_in_one_line(models, tmp_path):
    from click.testing import CliRunner

    from edgeq.cli import main

    path = tmp_path / "dynamic.onnx"
    quantization.quantize_dynamic(str(models["float"]), str(path), weight_type=quantization.QuantType.QInt8)
    result = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "m.tflite"), "--quantize", "int8"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output
    assert "dynamically quantized ONNX" in result.output and "--quantize dynamic" in result.output

"""TFLite's 16x8 quantization mode (``--quantize int16x8``): int16 activations (symmetric, zero point 0),
int8 per-channel weights, int64 biases.

- the quantizer writes that spec, keeps the ops without an int16 kernel in float and says which;
- QUANTIZE between int8 and int16 (both ways), and from float, equals LiteRT's reference kernels;
- whole models (the digits samples, a YOLO-style detector, a BERT-style encoder) load on LiteRT, give
  BUILTIN_REF's integers in every tensor, and stay closer to the float model than int8 does (SQNR of the
  outputs against float on evaluation samples; both printed);
- ``edgeq convert --quantize int16x8 --json`` carries the mode and the SQNR.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from click.testing import CliRunner  # noqa: E402

from edgeq.cli import main  # noqa: E402
from edgeq.converter.api import convert  # noqa: E402
from edgeq.converter.quantize import INT16_RULES, RULES, quantize_int16x8  # noqa: E402
from edgeq.runtime.interpreter import Interpreter  # noqa: E402
from edgeq.runtime.ir import Graph, ModelError, Op, QuantParams, Tensor  # noqa: E402
from edgeq.runtime.tflite_format.writer import write_tflite  # noqa: E402
from edgeq.testing import task_metrics  # noqa: E402
from edgeq.testing.referees import assert_exact, integer_tensor_mismatches, nchw_to_nhwc  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


# -- the quantizer ----------------------------------------------------------------------------------

def _conv_softmax_graph() -> Graph:
    """x [1, 6, 6, 3] -> CONV_2D (4 channels, bias) -> RESHAPE [1, 144] -> LOG_SOFTMAX (no int16 kernel)."""
    rng = np.random.default_rng(0)
    g = Graph(tensors=[], ops=[], inputs=["x"], outputs=["y"])
    g.add_tensor(Tensor("x", (1, 6, 6, 3), np.float32))
    g.add_constant("w", (rng.standard_normal((4, 3, 3, 3)) * [[[[1.0]]], [[[0.1]]], [[[2.0]]], [[[0.5]]]]).astype(np.float32))
    g.add_constant("b", rng.standard_normal(4).astype(np.float32))
    g.add_constant("shape", np.array([1, 144], np.int32))
    for name, shape in (("c", (1, 6, 6, 4)), ("r", (1, 144)), ("y", (1, 144))):
        g.add_tensor(Tensor(name, shape, np.float32))
    g.ops = [Op("CONV_2D", ["x", "w", "b"], ["c"], {"padding": "SAME", "stride_h": 1, "stride_w": 1,
                                                         "fused_activation_function": "NONE"}, name="conv"),
             Op("RESHAPE", ["c", "shape"], ["r"], {}, name="flatten"),
             Op("LOG_SOFTMAX", ["r"], ["y"], {}, name="log_softmax")]
    return g


def _calibrated(graph: Graph) -> dict:
    from edgeq.converter.calibrate import calibrate

    x = np.random.default_rng(1).standard_normal((8, 6, 6, 3)).astype(np.float32)
    return calibrate(graph, {"x": x}, "minmax", progress=False)


def test_int16x8_activations_are_symmetric_int16_with_int8_per_channel_weights_and_int64_bias():
    graph = _conv_softmax_graph()
    ranges = _calibrated(graph)
    q = quantize_int16x8(graph, ranges)
    conv = next(op for op in q.ops if op.type == "CONV_2D")
    x, w, b, c = (q[n] for n in (*conv.inputs, conv.outputs[0]))
    assert x.dtype == c.dtype == np.int16
    assert np.all(x.quant.zero_point == 0) and np.all(c.quant.zero_point == 0)
    lo, hi = ranges[graph.ops[0].outputs[0]]
    assert np.isclose(c.quant.scale[0], max(-lo, hi) / 32767, rtol=1e-6)
    assert w.dtype == np.int8 and w.quant.scale.size == 4 and np.abs(w.data).max() == 127
    assert b.dtype == np.int64
    assert np.allclose(b.quant.scale, x.quant.scale[0] * w.quant.scale, rtol=1e-6)


def test_int16x8_keeps_ops_without_an_int16_kernel_in_float_and_says_which():
    q = quantize_int16x8(_conv_softmax_graph(), _calibrated(_conv_softmax_graph()))
    assert [op.type for op in q.ops] == ["QUANTIZE", "CONV_2D", "RESHAPE", "DEQUANTIZE", "LOG_SOFTMAX"]
    assert len(q.float_ops) == 1 and "LOG_SOFTMAX" in q.float_ops[0] and "no int16 kernel" in q.float_ops[0]
    assert [s.split(" ")[0] for s in q.int16_ops] == ["CONV_2D", "RESHAPE"]


def test_int16x8_graph_equals_litert_reference_kernels_in_every_integer_tensor():
    graph = _conv_softmax_graph()
    content = write_tflite(quantize_int16x8(graph, _calibrated(graph)))
    x = np.random.default_rng(2).standard_normal((1, 6, 6, 3)).astype(np.float32) * 1.5  # some saturate
    counts = integer_tensor_mismatches(content, [x])
    assert counts and sum(counts.values()) == 0, counts


def test_int16x8_rules_are_a_subset_of_the_int8_rules():
    # Every int16 op is also quantized in int8 with the same weight and bias inputs (its rule differs at
    # most in the pinned output params), so one table decides what int16x8 quantizes.
    for op_type, rule in INT16_RULES.items():
        assert op_type in RULES
        assert (rule.weight, rule.bias, rule.input) == (RULES[op_type].weight, RULES[op_type].bias, RULES[op_type].input)


def test_int16x8_widens_a_sum_range_litert_could_not_rescale_and_the_file_equals_litert():
    # a - b of nearly equal values: the calibrated output range is 10^6 times narrower than the inputs',
    # finer than LiteRT's int16 SUB can rescale to (it needs 2 max(input scales) < 2^15 output scale).
    g = Graph(tensors=[], ops=[], inputs=["a", "b"], outputs=["y"])
    for name in "aby":
        g.add_tensor(Tensor(name, (1, 8), np.float32))
    g.ops = [Op("SUB", ["a", "b"], ["y"], {"fused_activation_function": "NONE", "pot_scale_int16": False}, name="sub")]
    q = quantize_int16x8(g, {"a": (-100.0, 100.0), "b": (-100.0, 100.0), "y": (-1e-4, 1e-4)})
    sub = next(op for op in q.ops if op.type == "SUB")
    input_scale, output_scale = q[sub.inputs[0]].quant.scale[0], q[sub.outputs[0]].quant.scale[0]
    assert 2 * input_scale < 2**15 * output_scale
    a = np.linspace(-1, 1, 8, dtype=np.float32)[None]
    counts = integer_tensor_mismatches(write_tflite(q), [a, a + np.float32(1e-5)])
    assert counts and sum(counts.values()) == 0, counts


def test_int16x8_refuses_integer_inputs_and_outputs():
    graph = _conv_softmax_graph()
    with pytest.raises(ModelError, match="float32 inputs and outputs"):
        quantize_int16x8(graph, _calibrated(graph), io_dtype="int8")


# -- QUANTIZE between int8, int16 and float ------------------------------------------------------------

def _quantize_graph(in_dtype, in_quant, out_quant) -> Graph:
    g = Graph(tensors=[], ops=[], inputs=["a"], outputs=["b"])
    g.add_tensor(Tensor("a", (4, 300), np.dtype(in_dtype), None, in_quant))
    g.add_tensor(Tensor("b", (4, 300), np.dtype(out_quant[1]), None, QuantParams(*out_quant[0])))
    g.ops = [Op("QUANTIZE", ["a"], ["b"], {}, name="q")]
    return g


@pytest.mark.parametrize("scale_in,scale_out", [(0.02, 0.0007), (0.0007, 0.02), (0.01, 0.01), (0.013, 0.00391)])
def test_quantize_int8_to_int16_equals_litert(scale_in, scale_out):
    a = np.random.default_rng(3).integers(-128, 128, (4, 300)).astype(np.int8)
    assert_exact(_quantize_graph(np.int8, QuantParams(scale_in, 5), ((scale_out, 0), np.int16)), [a])


@pytest.mark.parametrize("scale_in,scale_out", [(0.0007, 0.02), (0.02, 0.0007), (0.00391, 0.013), (0.001, 0.001)])
def test_quantize_int16_to_int8_equals_litert(scale_in, scale_out):
    a = np.random.default_rng(4).integers(-32768, 32768, (4, 300)).astype(np.int16)
    assert_exact(_quantize_graph(np.int16, QuantParams(scale_in, 0), ((scale_out, -3), np.int8)), [a])


def test_quantize_float_to_int16_equals_litert():
    a = (np.random.default_rng(5).standard_normal((4, 300)) * 3).astype(np.float32)
    assert_exact(_quantize_graph(np.float32, None, ((2.5 / 32767, 0), np.int16)), [a])


# -- whole models ---------------------------------------------------------------------------------------

def _run(content: bytes, xs) -> np.ndarray:
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    output = interpreter.get_output_details()[0]["index"]
    outs = []
    for x in xs:
        interpreter.set_tensor(index, x[None].astype(np.float32))
        interpreter.invoke()
        outs.append(interpreter.get_tensor(output).copy())
    return np.concatenate(outs)


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn", "digits_mobilenetv2"])
def test_int16x8_sample_model_equals_litert_and_beats_int8(name):
    with np.load(SAMPLES / f"{name}_test.npz") as test:
        xs = test["input"][:100]
    xs = nchw_to_nhwc(xs) if xs.ndim == 4 else xs
    reference = _run(convert(SAMPLES / f"{name}.onnx").content, xs)
    sqnr = {}
    for mode in ("int8", "int16x8"):
        result = convert(SAMPLES / f"{name}.onnx", quantize=mode, calibration=SAMPLES / f"{name}_calib.npz")
        sqnr[mode] = task_metrics.sqnr_db(_run(result.content, xs), reference)
    counts = integer_tensor_mismatches(result.content, [xs[:1]])
    assert any(result.graph.tensors[n].dtype == np.int16 for n in counts if n in result.graph.tensors)
    assert sum(counts.values()) == 0, {k: v for k, v in counts.items() if v}
    print(f"\n{name}: output SQNR against float on {len(xs)} test samples: int8 {sqnr['int8']:.1f} dB, "
          f"int16x8 {sqnr['int16x8']:.1f} dB")
    assert sqnr["int16x8"] > sqnr["int8"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolo_detector", "bert_encoder"])
def test_int16x8_test_model_equals_litert_and_beats_int8(name):
    from edgeq.testing.real_world_models import (converted, fidelity, integer_mismatches, onnxruntime_outputs,
                                                 tflite_outputs)

    expected = onnxruntime_outputs(name)
    sqnr = {}
    for mode in ("int8", "int16x8"):
        sqnr[mode] = fidelity(tflite_outputs(name, converted(name, mode).content, "edgeq"), expected)[1]
    result = converted(name, "int16x8")
    counts = integer_mismatches(result, name)
    assert any(result.graph.tensors[n].dtype == np.int16 for n in counts if n in result.graph.tensors)
    assert sum(counts.values()) == 0, {k: v for k, v in counts.items() if v}
    print(f"\n{name}: worst output's SQNR against float on the evaluation samples: int8 {sqnr['int8']:.1f} dB, "
          f"int16x8 {sqnr['int16x8']:.1f} dB; kept in float in int16x8: {result.float_ops}")
    assert sqnr["int16x8"] > sqnr["int8"]


# -- int16 islands in an int8 model ------------------------------------------------------------------

@pytest.mark.slow
def test_int16_island_keeps_the_detector_integer_only_and_its_top_detection(tmp_path):
    # The detector's output Concat joins pixel boxes and class probabilities: all-int8 leaves the
    # probabilities a few levels (top detection agrees with float on 73% of images); as an int16 island
    # the file stays integer-only: an int8 input, and the island's output stays int16 (int8 would undo it).
    from edgeq.testing.real_world_models import MODEL_SPECS, MODELS_DIR, inputs, onnxruntime_outputs, task_metric

    name = "yolo_detector"
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **inputs(name, "calib"))
    result = convert(MODELS_DIR / f"{name}.onnx", input_shapes=MODEL_SPECS[name].input_shapes, quantize="int8",
                     calibration=calibration, float_fallback="int16", io_dtype="int8")
    assert result.float_ops == []
    assert all(t.dtype != np.float32 for name_, t in result.graph.tensors.items())
    assert any("int16 island: CONCATENATION" in note for note in result.notes)
    # The integer tensors from the int8 input on: the input quantized as the file says, the rest compared.
    interpreter = Interpreter(model_content=result.content)
    interpreter.allocate_tensors()
    (input_detail,), (output_detail,) = interpreter.get_input_details(), interpreter.get_output_details()
    (in_scale, in_zero), (out_scale, out_zero) = input_detail["quantization"], output_detail["quantization"]
    images = nchw_to_nhwc(inputs(name, "eval")["images"])
    quantized = np.clip(np.round(images / in_scale) + in_zero, -128, 127).astype(np.int8)
    for image in quantized[:3]:
        counts = integer_tensor_mismatches(result.content, [image[None]])
        assert sum(counts.values()) == 0, {k: v for k, v in counts.items() if v}
    outputs = []
    for image in quantized:
        interpreter.set_tensor(input_detail["index"], image[None])
        interpreter.invoke()
        outputs.append((interpreter.get_tensor(output_detail["index"]).astype(np.float32) - out_zero) * out_scale)
    summary, figures = task_metric(name, onnxruntime_outputs(name), [np.concatenate(outputs)])
    print(f"\n{name}, int8 with an int16 island, integer-only: {summary}")
    assert figures["top_detection_agreement"] >= 0.95


# -- the command line -------------------------------------------------------------------------------

def test_convert_int16x8_json_carries_the_mode_and_the_sqnr(tmp_path):
    out = tmp_path / "cnn_16x8.tflite"
    result = CliRunner().invoke(main, ["convert", str(SAMPLES / "digits_cnn.onnx"), "-o", str(out), "--quantize",
                                       "int16x8", "--calibration", str(SAMPLES / "digits_cnn_calib.npz"), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["quantize"] == "int16x8"
    assert summary["int8_check"]["mode"] == "int16x8" and summary["int8_check"]["passed"]
    assert summary["int8_check"]["sqnr_db"] > 30
    assert summary["float_ops"] == []
    description = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).output)
    activations = [t for t in description["tensors"] if not t["constant"] and t["dtype"] != "float32"]
    assert activations and all(t["dtype"] == "int16" for t in activations)


def _boxes_and_scores_model(path: Path) -> Path:
    """x [1, 16] -> boxes in pixels (0..80) concatenated with class probabilities (0..1): a join of ranges
    80 times apart, as detectors end."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    weights = [numpy_helper.from_array(rng.normal(size=(16, n)).astype(np.float32), f"w{n}") for n in (4, 3)]
    nodes = [helper.make_node("MatMul", ["x", "w4"], ["box_logits"]),
             helper.make_node("Sigmoid", ["box_logits"], ["box_unit"]),
             helper.make_node("Mul", ["box_unit", "pixels"], ["boxes"]),
             helper.make_node("MatMul", ["x", "w3"], ["cls_logits"]),
             helper.make_node("Sigmoid", ["cls_logits"], ["scores"]),
             helper.make_node("Concat", ["boxes", "scores"], ["detections"], axis=1)]
    graph = helper.make_graph(nodes, "boxes_and_scores", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [1, 7])],
                              weights + [numpy_helper.from_array(np.array([80.0], np.float32), "pixels")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_convert_int8_json_lists_the_int16_islands(tmp_path):
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, x=np.random.default_rng(8).normal(size=(32, 16)).astype(np.float32))
    model = _boxes_and_scores_model(tmp_path / "detector.onnx")
    result = CliRunner().invoke(main, ["convert", str(model), "-o", str(tmp_path / "detector.tflite"), "--quantize",
                                       "int8", "--calibration", str(calibration), "--float-fallback", "int16", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["float_ops"] == []
    assert [line.split(" ")[0] for line in summary["int16_islands"]] == ["CONCATENATION"]

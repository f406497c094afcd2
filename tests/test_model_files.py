"""Model files as on-device frameworks ship them (tests/models/, made by scripts/make_model_files.py):
float16 weights behind DEQUANTIZE, int8 weights with scale and zero point, dynamic-range weights;
and the int8 ops such models need at versions LiteRT's reference kernels load."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeq.converter.api import convert, load_graph
from edgeq.converter.passes import fold_dequantized_constants
from edgeq.converter.quantize import quantize_dynamic
from edgeq.runtime.ir import Graph, Op, QuantParams, Tensor
from edgeq.runtime.size import size_breakdown
from edgeq.runtime.tflite_format.reader import read_tflite
from edgeq.runtime.tflite_format.writer import write_tflite
from referees import integer_tensor_mismatches, run_edgeq, run_litert

MODELS_DIR = Path(__file__).resolve().parent / "models"
FP16_CNN = MODELS_DIR / "fp16_cnn.tflite"
WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 24, 24, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calibration") / "images.npz"
    np.savez(path, image=_images(32, seed=1))
    return path


@pytest.fixture(scope="module")
def int8_conversion(calibration):
    return convert(FP16_CNN, quantize="int8", calibration=calibration)


# -- float16 weights behind DEQUANTIZE ------------------------------------------------------------

def test_float16_file_is_laid_out_with_dequantized_float16_weights():
    graph = read_tflite(FP16_CNN.read_bytes())
    dequantized = [op for op in graph.ops if op.type == "DEQUANTIZE"]
    assert len(dequantized) == 10
    assert all(graph[op.inputs[0]].dtype == np.float16 and graph[op.inputs[0]].is_constant for op in dequantized)


def test_litert_runs_the_float16_file_as_our_runtime_does():
    image = _images(1, seed=2)
    np.testing.assert_allclose(run_edgeq(FP16_CNN.read_bytes(), [image])[0],
                               run_litert(FP16_CNN.read_bytes(), [image])[0], rtol=1e-5, atol=1e-6)


def test_loading_a_float16_file_makes_its_weights_float32_constants():
    graph, notes = load_graph(FP16_CNN)
    source = read_tflite(FP16_CNN.read_bytes())
    assert not [op for op in graph.ops if op.type == "DEQUANTIZE"]
    for op in (op for op in graph.ops if op.type in WEIGHTED_OPS):
        weights = graph[op.inputs[1]]
        assert weights.is_constant and weights.dtype == np.float32
        stored = source[source.producers()[weights.name].inputs[0]].data
        np.testing.assert_array_equal(weights.data, stored.astype(np.float32))
    assert notes == ["10 weight tensors stored as float16 or int8 read as float32"]


def test_float16_file_converts_to_float_matching_litert_on_the_file():
    content = convert(FP16_CNN).content
    image = _images(1, seed=3)
    expected = run_litert(FP16_CNN.read_bytes(), [image])[0]
    np.testing.assert_allclose(run_litert(content, [image])[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_edgeq(content, [image])[0], expected, rtol=1e-5, atol=1e-6)


def test_float16_file_quantizes_every_op_to_int8(int8_conversion):
    assert int8_conversion.float_ops == []
    assert not [note for note in int8_conversion.notes if note.startswith("kept in float")]
    weights = [int8_conversion.graph[op.inputs[1]] for op in int8_conversion.graph.ops if op.type in WEIGHTED_OPS]
    assert len(weights) == 5 and all(w.dtype == np.int8 for w in weights)


def test_float16_file_quantized_to_int8_is_well_under_its_size(int8_conversion):
    assert len(int8_conversion.content) < 0.6 * FP16_CNN.stat().st_size


def test_float16_file_quantized_to_int8_gives_litert_reference_integers(int8_conversion):
    mismatches = integer_tensor_mismatches(int8_conversion.content, [_images(1, seed=4)])
    assert mismatches and not any(mismatches.values()), mismatches


def test_float16_file_quantized_to_int8_stays_close_to_float(int8_conversion):
    images = _images(8, seed=5)
    expected = np.concatenate([run_litert(FP16_CNN.read_bytes(), [x[None]])[0] for x in images])
    got = np.concatenate([run_edgeq(int8_conversion.content, [x[None]])[0] for x in images])
    assert np.abs(got - expected).max() < 0.02  # class probabilities
    sqnr_db = 10 * np.log10(np.sum(expected ** 2) / np.sum((got - expected) ** 2))
    assert sqnr_db > 30


def test_inspect_counts_float16_constants_behind_dequantize_as_weights_and_biases():
    graph = read_tflite(FP16_CNN.read_bytes())
    breakdown = size_breakdown(FP16_CNN.read_bytes())
    stored = {op.outputs[0]: graph[op.inputs[0]] for op in graph.ops if op.type == "DEQUANTIZE"}
    weighted = [op for op in graph.ops if op.type in WEIGHTED_OPS]
    assert breakdown["weights"] == sum(stored[op.inputs[1]].nbytes for op in weighted)
    assert breakdown["biases"] == sum(stored[op.inputs[2]].nbytes for op in weighted)
    assert breakdown["other_constants"] == graph["pool_axes"].nbytes


# -- int8 weights with scale and zero point -------------------------------------------------------

def _conv_with_dequantized_int8_weights() -> Graph:
    weights = np.arange(-36, 36, dtype=np.int8).reshape(2, 3, 3, 4)
    quant = QuantParams(np.array([0.5, 0.25], np.float32), np.array([3, -2]), axis=0)
    return Graph(
        [
            Tensor("x", (1, 5, 5, 4)),
            Tensor("w_int8", weights.shape, np.int8, weights, quant),
            Tensor("w", weights.shape),
            Tensor("b", (2,), data=np.array([1.0, -1.0], np.float32)),
            Tensor("y", (1, 5, 5, 2)),
        ],
        [
            Op("DEQUANTIZE", ["w_int8"], ["w"]),
            Op("CONV_2D", ["x", "w", "b"], ["y"], {"padding": "SAME", "stride_w": 1, "stride_h": 1}),
        ],
        ["x"],
        ["y"],
    )


def test_int8_weights_behind_dequantize_fold_with_their_scale_and_zero_point():
    graph, folded = fold_dequantized_constants(_conv_with_dequantized_int8_weights())
    assert folded == 1 and [op.type for op in graph.ops] == ["CONV_2D"]
    q = np.arange(-36, 36).reshape(2, 3, 3, 4)
    expected = (q - np.array([3, -2]).reshape(2, 1, 1, 1)) * np.array([0.5, 0.25]).reshape(2, 1, 1, 1)
    np.testing.assert_array_equal(graph["w"].data, expected.astype(np.float32))
    assert graph["w"].dtype == np.float32 and "w_int8" not in graph.tensors


def test_folding_dequantize_leaves_the_source_graph_unchanged():
    source = _conv_with_dequantized_int8_weights()
    fold_dequantized_constants(source)
    assert [op.type for op in source.ops] == ["DEQUANTIZE", "CONV_2D"] and not source["w"].is_constant


# -- dynamic-range (hybrid) weights ---------------------------------------------------------------

@pytest.fixture(scope="module")
def dynamic_range_file(tmp_path_factory) -> Path:
    float_graph, _ = load_graph(FP16_CNN)
    path = tmp_path_factory.mktemp("dynamic") / "dynamic_range.tflite"
    path.write_bytes(write_tflite(quantize_dynamic(float_graph)))
    return path


def test_loading_a_dynamic_range_file_makes_its_int8_weights_float32(dynamic_range_file):
    source = read_tflite(dynamic_range_file.read_bytes())
    graph, _ = load_graph(dynamic_range_file)
    for stored_op, op in zip((o for o in source.ops if o.type in WEIGHTED_OPS), (o for o in graph.ops if o.type in WEIGHTED_OPS)):
        stored = source[stored_op.inputs[1]]
        assert stored.dtype == np.int8
        shape = [1] * stored.data.ndim
        shape[stored.quant.axis] = -1
        expected = stored.data.astype(np.float64) * stored.quant.scale.astype(np.float64).reshape(shape)
        np.testing.assert_array_equal(graph[op.inputs[1]].data, expected.astype(np.float32))


def test_dynamic_range_file_quantizes_every_op_to_int8(dynamic_range_file, calibration):
    result = convert(dynamic_range_file, quantize="int8", calibration=calibration)
    assert result.float_ops == []
    mismatches = integer_tensor_mismatches(result.content, [_images(1, seed=6)])
    assert mismatches and not any(mismatches.values()), mismatches


# -- int8 ops at versions LiteRT's reference resolver loads ---------------------------------------

def test_int8_depth_to_space_runs_on_litert_reference_kernels_with_our_integers():
    quant = QuantParams(0.1, 3)
    graph = Graph([Tensor("x", (1, 2, 3, 8), np.int8, quant=quant), Tensor("y", (1, 4, 6, 2), np.int8, quant=quant)],
                  [Op("DEPTH_TO_SPACE", ["x"], ["y"], {"block_size": 2})], ["x"], ["y"])
    x = np.random.default_rng(7).integers(-128, 128, (1, 2, 3, 8)).astype(np.int8)
    mismatches = integer_tensor_mismatches(write_tflite(graph), [x])
    assert mismatches == {"x": 0, "y": 0}
    # DCR order: output pixel (2h + i, 2w + j) takes channels [(2i + j) * 2, (2i + j) * 2 + 2) of pixel (h, w)
    expected = x.reshape(1, 2, 3, 2, 2, 2).transpose(0, 1, 3, 2, 4, 5).reshape(1, 4, 6, 2)
    np.testing.assert_array_equal(run_edgeq(write_tflite(graph), [x])[0], expected)

"""Model files as on-device frameworks ship them (tests/models/, made by scripts/make_model_files.py):
float16 weights behind DEQUANTIZE, int8 weights with scale and zero point, dynamic-range weights;
the int8 ops such models need at versions LiteRT's reference kernels load; and custom ops
(MediaPipe's Convolution2DTransposeBias: kept by the reader, run by its kernel, converted to
TRANSPOSE_CONV)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeq.converter.api import convert, load_graph
from edgeq.converter.passes import fold_dequantized_constants, lower_custom_ops
from edgeq.converter.quantize import quantize_dynamic
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph, ModelError, Op, QuantParams, Tensor
from edgeq.runtime.size import size_breakdown
from edgeq.runtime.tflite_format.reader import read_tflite
from edgeq.runtime.tflite_format.writer import write_tflite
from edgeq.testing.referees import integer_tensor_mismatches, relative_max_error, run_edgeq, run_litert

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


# -- custom ops: MediaPipe's Convolution2DTransposeBias -------------------------------------------

TRANSPOSE_CONV_BIAS_FILE = MODELS_DIR / "transpose_conv_bias.tflite"
TFLITE_PADDING = {"SAME": 1, "VALID": 2}


def _features(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 5, 7, 3)).astype(np.float32)


def transpose_conv_bias_reference(x, filters, bias, padding: str, stride: int) -> np.ndarray:
    """The op as MediaPipe defines it: each input pixel adds input · filter into a patch of the
    output, starting at in * stride - padding_before; the output starts as the bias."""
    out_c, k_h, k_w, _ = filters.shape
    sizes = []
    for in_size, k in ((x.shape[1], k_h), (x.shape[2], k_w)):
        total = max(0, k - 1 - (in_size - 1) % stride) if padding == "SAME" else 0
        sizes.append((stride * (in_size - 1) + k - total, total // 2))
    (out_h, pad_top), (out_w, pad_left) = sizes
    out = np.broadcast_to(bias.astype(np.float64), (x.shape[0], out_h, out_w, out_c)).copy()
    for iy in range(x.shape[1]):
        for ix in range(x.shape[2]):
            for ky in range(k_h):
                for kx in range(k_w):
                    oy, ox = iy * stride - pad_top + ky, ix * stride - pad_left + kx
                    if 0 <= oy < out_h and 0 <= ox < out_w:
                        out[:, oy, ox, :] += x[:, iy, ix, :].astype(np.float64) @ filters[:, ky, kx, :].T.astype(np.float64)
    return out.astype(np.float32)


def _custom_options(padding: str, stride: int) -> bytes:
    return np.array([TFLITE_PADDING[padding], stride, stride], "<i4").tobytes()


def _transpose_conv_bias_graph(in_h, in_w, k, stride, padding, out_shape, custom_options=None, seed=0):
    rng = np.random.default_rng(seed)
    filters = rng.standard_normal((3, k, k, 2)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    options = {"custom_code": "Convolution2DTransposeBias",
               "custom_options": _custom_options(padding, stride) if custom_options is None else custom_options}
    return Graph(
        [Tensor("x", (1, in_h, in_w, 2)), Tensor("w", filters.shape, data=filters), Tensor("b", (3,), data=bias),
         Tensor("y", out_shape)],
        [Op("CUSTOM", ["x", "w", "b"], ["y"], options)], ["x"], ["y"],
    )


GEOMETRIES = [  # (in_h, in_w, filter, stride, padding, output shape)
    (5, 7, 3, 2, "SAME", (1, 9, 13, 3)),
    (4, 4, 4, 2, "SAME", (1, 8, 8, 3)),
    (3, 4, 5, 2, "SAME", (1, 5, 8, 3)),
    (4, 3, 3, 3, "SAME", (1, 10, 9, 3)),
    (3, 3, 2, 3, "SAME", (1, 8, 8, 3)),
    (3, 5, 2, 2, "VALID", (1, 6, 10, 3)),
    (2, 3, 3, 1, "VALID", (1, 4, 5, 3)),
]


def test_reader_keeps_custom_ops_with_their_code_and_raw_options():
    graph = read_tflite(TRANSPOSE_CONV_BIAS_FILE.read_bytes())
    custom = [op for op in graph.ops if op.type == "CUSTOM"]
    assert [op.options["custom_code"] for op in custom] == ["Convolution2DTransposeBias"] * 2
    assert custom[0].options["custom_options"] == _custom_options("SAME", 2)
    assert len(custom[1].options["custom_options"]) == 40  # a whole TfLitePoolParams-like struct
    assert custom[1].options["custom_options"][:12] == _custom_options("VALID", 2)


def test_custom_ops_round_trip_through_the_writer():
    graph = read_tflite(TRANSPOSE_CONV_BIAS_FILE.read_bytes())
    again = read_tflite(write_tflite(graph))
    assert [(op.kind, op.inputs, op.outputs, op.options) for op in again.ops] == \
        [(op.kind, op.inputs, op.outputs, op.options) for op in graph.ops]


@pytest.mark.parametrize("in_h, in_w, k, stride, padding, out_shape", GEOMETRIES)
def test_transpose_conv_bias_kernel_matches_the_reference_formula(in_h, in_w, k, stride, padding, out_shape):
    graph = _transpose_conv_bias_graph(in_h, in_w, k, stride, padding, out_shape)
    x = np.random.default_rng(1).standard_normal((1, in_h, in_w, 2)).astype(np.float32)
    expected = transpose_conv_bias_reference(x, graph["w"].data, graph["b"].data, padding, stride)
    assert expected.shape == out_shape
    np.testing.assert_allclose(run_edgeq(write_tflite(graph), [x])[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_h, in_w, k, stride, padding, out_shape", GEOMETRIES)
def test_transpose_conv_bias_becomes_a_transpose_conv_litert_reference_kernels_agree_with(
        in_h, in_w, k, stride, padding, out_shape):
    graph, lowered = lower_custom_ops(_transpose_conv_bias_graph(in_h, in_w, k, stride, padding, out_shape))
    assert lowered == 1 and [op.type for op in graph.ops] == ["TRANSPOSE_CONV"]
    x = np.random.default_rng(2).standard_normal((1, in_h, in_w, 2)).astype(np.float32)
    expected = transpose_conv_bias_reference(x, graph["w"].data, graph["b"].data, padding, stride)
    np.testing.assert_allclose(run_litert(write_tflite(graph), [x], reference_kernels=True)[0], expected,
                               rtol=1e-5, atol=1e-5)


def test_transpose_conv_bias_file_runs_as_litert_runs_it_with_its_xnnpack_kernel():
    # LiteRT's XNNPACK delegate implements this custom op, so its default interpreter runs the file.
    x = _features(3)
    np.testing.assert_allclose(run_edgeq(TRANSPOSE_CONV_BIAS_FILE.read_bytes(), [x])[0],
                               run_litert(TRANSPOSE_CONV_BIAS_FILE.read_bytes(), [x])[0], rtol=1e-5, atol=1e-5)


def test_transpose_conv_bias_file_converts_to_builtin_ops_litert_reference_kernels_run():
    result = convert(TRANSPOSE_CONV_BIAS_FILE)
    assert [op.type for op in result.graph.ops] == ["CONV_2D", "TRANSPOSE_CONV", "TRANSPOSE_CONV"]
    assert "2 custom Convolution2DTransposeBias ops rewritten as builtin ops" in result.notes
    x = _features(4)
    np.testing.assert_allclose(run_litert(result.content, [x], reference_kernels=True)[0],
                               run_edgeq(TRANSPOSE_CONV_BIAS_FILE.read_bytes(), [x])[0], rtol=1e-5, atol=1e-5)


def test_transpose_conv_bias_file_quantizes_to_int8_with_litert_reference_integers(tmp_path):
    calibration = tmp_path / "features.npz"
    np.savez(calibration, features=np.concatenate([_features(seed) for seed in range(10, 42)]))
    result = convert(TRANSPOSE_CONV_BIAS_FILE, quantize="int8", calibration=calibration)
    assert result.float_ops == []
    x = _features(5)
    mismatches = integer_tensor_mismatches(result.content, [x])
    assert mismatches and not any(mismatches.values()), mismatches
    expected = run_edgeq(TRANSPOSE_CONV_BIAS_FILE.read_bytes(), [x])[0]
    assert relative_max_error(run_edgeq(result.content, [x])[0], expected) < 0.05


def test_inspect_names_custom_ops_by_their_code():
    from click.testing import CliRunner

    from edgeq.cli import main

    result = CliRunner().invoke(main, ["inspect", str(TRANSPOSE_CONV_BIAS_FILE)])
    assert result.exit_code == 0, result.output
    assert "CUSTOM Convolution2DTransposeBias 2" in " ".join(result.output.split())


def test_running_a_custom_op_without_a_kernel_is_refused_by_its_name():
    graph = Graph([Tensor("x", (1, 4)), Tensor("y", (1, 4))],
                  [Op("CUSTOM", ["x"], ["y"], {"custom_code": "MysteryOp", "custom_options": b"\x01"})], ["x"], ["y"])
    with pytest.raises(ModelError, match="no kernel for op type\\(s\\): CUSTOM MysteryOp"):
        Interpreter(model_content=write_tflite(graph)).allocate_tensors()


def test_transpose_conv_bias_declared_with_another_output_shape_is_refused():
    graph = _transpose_conv_bias_graph(5, 7, 3, 2, "SAME", (1, 10, 14, 3))
    with pytest.raises(ModelError, match="output 'y' is declared \\(1, 10, 14, 3\\), the op gives \\(1, 9, 13, 3\\)"):
        lower_custom_ops(graph)


def test_transpose_conv_bias_with_short_custom_options_is_refused_naming_the_op():
    graph = _transpose_conv_bias_graph(5, 7, 3, 2, "SAME", (1, 9, 13, 3), custom_options=b"\x01\x00\x00\x00")
    with pytest.raises(ModelError, match="CUSTOM Convolution2DTransposeBias.*4 bytes, need 12"):
        run_edgeq(write_tflite(graph), [np.zeros((1, 5, 7, 2), np.float32)])

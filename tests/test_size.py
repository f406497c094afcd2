"""File size: an int8 file stores its weights once, as int8, and no more quantization data than
LiteRT requires (one int64 zero point per scale, but identical vectors shared between tensors); names only
for the tensors a user can ask about; identical tables written once; no padding that alignment does not need."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeq.converter.api import convert
from edgeq.testing.referees import run_litert
from edgeq.runtime.tflite_format.reader import read_tflite
from edgeq.runtime.tflite_format.writer import BUFFER_ALIGNMENT, write_tflite
from edgeq.runtime.size import size_breakdown

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
MOBILENET = SAMPLES / "digits_mobilenetv2.onnx"
# The bytes of this model's int8 file from the best other converter measured: edgeq's default int8 file,
# 291,536 bytes then, was 0.862x of it.
OTHER_CONVERTER_INT8_BYTES = 338_209


@pytest.fixture(scope="module")
def int8_result():
    calibration = SAMPLES / "digits_mobilenetv2_calib.npz"
    return convert(MOBILENET, quantize="int8", calibration=calibration, num_calibration_samples=32)


@pytest.fixture(scope="module")
def variants(int8_result):
    return {"float32": convert(MOBILENET).content, "int8": int8_result.content}


def test_int8_file_is_at_most_085_of_the_other_converters(variants):
    assert len(variants["int8"]) <= 0.85 * OTHER_CONVERTER_INT8_BYTES


def test_compact_int8_file_gives_litert_the_same_integers_as_one_with_every_name(int8_result):
    every_name = write_tflite(int8_result.graph)
    assert len(int8_result.content) < len(every_name)
    images = np.load(SAMPLES / "digits_mobilenetv2_test.npz")["input"][:4].transpose(0, 2, 3, 1)
    for reference_kernels in (True, False):  # BUILTIN_REF, and the default kernels (XNNPACK)
        for image in images:
            (compact,) = run_litert(int8_result.content, [image[None]], reference_kernels=reference_kernels)
            (named,) = run_litert(every_name, [image[None]], reference_kernels=reference_kernels)
            np.testing.assert_array_equal(compact, named)


def test_constants_read_back_are_named_after_the_op_that_uses_them(int8_result):
    graph = read_tflite(int8_result.content)
    convolutions = [op for op in graph.ops if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert convolutions
    for op in convolutions:
        assert op.inputs[1] == f"{op.outputs[0]}/filter" and op.inputs[2] == f"{op.outputs[0]}/bias"
    assert set(graph.tensors) - {n for n in graph.tensors if graph[n].is_constant} == {
        n for n in int8_result.graph.tensors if not int8_result.graph[n].is_constant}


def test_every_constant_buffer_stays_aligned_to_16_bytes(variants):
    import tflite

    for content in variants.values():
        model = tflite.Model.GetRootAs(content, 0)
        for index in range(1, model.BuffersLength()):
            table = model.Buffers(index)._tab
            assert table.Vector(table.Offset(4)) % BUFFER_ALIGNMENT == 0


def test_size_breakdown_adds_up_to_the_file_size(variants):
    for content in variants.values():
        breakdown = size_breakdown(content)
        parts = sum(v for k, v in breakdown.items() if k != "total")
        assert parts == breakdown["total"] == len(content)
        assert breakdown["structure"] > 0


def test_int8_file_is_about_a_third_of_float(variants):
    # weights at 1 byte instead of 4, int32 biases, per-channel scales: TFLite's own converters
    # write about 35% of float for a network of this kind
    assert len(variants["int8"]) <= 0.34 * len(variants["float32"])


def test_int8_weights_are_stored_once_at_one_byte_each(variants):
    graph = read_tflite(variants["int8"])
    weight_bytes = size_breakdown(variants["int8"])["weights"]
    weights = {op.inputs[1] for op in graph.ops if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")}
    assert all(graph[n].dtype == np.int8 for n in weights)
    assert weight_bytes <= sum(graph[n].nbytes for n in weights) + 16 * len(weights)  # alignment only


def test_per_channel_zero_points_are_shared_between_tensors(variants):
    graph = read_tflite(variants["int8"])
    per_channel = [t for t in graph.tensors.values() if t.quant is not None and t.quant.per_channel]
    channel_counts = {t.quant.scale.size for t in per_channel}
    scale_bytes = sum(4 * t.quant.scale.size + 4 for t in per_channel)
    zero_point_bytes = sum(8 * n + 4 for n in channel_counts)
    activation_params = 3 * 16 * sum(1 for t in graph.tensors.values() if t.quant is not None and not t.quant.per_channel)
    assert size_breakdown(variants["int8"])["quantization_params"] <= scale_bytes + zero_point_bytes + activation_params


def test_int8_file_without_names_runs_in_litert_with_the_same_outputs(variants):
    calibration = SAMPLES / "digits_mobilenetv2_calib.npz"
    nameless = convert(MOBILENET, quantize="int8", calibration=calibration, num_calibration_samples=32,
                       store_names=False).content
    assert len(nameless) < len(variants["int8"])
    x = np.load(SAMPLES / "digits_mobilenetv2_test.npz")["input"][:1].transpose(0, 2, 3, 1)
    (named_out,) = run_litert(variants["int8"], [x], reference_kernels=True)
    (nameless_out,) = run_litert(nameless, [x], reference_kernels=True)
    np.testing.assert_array_equal(named_out, nameless_out)

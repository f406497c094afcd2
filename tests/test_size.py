"""File size: an int8 file stores its weights once, as int8, and no more quantization data than
LiteRT requires (one int64 zero point per scale, but identical vectors shared between tensors)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeq.converter.api import convert
from edgeq.testing.referees import run_litert
from edgeq.runtime.tflite_format.reader import read_tflite
from edgeq.runtime.size import size_breakdown

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
MOBILENET = SAMPLES / "digits_mobilenetv2.onnx"


@pytest.fixture(scope="module")
def variants():
    calibration = SAMPLES / "digits_mobilenetv2_calib.npz"
    return {
        "float32": convert(MOBILENET).content,
        "int8": convert(MOBILENET, quantize="int8", calibration=calibration, num_calibration_samples=32).content,
    }


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

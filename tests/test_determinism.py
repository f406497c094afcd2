"""Converting the same input twice gives byte-identical files: every sample model, float and int8,
in this process and in a fresh one with a different hash seed (set and dict orders must not leak
into the output)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeq.converter.api import convert

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
MODELS = sorted(p.stem for p in SAMPLES.glob("*.onnx"))
# Enough samples to exercise calibration; determinism does not depend on how many.
CALIBRATION_SAMPLES = 8

CONVERT_ALL = """
import hashlib, json, sys
from edgeq.converter.api import convert
samples, models, count = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
digests = {}
for name in models:
    onnx_path = f"{samples}/{name}.onnx"
    digests[f"{name}/float"] = hashlib.sha256(convert(onnx_path).content).hexdigest()
    digests[f"{name}/int8"] = hashlib.sha256(convert(onnx_path, quantize="int8", calibration=f"{samples}/{name}_calib.npz",
                                                    num_calibration_samples=count).content).hexdigest()
print(json.dumps(digests))
"""


def convert_variants(name: str) -> dict:
    onnx_path = str(SAMPLES / f"{name}.onnx")
    return {
        f"{name}/float": convert(onnx_path).content,
        f"{name}/int8": convert(onnx_path, quantize="int8", calibration=str(SAMPLES / f"{name}_calib.npz"),
                                num_calibration_samples=CALIBRATION_SAMPLES).content,
    }


@pytest.fixture(scope="module")
def first_conversions() -> dict:
    contents = {}
    for name in MODELS:
        contents.update(convert_variants(name))
    return contents


def test_there_are_sample_models():
    assert {"digits_cnn", "digits_mlp", "digits_mobilenetv2"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_second_conversion_in_the_same_process_is_byte_identical(name, first_conversions):
    for variant, content in convert_variants(name).items():
        assert content == first_conversions[variant], variant


def test_conversion_in_a_fresh_process_with_another_hash_seed_is_byte_identical(first_conversions):
    environment = {**os.environ, "PYTHONHASHSEED": "12345"}
    completed = subprocess.run(
        [sys.executable, "-c", CONVERT_ALL, str(SAMPLES), json.dumps(MODELS), str(CALIBRATION_SAMPLES)],
        capture_output=True, text=True, env=environment, timeout=300, check=True)
    digests = json.loads(completed.stdout.strip().splitlines()[-1])
    expected = {variant: hashlib.sha256(content).hexdigest() for variant, content in first_conversions.items()}
    assert digests == expected

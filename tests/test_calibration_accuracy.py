"""Every calibration method gives an int8 model within 1 percentage point of the float model's top-1
accuracy, on the whole test split of the trained sample models (sample_models/manifest.json), run by
edgeq's runtime."""
import json
from pathlib import Path

import numpy as np
import pytest

from edgeq.converter.api import CALIBRATION_METHODS, convert
from edgeq.runtime.interpreter import Interpreter

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_models"
MODELS = ("digits_cnn", "digits_mobilenetv2")
TOLERANCE = 0.01  # top-1 accuracy, as a fraction


def manifest_entry(name: str) -> dict:
    manifest = json.loads((SAMPLE_DIR / "manifest.json").read_text())
    return next(entry for entry in manifest["models"] if entry["name"] == name)


def top1(content: bytes, images: np.ndarray, labels: np.ndarray) -> float:
    interpreter = Interpreter(model_content=content)
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.float32  # int8 models keep float inputs and outputs by default
    logits = next(iter(interpreter.run({detail["name"]: images}).values()))
    return float(np.mean(logits.argmax(axis=-1) == labels))


@pytest.fixture(scope="module", params=MODELS)
def sample_model(request):
    entry = manifest_entry(request.param)
    test = np.load(SAMPLE_DIR / entry["test_file"])
    images = test[entry["input_name"]]
    if entry["layout"] == "NCHW":
        images = np.ascontiguousarray(np.moveaxis(images, 1, -1))  # the converted model takes NHWC
    model = SAMPLE_DIR / entry["file"]
    float_accuracy = top1(convert(model).content, images, test["y"])
    assert float_accuracy == pytest.approx(entry["float_test_accuracy"], abs=1e-9)
    return entry, model, images, test["y"], float_accuracy


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_int8_accuracy_is_within_a_point_of_float(sample_model, method):
    entry, model, images, labels, float_accuracy = sample_model
    assert len(labels) == entry["test_samples"]
    result = convert(model, quantize="int8", calibration=SAMPLE_DIR / entry["calib_file"],
                     calibration_method=method)
    int8_accuracy = top1(result.content, images, labels)
    assert int8_accuracy >= float_accuracy - TOLERANCE, (
        f"{entry['name']} int8 ({method}): {int8_accuracy:.4f} against float {float_accuracy:.4f}"
    )

#!/usr/bin/env python3
"""Convert each real-world test model (tests/models/) to float and int8 and print a markdown table:
float error against onnxruntime, TRANSPOSE count, int8 fidelity to float (cosine, SQNR, the task
metric) and int8 integer mismatches against LiteRT's reference kernels; and the int8 fidelity with
the automatic float fallback turned off, which shows what the float islands buy.

    python scripts/real_world_report.py                   # every model
    python scripts/real_world_report.py crnn_text         # some of them

A step that fails (an op not supported yet, a crash) shows its error in the table instead of figures.
Needs the test dependencies (onnxruntime, ai-edge-litert); uses the test suite's helpers.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeq.converter.api import convert
from edgeq.testing import real_world_models as models


def attempt(step):
    """``step()``'s value, or the one-line error it raised."""
    try:
        return step(), None
    except Exception as error:  # noqa: BLE001 - the table reports any failure
        message = str(error).splitlines()[0] if str(error) else ""
        return None, f"{type(error).__name__}: {message}"[:120]


def float_columns(name: str) -> list:
    expected = models.onnxruntime_outputs(name)
    result, error = attempt(lambda: models.converted(name, "none"))
    if error:
        return [f"convert fails: {error}", "-"]
    ours = models.float_error(name, models.tflite_outputs(name, result.content, "edgeq"), expected)
    theirs, litert_error = attempt(
        lambda: models.float_error(name, models.tflite_outputs(name, result.content, "litert"), expected))
    litert_text = f"{theirs:.1e}" if litert_error is None else f"fails: {litert_error}"
    transposes = models.op_counts(result.graph).get("TRANSPOSE", 0)
    return [f"{ours:.1e} / {litert_text}", f"{transposes} (needs {models.MODEL_SPECS[name].needed_transposes})"]


def int8_columns(name: str) -> list:
    result, error = attempt(lambda: models.converted(name, "int8"))
    if error:
        return [f"convert fails: {error}", "-", "-", "-"]
    float_outputs = models.onnxruntime_outputs(name)
    int8_outputs, error = attempt(lambda: models.tflite_outputs(name, result.content, "edgeq"))
    if error:
        fidelity, task = f"runtime fails: {error}", "-"
    else:
        cosine, sqnr = models.fidelity(int8_outputs, float_outputs)
        fidelity, task = f"{cosine:.4f} / {sqnr:.1f} dB", models.task_metric(name, float_outputs, int8_outputs)[0]
    samples = models.evaluation_samples(name)
    counts, error = attempt(lambda: models.integer_mismatches(result, name))
    if error:
        mismatches = f"fails: {error}"
    else:
        bad = {k: v for k, v in counts.items() if v}
        mismatches = f"{sum(counts.values())} in {len(bad)} of {len(counts)} tensors ({samples} samples)"
    kept_float = "; ".join(op.split(" (")[0] for op in result.float_ops) or "none"
    return [fidelity, task, mismatches, kept_float]


def all_int8_column(name: str) -> str:
    """Fidelity with every op that has an int8 form quantized (``float_fallback="none"``): what the
    automatic float islands buy."""
    def all_int8():
        with tempfile.TemporaryDirectory() as folder:
            calibration = Path(folder) / "calibration.npz"
            np.savez(calibration, **models.inputs(name, "calib"))
            return convert(models.MODELS_DIR / f"{name}.onnx", input_shapes=models.MODEL_SPECS[name].input_shapes,
                           quantize="int8", calibration=calibration, float_fallback="none")

    result, error = attempt(all_int8)
    if error:
        return f"convert fails: {error}"
    float_outputs = models.onnxruntime_outputs(name)
    outputs, error = attempt(lambda: models.tflite_outputs(name, result.content, "edgeq"))
    if error:
        return f"runtime fails: {error}"
    cosine, sqnr = models.fidelity(outputs, float_outputs)
    return f"{cosine:.4f} / {sqnr:.1f} dB; {models.task_metric(name, float_outputs, outputs)[0]}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=models.NAMES, help="subset of " + ", ".join(models.NAMES))
    args = parser.parse_args()
    header = ["model", "float max rel. error vs onnxruntime (edgeq / LiteRT)", "TRANSPOSE",
              "int8 vs float: cosine / SQNR", "int8 task metric", "int8 mismatches vs LiteRT REF",
              "int8: kept float", "all-int8 (no float fallback): cosine / SQNR; task metric"]
    rows = []
    for name in args.models:
        start = time.time()
        rows.append([f"`{name}`"] + float_columns(name) + int8_columns(name) + [all_int8_column(name)])
        print(f"{name}: {time.time() - start:.0f} s", file=sys.stderr)
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")


if __name__ == "__main__":
    main()

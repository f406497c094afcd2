#!/usr/bin/env python3
"""Convert each real-world test model (tests/models/) to float and int8 and print markdown tables:
float error against onnxruntime, TRANSPOSE count, int8 fidelity to float (cosine, SQNR, the task
metric) and int8 integer mismatches against LiteRT's reference kernels; and the int8 fidelity with
the automatic float fallback turned off, which shows what the float islands buy. The second table
adds the post-training techniques one at a time (all-int8, evaluation samples): min/max alone, then
cross-layer equalization, bias correction, AdaRound rounding (the default passes), SmoothQuant on
top, and the default conversion with its float islands and its int8 check (convert's exit code).

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
from functools import lru_cache
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
    return [f"{ours:.1e} / {litert_text}", f"{transposes} (needs {models.ALL_SPECS[name].needed_transposes})"]


def int8_columns(name: str) -> list:
    converted, error = attempt(lambda: int8_variant(name, "auto", tuple(sorted(DEFAULT_PASSES.items()))))
    if error:
        return [f"convert fails: {error}", "-", "-", "-"]
    result, _ = converted
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


@lru_cache(maxsize=None)
def int8_variant(name: str, float_fallback: str, passes: tuple):
    """The model converted to int8 with ``float_fallback`` and the PTQ passes ``passes`` ((name, on) pairs)
    and the seconds the conversion took."""
    with tempfile.TemporaryDirectory() as folder:
        calibration = Path(folder) / "calibration.npz"
        np.savez(calibration, **models.inputs(name, "calib"))
        start = time.perf_counter()
        result = convert(models.MODELS_DIR / f"{name}.onnx", input_shapes=models.ALL_SPECS[name].input_shapes,
                         quantize="int8", calibration=calibration, float_fallback=float_fallback, **dict(passes))
        return result, time.perf_counter() - start


def variant_fidelity(name: str, float_fallback: str, passes: dict, metric: bool = True) -> str:
    """"SQNR dB; task metric" of a variant on the evaluation samples, or its error."""
    converted, error = attempt(lambda: int8_variant(name, float_fallback, tuple(sorted(passes.items()))))
    if error:
        return f"convert fails: {error}"
    result, _ = converted
    float_outputs = models.onnxruntime_outputs(name)
    outputs, error = attempt(lambda: models.tflite_outputs(name, result.content, "edgeq"))
    if error:
        return f"runtime fails: {error}"
    cosine, sqnr = models.fidelity(outputs, float_outputs)
    if not metric:
        return f"{sqnr:.1f} dB"
    return f"{cosine:.4f} / {sqnr:.1f} dB; {models.task_metric(name, float_outputs, outputs)[0]}"


def all_int8_column(name: str) -> str:
    """Fidelity with every op that has an int8 form quantized (``float_fallback="none"``): what the
    automatic float islands buy."""
    return variant_fidelity(name, "none", DEFAULT_PASSES)


DEFAULT_PASSES = {"equalize": True, "bias_correction": True, "adaround": True, "smooth_quant": False}
# Each technique added to the ones before it (all-int8), then SmoothQuant on top of the defaults.
TECHNIQUES = [
    ("min/max, round-to-nearest", {"equalize": False, "bias_correction": False, "adaround": False, "smooth_quant": False}),
    ("+ cross-layer equalization", {"equalize": True, "bias_correction": False, "adaround": False, "smooth_quant": False}),
    ("+ bias correction", {"equalize": True, "bias_correction": True, "adaround": False, "smooth_quant": False}),
    ("+ AdaRound (default passes)", DEFAULT_PASSES),
    ("+ SmoothQuant (off by default)", {**DEFAULT_PASSES, "smooth_quant": True}),
]


def technique_row(name: str) -> list:
    cells = [variant_fidelity(name, "none", passes, metric=False) for _, passes in TECHNIQUES]
    converted, error = attempt(lambda: int8_variant(name, "auto", tuple(sorted(DEFAULT_PASSES.items()))))
    if error:
        return cells + [f"convert fails: {error}", "-", "-"]
    result, seconds = converted
    check = result.int8_check
    verdict = (f"{check.sqnr_db:.1f} dB: passed (exit 0)" if check.passed else
               f"{check.sqnr_db:.1f} dB: FAILED (exit 1), worst {check.worst_op}")
    adaround = next((n for n in result.notes if "AdaRound" in n), "-")
    kept = "kept" if "not kept" not in adaround and adaround != "-" else "not kept"
    return cells + [variant_fidelity(name, "auto", DEFAULT_PASSES, metric=False) + f" ({len(result.float_ops)} float ops)",
                    verdict, f"{kept}; {seconds:.1f} s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = sorted(models.ALL_SPECS)
    parser.add_argument("models", nargs="*", default=names, help="subset of " + ", ".join(names))
    args = parser.parse_args()
    header = ["model", "float max rel. error vs onnxruntime (edgeq / LiteRT)", "TRANSPOSE",
              "int8 vs float: cosine / SQNR", "int8 task metric", "int8 mismatches vs LiteRT REF",
              "int8: kept float", "all-int8 (no float fallback): cosine / SQNR; task metric"]
    rows = []
    for name in args.models:
        start = time.time()
        rows.append([f"`{name}`"] + float_columns(name) + int8_columns(name) + [all_int8_column(name)])
        print(f"{name}: {time.time() - start:.0f} s", file=sys.stderr)
    print_table(header, rows)
    print()
    header = (["model"] + [f"all-int8 {label}" for label, _ in TECHNIQUES]
              + ["default (float islands)", "int8 check on calibration samples", "AdaRound; convert time"])
    rows = []
    for name in args.models:
        start = time.time()
        rows.append([f"`{name}`"] + technique_row(name))
        print(f"{name} techniques: {time.time() - start:.0f} s", file=sys.stderr)
    print_table(header, rows)


def print_table(header: list, rows: list) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")


if __name__ == "__main__":
    main()

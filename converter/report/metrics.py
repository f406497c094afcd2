"""The report's figures of merit: accuracy against labels, fidelity to the float32 variant, whether
edgeq and LiteRT agree, and the Pareto front of size against accuracy."""
from __future__ import annotations

from typing import Optional

import numpy as np

# Largest relative difference allowed between edgeq's and LiteRT's reference kernels, by quantization.
# int8 must be identical (the same integer arithmetic). Float: only summation order differs. Dynamic
# range: a last-bit float difference can flip the rounding of the next op's on-the-fly input
# quantization, so whole deep models agree to ~1e-2 (as tests/test_int8_models.py holds them).
AGREEMENT_TOLERANCE = {"int8": 0.0, "none": 1e-4, "float16": 1e-4, "dynamic": 0.02}
# An int8 model with float islands: a last-bit float difference inside an island can flip the
# rounding of the QUANTIZE after it, as in dynamic range.
INT8_WITH_FLOAT_ISLANDS_TOLERANCE = AGREEMENT_TOLERANCE["dynamic"]


def _class_scores(output: np.ndarray) -> np.ndarray:
    return np.asarray(output).reshape(output.shape[0], -1)


def top1_accuracy(output: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(_class_scores(output), axis=1) == labels))


def fidelity(outputs: list, reference: list) -> dict:
    """How close a variant's outputs are to the reference's: top-1 agreement (first output),
    mean per-sample cosine similarity and SQNR in dB over all outputs."""
    from edgeq.converter.quant_debug import power_ratio_db

    ours = np.concatenate([_class_scores(o).astype(np.float64) for o in outputs], axis=1)
    ref = np.concatenate([_class_scores(o).astype(np.float64) for o in reference], axis=1)
    agreement = float(np.mean(np.argmax(_class_scores(outputs[0]), 1) == np.argmax(_class_scores(reference[0]), 1)))
    norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1)
    dots = np.sum(ours * ref, axis=1)
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(dots == 0, 1.0, 0.0))
    sqnr = power_ratio_db(float(np.sum(ref * ref)), float(np.sum((ref - ours) ** 2)))
    return {"top1_agreement": agreement, "cosine": float(np.mean(cosine)), "sqnr_db": sqnr}


def builtin_metrics(outputs: list, reference: list, labels: Optional[np.ndarray]) -> dict:
    metrics = {}
    if labels is not None:
        metrics["top1"] = top1_accuracy(outputs[0], labels)
    metrics.update(fidelity(outputs, reference))
    return metrics


def agreement_tolerance(quantize: str, float_ops: list) -> float:
    if quantize == "int8" and float_ops:
        return INT8_WITH_FLOAT_ISLANDS_TOLERANCE
    return AGREEMENT_TOLERANCE[quantize]


def engine_agreement(ours: list, litert: Optional[list], tolerance: float) -> dict:
    """Do the two engines give the same outputs: identical when ``tolerance`` is 0, else a relative
    max difference (over the largest LiteRT output) within it."""
    exact = tolerance == 0
    expected = "identical" if exact else f"relative difference <= {tolerance:g}"
    if litert is None:
        return {"expected": expected, "checked": False, "ok": True}
    identical = all(np.array_equal(a, b) for a, b in zip(ours, litert))
    diffs = [float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0 for a, b in zip(ours, litert)]
    scales = [float(np.max(np.abs(b.astype(np.float64)))) if b.size else 0.0 for b in litert]
    relative = max(d / s if s > 0 else d for d, s in zip(diffs, scales))
    top1 = float(np.mean(np.argmax(_class_scores(ours[0]), 1) == np.argmax(_class_scores(litert[0]), 1)))
    ok = identical if exact else relative <= tolerance
    return {"expected": expected, "checked": True, "ok": bool(ok), "identical": bool(identical),
            "max_abs_difference": max(diffs), "max_relative_difference": relative, "top1_agreement": top1}


def pareto_front(points: list) -> list:
    """For (size, score) points, whether each is Pareto-optimal: no other point is at most as large
    and at least as good, and strictly better in one of the two. Smaller and higher are better."""
    flags = []
    for i, (size, score) in enumerate(points):
        dominated = any(
            other_size <= size and other_score >= score and (other_size < size or other_score > score)
            for j, (other_size, other_score) in enumerate(points) if j != i
        )
        flags.append(not dominated)
    return flags

"""The ONNX node test cases that ship inside the onnx wheel, as the conformance tests take them: the
cases of ops edgeq claims to import, lists of cases with reasons, and each case as a graph TFLite can
hold."""
from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.converter.onnx_import import import_onnx
from edgeq.converter.onnx_import.ops import RULES
from edgeq.runtime.ir import ModelError


def load_listed_cases(path: Path) -> dict:
    """{case name: reason} from lines "name: reason" (# starts a comment); {} when there is no file."""
    listed = {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                name, _, reason = line.partition(":")
                listed[name.strip()] = reason.strip()
    return listed


@lru_cache(maxsize=None)
def collect_cases() -> list:
    """The wheel's node test cases whose every op has an import rule, sorted by name (collected once)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    claimed = [c for c in cases if {n.op_type for n in c.model.graph.node} <= set(RULES)]
    return sorted(claimed, key=lambda c: c.name)


def freeze_inputs(model: onnx.ModelProto, inputs: list, frozen: set) -> onnx.ModelProto:
    """The model with the named inputs turned into initializers holding the case's values."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    values = {vi.name: value for vi, value in zip(model.graph.input, inputs)}
    kept = [vi for vi in model.graph.input if vi.name not in frozen]
    for name in frozen:
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(values[name]), name))
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model


def convertible_variant(model: onnx.ModelProto, inputs: list):
    """Integer and scalar operands after the first (shapes, axes, indices, an exponent, a ratio) are
    constants in any model TFLite can hold; if the op still needs more constants (weights, scales),
    freeze every input but the first."""
    names = [vi.name for vi in model.graph.input]
    integer = {n for n, v in list(zip(names, inputs))[1:] if np.asarray(v).dtype.kind in "iub" or np.ndim(v) == 0}
    attempts = [integer, set(names[1:]) | integer]
    error = None
    for frozen in attempts:
        variant = freeze_inputs(model, inputs, frozen)
        try:
            graph = import_onnx(variant, keep_onnx_layout=True)
        except ModelError as exc:
            error = exc
            continue
        feeds = [v for n, v in zip(names, inputs) if n not in frozen]
        return graph, feeds
    raise error


# -- calibrating a case for the integer conformance tests ---------------------------------------------

PERTURBED_COPIES = 3


def case_arrays(values) -> list:
    """A case's inputs or expected outputs as numpy arrays."""
    return [numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else np.asarray(v) for v in values]


def is_float32_case(inputs: list, expected: list) -> bool:
    """Whether a case's float arrays, and all its expected outputs, are float32."""
    arrays = inputs + expected
    floats = [a for a in arrays if a.dtype.kind == "f"]
    return bool(floats) and all(a.dtype == np.float32 for a in floats) and all(
        a.dtype == np.float32 for a in expected
    )


def perturbed(feeds: list, graph, copies: int = PERTURBED_COPIES) -> list:
    """``copies`` seeded variations of the float feeds (integer feeds are kept as they are)."""
    rng = np.random.default_rng(0)
    variants = []
    for _ in range(copies):
        variant = []
        for name, value in zip(graph.inputs, feeds):
            value = np.asarray(value)
            if value.dtype == np.float32 and value.size:
                spread = float(np.std(value)) or float(np.max(np.abs(value))) or 1.0
                noise = rng.standard_normal(value.shape) * 0.05 * spread
                value = (value * rng.uniform(0.9, 1.1) + noise).astype(np.float32)
            variant.append(value)
        variants.append(variant)
    return variants


def observed_ranges(graph, feed_sets: list) -> dict:
    """Min/max ranges over ``feed_sets``; each set is one whole run of the graph (a case's first axis is
    its own, not a batch axis). ``calibrate`` runs each set as one batch; inputs that cannot form one
    batch (different first dimensions, 0-D) are observed the same way by running the graph directly."""
    from edgeq.converter.calibrate import calibrate
    from edgeq.runtime.interpreter import Interpreter as FloatRunner

    merged: dict = {}

    def merge(name, lo, hi):
        old = merged.get(name)
        merged[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    observed = {n for n, t in graph.tensors.items() if t.data is None and t.dtype == np.float32}

    def observe(name, value):
        if name in observed and value is not None and np.size(value):
            merge(name, float(np.min(value)), float(np.max(value)))

    for feeds in feed_sets:
        samples = {name: np.asarray(value) for name, value in zip(graph.inputs, feeds)}
        first = {v.shape[0] if v.ndim else None for v in samples.values()}
        if len(first) == 1 and None not in first and 0 not in first:
            ranges = calibrate(graph, samples, "minmax", batch_size=first.pop(), progress=False)
            for name, (lo, hi) in ranges.items():
                merge(name, lo, hi)
        else:
            for name, value in samples.items():
                observe(name, value)
            FloatRunner.from_graph(graph).run(samples, observe=observe)
    return merged


def worst_error_in_steps(output_names, outputs, expected, ranges, step_of, steps: float,
                         range_fraction: float) -> float:
    """Asserts every quantized output is within ``steps`` output quantization steps plus
    ``range_fraction`` of its calibrated range (taken from the expected output when not calibrated,
    widened to hold 0) of the case's expected output; returns the worst error in steps.
    ``step_of(lo, hi)`` is one step of the output's type over that range."""
    worst = 0.0
    for name, got, want in zip(output_names, outputs, expected):
        got = got.reshape(want.shape).astype(np.float64)
        lo, hi = ranges.get(name, (float(np.min(want, initial=0)), float(np.max(want, initial=0))))
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        step = step_of(lo, hi)
        bound = steps * step + range_fraction * (hi - lo)
        error = float(np.max(np.abs(got - want), initial=0.0))
        assert error <= bound, f"output {name}: max error {error:.4g} > {bound:.4g} ({error / step:.1f} steps)"
        worst = max(worst, error / step)
    return worst

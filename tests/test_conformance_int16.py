"""int16x8 conformance: every float32 ONNX node test case that the float conformance test passes and whose
converted graph gets at least one op quantized by ``quantize_int16x8`` (int16 activations, int8 weights,
int64 biases: TFLite's 16x8 mode) is calibrated on its own inputs (plus a few seeded, perturbed copies),
quantized with float inputs/outputs, and written. Then:

1. LiteRT loads and runs the file with its reference (BUILTIN_REF) kernels;
2. our runtime equals BUILTIN_REF in every integer tensor (mismatching elements are counted: 0);
3. the dequantized outputs are within a few output quantization steps of the case's expected outputs:
   4 int16 steps of the calibrated output range + 1% of that range (the weights are int8, as in int8).

Cases that do not pass are listed, each with its reason, in ``conformance_int16_unsupported.txt``
(strict xfails).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from edgeq.converter.quantize import INT16_RULES, quantize_int16x8  # noqa: E402
from edgeq.runtime.tflite_format.writer import write_tflite  # noqa: E402
from edgeq.testing.conformance import (  # noqa: E402
    case_arrays,
    collect_cases,
    convertible_variant,
    is_float32_case,
    load_listed_cases,
    observed_ranges,
    perturbed,
    worst_error_in_steps,
)
from edgeq.testing.referees import integer_tensor_mismatches, run_litert  # noqa: E402

UNSUPPORTED_INT16_FILE = Path(__file__).with_name("conformance_int16_unsupported.txt")
UNSUPPORTED = load_listed_cases(Path(__file__).with_name("conformance_unsupported.txt"))
STEPS = 4  # int16 output quantization steps allowed ...
RANGE_FRACTION = 0.01  # ... plus this fraction of the output range


def quantized_case(case):
    """(int16x8 graph, float graph, ranges, feeds, expected outputs), or None when the case is not a
    float32 case or no op of its graph gets int16 activations."""
    inputs, expected = case.data_sets[0]
    inputs, expected = case_arrays(inputs), case_arrays(expected)
    if not is_float32_case(inputs, expected):
        return None
    graph, feeds = convertible_variant(case.model, inputs)
    if not any(op.type in INT16_RULES for op in graph.ops):
        return None
    ranges = observed_ranges(graph, [feeds] + perturbed(feeds, graph))
    qgraph = quantize_int16x8(graph, ranges)
    if not qgraph.int16_ops:
        return None
    return qgraph, graph, ranges, feeds, expected


def check_case(case) -> dict:
    prepared = quantized_case(case)
    assert prepared is not None, "not a float32 case with an int16 op"
    qgraph, graph, ranges, feeds, expected = prepared
    content = write_tflite(qgraph)

    # (1) LiteRT's reference kernels run it
    reference_outputs = run_litert(content, feeds, reference_kernels=True)
    assert len(reference_outputs) == len(expected)

    # (2) every integer tensor equals BUILTIN_REF
    counts = integer_tensor_mismatches(content, feeds)
    # Activations keep their names in the file (constants are read back under their op's name).
    int16_compared = [n for n in counts if n in qgraph.tensors and qgraph.tensors[n].dtype == np.int16]
    assert int16_compared, "no int16 tensor to compare"
    assert sum(counts.values()) == 0, {k: v for k, v in counts.items() if v}

    # (3) close to the case's expected outputs (one int16 step: symmetric, zero point 0)
    worst = worst_error_in_steps(graph.outputs, reference_outputs, expected, ranges,
                                 lambda lo, hi: 2 * max(-lo, hi) / 65535 or 1e-9, STEPS, RANGE_FRACTION)
    return {"int16_tensors": len(int16_compared), "worst_steps": worst}


UNSUPPORTED_INT16 = load_listed_cases(UNSUPPORTED_INT16_FILE)
CANDIDATES = [c for c in collect_cases() if c.name not in UNSUPPORTED]


def _is_quantized_candidate(case) -> bool:
    try:
        return quantized_case(case) is not None
    except Exception:  # noqa: BLE001 - a listed case may fail already while being prepared
        return case.name in UNSUPPORTED_INT16


QUANTIZED = [c for c in CANDIDATES if _is_quantized_candidate(c)]


def _marks(name: str) -> list:
    if name in UNSUPPORTED_INT16:
        return [pytest.mark.xfail(reason=UNSUPPORTED_INT16[name], strict=True)]
    return []


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=_marks(c.name)) for c in QUANTIZED])
def test_int16x8_node_case(case):
    check_case(case)


def test_int16x8_unsupported_list_names_only_quantized_cases():
    names = {c.name for c in QUANTIZED}
    assert set(UNSUPPORTED_INT16) <= names, set(UNSUPPORTED_INT16) - names


def test_int16x8_conformance_pass_count(capsys):
    passed = len(QUANTIZED) - len(UNSUPPORTED_INT16)
    with capsys.disabled():
        print(f"\nONNX node int16x8 conformance: {passed} of {len(QUANTIZED)} quantized cases pass "
              f"(of {len(CANDIDATES)} float-passing cases; {len(UNSUPPORTED_INT16)} listed as unsupported)")
    assert passed > 0

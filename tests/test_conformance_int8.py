"""Int8 conformance: every float32 ONNX node test case that the float conformance test passes and whose
converted graph gets at least one op quantized by ``quantize_int8`` is calibrated on its own inputs
(plus a few seeded, perturbed copies so ranges are not degenerate), quantized to int8 with float
inputs/outputs, and written. Then:

1. LiteRT loads and runs the file with its default and its reference (BUILTIN_REF) kernels;
2. our runtime equals BUILTIN_REF in every integer tensor (mismatching elements are counted: 0);
3. the dequantized outputs are within a few output quantization steps of the case's expected outputs
   (4 steps of the calibrated output range + 1% of that range).

Cases that do not pass are listed, each with its reason, in ``conformance_int8_unsupported.txt``
(strict xfails). Cases on which LiteRT's reference kernels abort the process are excluded by
``EXCLUDED`` below, so the test never runs them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from edgeq.converter.quantize import quantize_int8  # noqa: E402
from edgeq.runtime.tflite_format.writer import write_tflite  # noqa: E402
from edgeq.testing.referees import integer_tensor_mismatches, run_litert  # noqa: E402
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

UNSUPPORTED_INT8_FILE = Path(__file__).with_name("conformance_int8_unsupported.txt")
# Cases the float conformance test lists as not passing yet
UNSUPPORTED = load_listed_cases(Path(__file__).with_name("conformance_unsupported.txt"))
STEPS = 4  # output quantization steps allowed ...
RANGE_FRACTION = 0.01  # ... plus this fraction of the output range

# Cases never run here, with why. Found by running every candidate once in a subprocess.
# No candidate aborts the process under BUILTIN_REF (LiteRT's reference int8 SOFTMAX aborts on long
# rows of near-equal values; no case here has such a row), so only cases int8 cannot represent by
# nature are excluded.
EXCLUDED = {
    "test_softmax_large_number": "inputs 0..10003 in one tensor: one int8 step is ~39, so the row "
                                 "[10000, 10001, 10002, 10003] quantizes to near-equal values and its "
                                 "softmax cannot be close to the expected one",
}


def quantized_case(case):
    """(int8 graph, float graph, ranges, feeds, expected outputs), or None when the case is not a
    float32 case or no op of its graph is quantized to int8."""
    inputs, expected = case.data_sets[0]
    inputs, expected = case_arrays(inputs), case_arrays(expected)
    if not is_float32_case(inputs, expected):
        return None
    graph, feeds = convertible_variant(case.model, inputs)
    ranges = observed_ranges(graph, [feeds] + perturbed(feeds, graph))
    qgraph = quantize_int8(graph, ranges)
    int8_ops = [
        op for op in qgraph.ops
        if op.type not in ("QUANTIZE", "DEQUANTIZE")
        and any(qgraph[n].dtype == np.int8 for n in op.outputs if n)
    ]
    if not int8_ops:
        return None
    return qgraph, graph, ranges, feeds, expected


def check_case(case) -> dict:
    prepared = quantized_case(case)
    assert prepared is not None, "not a float32 case with an int8 op"
    qgraph, graph, ranges, feeds, expected = prepared
    content = write_tflite(qgraph)

    # (1) LiteRT runs it with both resolvers
    default_outputs = run_litert(content, feeds)
    reference_outputs = run_litert(content, feeds, reference_kernels=True)
    assert len(default_outputs) == len(reference_outputs) == len(expected)

    # (2) every integer tensor equals BUILTIN_REF
    counts = integer_tensor_mismatches(content, feeds)
    assert counts, "no integer tensor to compare"
    assert sum(counts.values()) == 0, {k: v for k, v in counts.items() if v}

    # (3) close to the case's expected outputs
    worst = worst_error_in_steps(graph.outputs, reference_outputs, expected, ranges,
                                 lambda lo, hi: (hi - lo) / 255 or 1e-6, STEPS, RANGE_FRACTION)
    return {"int8_tensors": len(counts), "worst_steps": worst}


UNSUPPORTED_INT8 = load_listed_cases(UNSUPPORTED_INT8_FILE)
CANDIDATES = [c for c in collect_cases() if c.name not in UNSUPPORTED]


def _is_quantized_candidate(case) -> bool:
    try:
        return quantized_case(case) is not None
    except Exception:  # noqa: BLE001 - a listed case may fail already while being prepared
        return case.name in UNSUPPORTED_INT8


QUANTIZED = [c for c in CANDIDATES if c.name in EXCLUDED or _is_quantized_candidate(c)]


def _marks(name: str) -> list:
    if name in EXCLUDED:
        return [pytest.mark.skip(reason=EXCLUDED[name])]
    if name in UNSUPPORTED_INT8:
        return [pytest.mark.xfail(reason=UNSUPPORTED_INT8[name], strict=True)]
    return []


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=_marks(c.name)) for c in QUANTIZED])
def test_int8_node_case(case):
    check_case(case)


def test_int8_unsupported_list_names_only_quantized_cases():
    names = {c.name for c in QUANTIZED}
    assert set(UNSUPPORTED_INT8) <= names, set(UNSUPPORTED_INT8) - names
    assert not set(UNSUPPORTED_INT8) & set(EXCLUDED)


def test_int8_conformance_pass_count(capsys):
    passed = len(QUANTIZED) - len(UNSUPPORTED_INT8) - len(EXCLUDED)
    with capsys.disabled():
        print(f"\nONNX node int8 conformance: {passed} of {len(QUANTIZED)} quantized cases pass "
              f"(of {len(CANDIDATES)} float-passing cases; {len(UNSUPPORTED_INT8)} listed as unsupported, "
              f"{len(EXCLUDED)} excluded)")
    assert passed > 0

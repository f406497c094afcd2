"""Conformance: the ONNX node test cases shipped in the onnx wheel, for every ONNX op edgeq claims to
import, run through convert -> our runtime and convert -> LiteRT against the cases' expected outputs.

Cases that do not pass yet are listed, each with its reason, in ``conformance_unsupported.txt``; they are
strict xfails, so a case that starts passing must be taken off the list.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeq.runtime.tflite_format.writer import write_tflite
from edgeq.testing.conformance import collect_cases, convertible_variant, load_listed_cases
from edgeq.testing.referees import run_edgeq, run_litert

UNSUPPORTED_FILE = Path(__file__).with_name("conformance_unsupported.txt")
CASES = collect_cases()
UNSUPPORTED = load_listed_cases(UNSUPPORTED_FILE)


def check_case(case) -> None:
    (inputs, expected) = case.data_sets[0]
    inputs = [numpy_helper.to_array(i) if isinstance(i, onnx.TensorProto) else i for i in inputs]
    expected = [numpy_helper.to_array(o) if isinstance(o, onnx.TensorProto) else o for o in expected]
    graph, feeds = convertible_variant(case.model, inputs)
    content = write_tflite(graph)
    rtol = max(case.rtol, 1e-5)
    atol = max(case.atol, 1e-6)
    for engine, outputs in (("LiteRT", run_litert(content, feeds)), ("edgeq", run_edgeq(content, feeds))):
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            want = np.asarray(want)
            np.testing.assert_allclose(
                got.reshape(want.shape), want, rtol=rtol, atol=atol, err_msg=f"{engine} on {case.name}"
            )


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c,
            id=c.name,
            marks=[pytest.mark.xfail(reason=UNSUPPORTED[c.name], strict=True)] if c.name in UNSUPPORTED else [],
        )
        for c in CASES
    ],
)
def test_node_case(case):
    check_case(case)


def test_unsupported_list_names_only_collected_cases():
    assert set(UNSUPPORTED) <= {c.name for c in CASES}


def test_conformance_pass_count(capsys):
    passed = len(CASES) - len(UNSUPPORTED)
    with capsys.disabled():
        print(f"\nONNX node conformance: {passed} of {len(CASES)} cases of claimed ops pass "
              f"({len(UNSUPPORTED)} listed as unsupported)")
    assert passed > 0

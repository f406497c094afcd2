"""Conformance: the ONNX node test cases shipped in the onnx wheel, for every ONNX op edgeq claims to
import, run through convert -> our runtime and convert -> LiteRT against the cases' expected outputs.

Cases that do not pass yet are listed, each with its reason, in ``conformance_unsupported.txt``; they are
strict xfails, so a case that starts passing must be taken off the list.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeq.converter.onnx_import import import_onnx
from edgeq.converter.onnx_import.ops import RULES
from edgeq.runtime.tflite_format.writer import write_tflite
from referees import run_edgeq, run_litert
from edgeq.runtime.ir import ModelError

UNSUPPORTED_FILE = Path(__file__).with_name("conformance_unsupported.txt")


def load_unsupported() -> dict:
    listed = {}
    for line in UNSUPPORTED_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, reason = line.partition(":")
            listed[name.strip()] = reason.strip()
    return listed


def collect_cases() -> list:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    claimed = [c for c in cases if {n.op_type for n in c.model.graph.node} <= set(RULES)]
    return sorted(claimed, key=lambda c: c.name)


CASES = collect_cases()
UNSUPPORTED = load_unsupported()


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

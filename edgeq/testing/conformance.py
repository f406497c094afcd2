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

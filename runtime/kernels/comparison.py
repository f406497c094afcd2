"""Comparisons (EQUAL, NOT_EQUAL, LESS, LESS_EQUAL, GREATER, GREATER_EQUAL) and LOGICAL_AND/OR, all with
numpy broadcasting and a bool output, and LOGICAL_NOT.

Comparisons read plain (unquantized) float32, int32, int64 and bool tensors. A quantized int8 input
would have to be compared through its scale and zero point (LiteRT rescales both sides); the
quantizer never gives a comparison int8 inputs (its output is not float), so that form is refused.
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime.kernels import register
from edgeq.runtime.ir import ModelError

_COMPARISONS = {
    "EQUAL": np.equal,
    "NOT_EQUAL": np.not_equal,
    "LESS": np.less,
    "LESS_EQUAL": np.less_equal,
    "GREATER": np.greater,
    "GREATER_EQUAL": np.greater_equal,
}
_LOGICAL = {"LOGICAL_AND": np.logical_and, "LOGICAL_OR": np.logical_or}
_COMPARABLE_DTYPES = {np.dtype(t) for t in (np.float32, np.int32, np.int64, np.bool_)}


@register(*_COMPARISONS)
def prepare_comparison(op, graph):
    a, b = graph[op.inputs[0]], graph[op.inputs[1]]
    if a.dtype != b.dtype:
        raise ModelError(f"op {op}: inputs of types {a.dtype} and {b.dtype} must have one type")
    if a.dtype not in _COMPARABLE_DTYPES or a.quant is not None or b.quant is not None:
        raise ModelError(f"op {op}: comparing {a.dtype} tensors is not supported (float32, int32, int64, bool are)")
    if a.dtype == np.bool_ and op.type not in ("EQUAL", "NOT_EQUAL"):
        raise ModelError(f"op {op}: bool tensors have no order")
    return _COMPARISONS[op.type]


@register(*_LOGICAL, "LOGICAL_NOT")
def prepare_logical(op, graph):
    for name in op.inputs:
        if graph[name].dtype != np.bool_:
            raise ModelError(f"op {op}: input '{name}' is {graph[name].dtype}; {op.type} takes bool tensors")
    return np.logical_not if op.type == "LOGICAL_NOT" else _LOGICAL[op.type]

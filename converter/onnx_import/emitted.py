"""Which TFLite ops each ONNX import rule may emit, read from the rules' own source so it cannot drift.

For an ONNX op with an entry in a module-level ``{"OnnxOp": "TFLITE_OP"}`` table of its rule's module,
that entry; else the TFLite op names written as string literals in the rule function and in the
importer helpers it calls by name, transitively ("may emit": a rule that picks between two ops lists
both). A literal naming an ONNX op the importer handles ("LSTM") is read as that ONNX op. Ops the
import context adds on its own (a TRANSPOSE or RESHAPE to change a tensor's layout) are not counted.
Used by scripts/supported_ops.py (the README's tables) and tests/test_op_catalogue.py.
"""
from __future__ import annotations

import ast
import inspect
import sys

import tflite

from edgeq.converter.onnx_import.ops import RULES

TFLITE_OPS = frozenset(name for name in vars(tflite.BuiltinOperator) if name.isupper())


def emitted_ops(onnx_op: str) -> list:
    """The TFLite ops the rule for ``onnx_op`` may emit, sorted."""
    rule = RULES[onnx_op]
    table = _module_tables(sys.modules[rule.__module__])
    if onnx_op in table:
        return [table[onnx_op]]
    return sorted(s for s in _importer_strings(rule, set()) if s in TFLITE_OPS and s not in RULES)


def all_emitted_ops() -> set:
    """Every TFLite op some import rule may emit."""
    return {op for onnx_op in RULES for op in emitted_ops(onnx_op)}


def _module_tables(module) -> dict:
    """ONNX op -> TFLite op from the module-level dict literals whose values are TFLite op names."""
    table = {}
    for node in ast.parse(inspect.getsource(module)).body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, ast.Dict):
            for key, item in zip(value.keys, value.values):
                if (isinstance(key, ast.Constant) and isinstance(item, ast.Constant)
                        and isinstance(item.value, str) and item.value in TFLITE_OPS):
                    table[key.value] = item.value
    return table


def _importer_strings(function, seen: set) -> set:
    """String literals in ``function`` and in the importer functions it calls by name, transitively."""
    if function in seen:
        return set()
    seen.add(function)
    tree = ast.parse(inspect.getsource(function).lstrip())
    found = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    namespace = vars(sys.modules[function.__module__])
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            callee = namespace.get(node.func.id)
            if inspect.isfunction(callee) and callee.__module__.startswith("edgeq.converter.onnx_import"):
                found |= _importer_strings(callee, seen)
    return found

"""Print Markdown tables of what edgeq supports, generated from the code so they cannot drift:

* ONNX ops: the importer's registry (``converter.onnx_import.ops.RULES``), grouped by family (the
  module that holds the rule), with the TFLite ops each may emit. Those are read from the rule's
  module: a module-level ``{"OnnxOp": "TFLITE_OP"}`` table when the op has an entry, else the TFLite
  op names written as string literals in the rule function and the importer helpers it calls (so
  "may emit": a rule that picks between two ops lists both).
* Runtime kernels: ``runtime.kernels.REGISTRY`` after ``load_all_kernels()``, by family, with whether
  the op is exercised by name in the runtime's float tests (tests/test_runtime_float.py) and int8
  tests (tests/test_runtime_int8*.py), which compare every kernel with LiteRT.

Usage: python scripts/supported_ops.py > ops.md
"""
from __future__ import annotations

import ast
import inspect
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tflite  # noqa: E402

from edgeq.converter.onnx_import.ops import RULES  # noqa: E402
from edgeq.runtime.kernels import CUSTOM_REGISTRY, load_all_kernels  # noqa: E402

TFLITE_OPS = {name for name in vars(tflite.BuiltinOperator) if name.isupper()}


def family(function) -> str:
    return function.__module__.rsplit(".", 1)[-1]


def string_constants(tree) -> list:
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def module_tables(module) -> dict:
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


def importer_strings(function, seen: set) -> set:
    """String literals in ``function`` and in the importer functions it calls by name, transitively."""
    if function in seen:
        return set()
    seen.add(function)
    tree = ast.parse(inspect.getsource(function).lstrip())
    found = set(string_constants(tree))
    namespace = vars(sys.modules[function.__module__])
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            callee = namespace.get(node.func.id)
            if inspect.isfunction(callee) and callee.__module__.startswith("edgeq.converter.onnx_import"):
                found |= importer_strings(callee, seen)
    return found


def emitted_ops(onnx_op: str, rule) -> list:
    table = module_tables(sys.modules[rule.__module__])
    if onnx_op in table:
        return [table[onnx_op]]
    return sorted(s for s in importer_strings(rule, set()) if s in TFLITE_OPS)


def onnx_table() -> str:
    by_family = defaultdict(list)
    for onnx_op, rule in RULES.items():
        by_family[family(rule)].append(onnx_op)
    lines = ["| family | ONNX op | TFLite op(s) it may emit |", "| --- | --- | --- |"]
    for name in sorted(by_family):
        for onnx_op in sorted(by_family[name]):
            emitted = ", ".join(f"`{op}`" for op in emitted_ops(onnx_op, RULES[onnx_op])) or "(not named in the rule)"
            lines.append(f"| {name} | `{onnx_op}` | {emitted} |")
    return "\n".join(lines)


def ops_named_in(paths) -> set:
    names = set()
    for path in paths:
        names.update(re.findall(r'"([A-Z][A-Z0-9_]+)"', path.read_text()))
    return names


def kernel_table() -> str:
    registry = load_all_kernels()
    tests = ROOT / "tests"
    float_tested = ops_named_in([tests / "test_runtime_float.py"])
    int8_tested = ops_named_in(sorted(tests.glob("test_runtime_int8*.py")))
    lines = ["| family | TFLite op | float tests | int8 tests |", "| --- | --- | --- | --- |"]
    for op in sorted(registry, key=lambda op: (family(registry[op]), op)):
        mark = lambda tested: "✓" if op in tested else ""  # noqa: E731
        names = [f"CUSTOM {code}" for code in sorted(CUSTOM_REGISTRY)] if op == "CUSTOM" else [op]
        lines += [f"| {family(registry[op])} | `{name}` | {mark(float_tested)} | {mark(int8_tested)} |" for name in names]
    return "\n".join(lines)


def main() -> None:
    print(f"### ONNX ops ({len(RULES)})\n")
    print(onnx_table())
    print(f"\n### Runtime kernels ({len(load_all_kernels())})\n")
    print("✓: the op is run by name in the runtime's float or int8 tests, which compare it with LiteRT.\n")
    print(kernel_table())


if __name__ == "__main__":
    main()

"""Print Markdown tables of what edgeq supports, generated from the code so they cannot drift:

* ONNX ops: the importer's registry (``converter.onnx_import.ops.RULES``), grouped by family (the
  module that holds the rule), with the TFLite ops each may emit, read from the rule's source by
  ``converter.onnx_import.emitted`` (a module-level ``{"OnnxOp": "TFLITE_OP"}`` table when the op
  has an entry, else the TFLite op names the rule and the importer helpers it calls write out).
* Runtime kernels: ``runtime.kernels.REGISTRY`` after ``load_all_kernels()``, by family, with whether
  the op is exercised by name in the runtime's float tests (tests/test_runtime_float.py) and int8
  tests (tests/test_runtime_int8*.py), which compare every kernel with LiteRT, and whether
  ``--quantize int16x8`` quantizes it with int16 activations (``converter.quantize.INT16_RULES``; those
  ops are held to LiteRT's reference kernels by tests/test_runtime_int16.py and the int16x8 conformance).

Usage: python scripts/supported_ops.py > ops.md
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from edgeq.converter.onnx_import.emitted import emitted_ops
from edgeq.converter.onnx_import.ops import RULES
from edgeq.converter.quantize import INT16_RULES
from edgeq.runtime.kernels import CUSTOM_REGISTRY, load_all_kernels

ROOT = Path(__file__).resolve().parent.parent


def family(function) -> str:
    return function.__module__.rsplit(".", 1)[-1]


def onnx_table() -> str:
    by_family = defaultdict(list)
    for onnx_op, rule in RULES.items():
        by_family[family(rule)].append(onnx_op)
    lines = ["| family | ONNX op | TFLite op(s) it may emit |", "| --- | --- | --- |"]
    for name in sorted(by_family):
        for onnx_op in sorted(by_family[name]):
            emitted = ", ".join(f"`{op}`" for op in emitted_ops(onnx_op)) or "(not named in the rule)"
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
    int16 = set(INT16_RULES) | {"QUANTIZE", "DEQUANTIZE"}
    lines = ["| family | TFLite op | float tests | int8 tests | int16x8 |", "| --- | --- | --- | --- | --- |"]
    for op in sorted(registry, key=lambda op: (family(registry[op]), op)):
        mark = lambda tested: "✓" if op in tested else ""  # noqa: E731
        names = [f"CUSTOM {code}" for code in sorted(CUSTOM_REGISTRY)] if op == "CUSTOM" else [op]
        lines += [f"| {family(registry[op])} | `{name}` | {mark(float_tested)} | {mark(int8_tested)} | {mark(int16)} |"
                  for name in names]
    return "\n".join(lines)


def main() -> None:
    print(f"### ONNX ops ({len(RULES)})\n")
    print(onnx_table())
    print(f"\n### Runtime kernels ({len(load_all_kernels())})\n")
    print("✓: the op is run by name in the runtime's float or int8 tests, which compare it with LiteRT; "
          "int16x8: `--quantize int16x8` gives it int16 activations.\n")
    print(kernel_table())


if __name__ == "__main__":
    main()

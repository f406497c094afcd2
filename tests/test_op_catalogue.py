"""The op catalogue: one TFLite op's facts live in several tables, and these tests hold them together.

For every op the ONNX importer may emit and every op the runtime has a kernel for: the kernel exists,
the validator has its input/output counts and its shape rule, the writer its version rule, and the
quantizer an int8 decision (a rule, or a stated reason to stay float). A new op fails
``test_every_op_has_its_whole_catalogue_entry`` once, with the list of what it still lacks.
"""
from __future__ import annotations

import pytest

from edgeq.converter import quantize
from edgeq.converter.onnx_import.emitted import TFLITE_OPS, all_emitted_ops
from edgeq.runtime import validate
from edgeq.runtime.kernels import load_all_kernels
from edgeq.runtime.tflite_format import op_versions

KERNELS = load_all_kernels()

# Each fact of a catalogue entry: where it belongs (what a gap report says), and whether an op has it.
FACTS = [
    ("a kernel registered in runtime/kernels (KERNEL_MODULES, @register)", lambda op: op in KERNELS),
    ("its input and output counts in runtime/validate.py ARITY", lambda op: op in validate.ARITY),
    ("a shape rule in runtime/validate.py SHAPE_RULES", lambda op: op in validate.SHAPE_RULES),
    ("a version rule in runtime/tflite_format/op_versions.py VERSION_RULES", lambda op: op in op_versions.VERSION_RULES),
    ("an int8 decision in converter/quantize.py: a RULES entry or a STAYS_FLOAT reason",
     lambda op: op in quantize.RULES or op in quantize.STAYS_FLOAT),
]


def catalogue_ops() -> set:
    return all_emitted_ops() | set(KERNELS)


def missing_facts(op_type: str) -> list:
    """What ``op_type`` still lacks, as the places to add it."""
    return [where for where, present in FACTS if not present(op_type)]


def gaps_report(ops) -> str:
    lines = []
    for op_type in sorted(ops):
        missing = missing_facts(op_type)
        if missing:
            lines.append(f"{op_type} lacks:" + "".join(f"\n  - {where}" for where in missing))
    return "\n".join(lines)


def test_every_op_has_its_whole_catalogue_entry():
    report = gaps_report(catalogue_ops())
    assert not report, "ops whose catalogue entry is incomplete:\n" + report


def test_a_new_op_is_told_everything_it_lacks():
    report = gaps_report({"STABLEHLO_COMPOSITE"})
    assert report.splitlines() == ["STABLEHLO_COMPOSITE lacks:"] + [f"  - {where}" for where, _ in FACTS]


def test_the_catalogue_covers_what_the_importer_emits_and_the_runtime_runs():
    ops = catalogue_ops()
    assert {"CONV_2D", "LOGICAL_NOT", "QUANTIZE", "TRANSPOSE"} <= ops
    assert "LSTM" not in ops  # an ONNX op name in the recurrent rules, not an op they emit


def test_every_custom_op_with_a_kernel_declares_its_output_shape():
    from edgeq.runtime.kernels import CUSTOM_REGISTRY
    from edgeq.runtime.kernels.custom import CUSTOM_OUTPUT_SHAPES

    assert sorted(set(CUSTOM_REGISTRY) - set(CUSTOM_OUTPUT_SHAPES)) == []


def test_every_op_the_importer_emits_has_a_kernel():
    assert sorted(op for op in all_emitted_ops() if op not in KERNELS) == []


@pytest.mark.parametrize("table_name, table", [
    ("validate.ARITY", validate.ARITY),
    ("validate.SHAPE_RULES", validate.SHAPE_RULES),
    ("op_versions.VERSION_RULES", op_versions.VERSION_RULES),
    ("quantize.RULES", quantize.RULES),
    ("quantize.STAYS_FLOAT", quantize.STAYS_FLOAT),
])
def test_every_table_names_only_tflite_builtin_ops(table_name, table):
    assert sorted(set(table) - TFLITE_OPS) == [], f"{table_name} names ops TFLite does not have"


def test_an_op_is_either_quantized_or_stays_float_never_both():
    assert sorted(set(quantize.RULES) & set(quantize.STAYS_FLOAT)) == []


def test_every_stays_float_entry_gives_a_reason():
    assert [op for op, reason in quantize.STAYS_FLOAT.items() if not reason.strip()] == []

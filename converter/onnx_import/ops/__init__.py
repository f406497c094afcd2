"""ONNX op rules, one module per op family, all registered in ``RULES``.

A rule is ``convert(ctx, node, attrs)``: it reads its inputs through the ``ImportContext`` (constants
as numpy arrays in ONNX layout, activations as ``Value``s with their storage layout), emits IR ops, and
defines the IR tensors of the node's outputs with the layout it chose for them.
"""
from __future__ import annotations

from edgeq.runtime.registry import registrar

RULES: dict = {}


# ``@rule("Relu", "Sigmoid")`` on a ``convert(ctx, node, attrs)`` function.
rule = registrar(RULES, "ONNX rule")


def node_label(node) -> str:
    return f"{node.op_type} node '{node.name or node.output[0]}'"


from . import activations, conv, einsum, elementwise, gemm, normalization, pooling, reduce, resize, shape_ops, softmax  # noqa: E402,F401
from . import recurrent  # noqa: E402,F401
from . import argminmax, logical, modulo  # noqa: E402,F401

"""ONNX model -> float IR Graph (TFLite ops, NHWC).

    graph = import_onnx("model.onnx", input_shapes={"input": (1, 3, 224, 224)})

4-D inputs and outputs are NHWC in the graph unless ``keep_onnx_layout`` is set; tensors keep their
ONNX names where they map one to one; ``Op.name`` carries the ONNX node name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import onnx

from edgeq.runtime.ir import Graph, ModelError

from .. import passes
from .context import ImportContext
from .fusions import fuse_gelu
from .load import load_model, prepare_model
from .qdq import dissolve_qdq
from .ops import RULES
from .plain_integers import settle_plain_integers

__all__ = ["import_onnx", "ModelError"]


def node_list(nodes: list) -> str:
    names = [f"'{n.name or n.output[0]}'" for n in nodes]
    return f"node {names[0]}" if len(names) == 1 else f"nodes {', '.join(names)}"


def check_supported(model: onnx.ModelProto, fold_failures=()) -> None:
    """One error naming every unsupported op type and all its nodes, so users see the whole list;
    then the first constant node that could not be folded, if any."""
    missing: dict = {}
    for node in model.graph.node:
        known = node.domain in ("", "ai.onnx") and node.op_type in RULES
        if not known:
            label = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            missing.setdefault(label, []).append(node)
    if missing:
        parts = [f"{op_type} ({node_list(nodes)})" for op_type, nodes in missing.items()]
        also = f"; and {fold_failures[0]}" if fold_failures else ""
        raise ModelError(f"unsupported ONNX ops: {', '.join(parts)}{also}")
    if fold_failures:
        raise ModelError(fold_failures[0])


def import_onnx(
    model: Union[str, Path, onnx.ModelProto],
    input_shapes: Optional[dict] = None,
    keep_onnx_layout: bool = False,
    notes: Optional[list] = None,
) -> Graph:
    """A QDQ model (QuantizeLinear/DequantizeLinear pairs) is read as its float model; the quantization it
    states is kept in ``graph.given_quantization`` (see .qdq) for int8 conversion.

    ``notes``, when given, receives a line for each thing the import changed that the user should
    know (a graph output whose declared shape contradicts the computed one)."""
    proto, given = dissolve_qdq(load_model(model))
    prepared = prepare_model(proto, input_shapes)
    if notes is not None:
        notes.extend(prepared.notes)
    fuse_gelu(prepared)
    check_supported(prepared.proto, prepared.fold_failures)
    ctx = ImportContext(prepared, keep_onnx_layout)
    ctx.add_inputs()
    for node in prepared.proto.graph.node:
        RULES[node.op_type](ctx, node, ctx.attrs(node))
    ctx.add_outputs()
    graph = ctx.graph
    graph.remove_unused()
    graph = settle_plain_integers(passes.clean_up(graph))
    if given.activations or given.weights:
        graph.given_quantization = given_in_ir(given, ctx, graph)
    return graph


def given_in_ir(given, ctx: ImportContext, graph: Graph):
    """The QDQ model's stated quantization keyed by the IR tensors that hold its ONNX tensors."""
    activations = {}
    for onnx_name, params in given.activations.items():
        value = ctx.values.get(onnx_name)
        if value is not None and value.ir in graph.tensors:
            activations[value.ir] = params
    return type(given)(activations, dict(given.weights), list(given.notes))

"""ONNX test models built with ``onnx.helper``: one builder for the op tests' small graphs."""
from __future__ import annotations

from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 8


def make_model(nodes, inputs, outputs, initializers=(), opset: int = OPSET, name: str = "test"):
    """An ONNX model of ``nodes``. ``inputs``: (name, shape) or (name, shape, elem_type) for a type
    other than FLOAT; ``outputs``: a name (FLOAT) or (name, elem_type), shapes left to inference."""
    def value_info(entry, shape=None):
        entry_name, elem_type = (entry, TensorProto.FLOAT) if isinstance(entry, str) else entry
        return helper.make_tensor_value_info(entry_name, elem_type, shape)

    graph = helper.make_graph(
        nodes,
        name,
        [value_info((i[0], i[2] if len(i) > 2 else TensorProto.FLOAT), i[1]) for i in inputs],
        [value_info(o) for o in outputs],
        list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = IR_VERSION
    return model

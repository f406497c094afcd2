"""The state of one import: ONNX values mapped to IR tensors with their layouts, and builders."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
from onnx import helper

from edgeq.runtime.ir import Graph, ModelError, Op, Tensor

from . import layout
from .load import PreparedModel, default_opset


@dataclass
class Value:
    """An ONNX activation as stored in the IR."""

    ir: str  # IR tensor name
    perm: tuple  # storage axis j holds ONNX axis perm[j]
    shape: tuple  # ONNX shape
    dtype: np.dtype
    # For a flattened feature map feeding FULLY_CONNECTED: storage column j is ONNX column feature_order[j].
    feature_order: Optional[np.ndarray] = None

    @property
    def rank(self) -> int:
        return len(self.shape)


def onnx_dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


class ImportContext:
    def __init__(self, prepared: PreparedModel, keep_onnx_layout: bool = False):
        model = prepared.proto
        self.model = model
        self.opset = default_opset(model)
        self.keep_onnx_layout = keep_onnx_layout
        self.graph = Graph()
        self.constants = dict(prepared.constants)
        self.shapes = prepared.shapes
        self.types = prepared.types
        self.values: dict = {}
        self.graph_outputs = {out.name for out in model.graph.output}
        self.consumers: dict = {}
        for node in model.graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self._layout_cache: dict = {}

    # -- queries -----------------------------------------------------------------------------
    def is_const(self, name: str) -> bool:
        return name in self.constants

    def const(self, name: str) -> np.ndarray:
        try:
            return self.constants[name]
        except KeyError:
            raise ModelError(f"'{name}' must be a constant (computable from initializers and shapes)") from None

    def optional_const(self, node, index: int, default=None):
        if len(node.input) > index and node.input[index]:
            return self.const(node.input[index])
        return default

    def shape(self, name: str) -> tuple:
        if name in self.constants:
            return tuple(self.constants[name].shape)
        if name in self.values:
            return self.values[name].shape
        try:
            return self.shapes[name]
        except KeyError:
            raise ModelError(f"the shape of '{name}' is not static after shape inference") from None

    def dtype(self, name: str) -> np.dtype:
        if name in self.constants:
            return self.constants[name].dtype
        if name in self.values:
            return self.values[name].dtype
        return onnx_dtype(self.types.get(name, onnx.TensorProto.FLOAT))

    def value(self, name: str) -> Value:
        try:
            return self.values[name]
        except KeyError:
            raise ModelError(f"'{name}' is neither a constant nor a computed value") from None

    @staticmethod
    def attrs(node: onnx.NodeProto) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def onnx_consumers(self, name: str) -> list:
        return self.consumers.get(name, [])

    # -- building ----------------------------------------------------------------------------
    def emit(self, op_type: str, inputs: list, outputs: list, options: Optional[dict] = None, node=None) -> Op:
        name = node.name if node is not None and node.name else (outputs[0] if outputs else op_type)
        return self.graph.add_op(Op(op_type, list(inputs), list(outputs), dict(options or {}), name))

    def temp(self, base: str, shape, dtype=np.float32) -> str:
        return self.graph.add_activation(base, shape, dtype)

    def const_tensor(self, base: str, data, dtype=None) -> str:
        return self.graph.add_constant(base, np.asarray(data, dtype=dtype) if dtype else np.asarray(data))

    def int32_tensor(self, base: str, values) -> str:
        return self.const_tensor(base, np.asarray(values, dtype=np.int32))

    def define(self, onnx_name: str, perm: tuple, shape=None, dtype=None, feature_order=None) -> str:
        """Create the IR tensor holding ONNX value ``onnx_name`` in layout ``perm``; return its IR name."""
        shape = tuple(self.shape(onnx_name) if shape is None else shape)
        dtype = np.dtype(self.dtype(onnx_name) if dtype is None else dtype)
        if len(perm) != len(shape):
            raise ModelError(f"internal: layout {perm} does not fit the shape {shape} of '{onnx_name}'")
        ir = self.graph.add_activation(onnx_name, layout.storage_shape(shape, perm), dtype)
        self.values[onnx_name] = Value(ir, tuple(perm), shape, dtype, feature_order)
        return ir

    def alias(self, onnx_name: str, value: Value) -> None:
        """Make ``onnx_name`` another name for an existing value (a layout-only op moved no data)."""
        self.values[onnx_name] = value

    def reshape_storage(self, src_ir: str, shape: tuple, base: str, node=None) -> str:
        out = self.temp(base, shape, self.graph[src_ir].dtype)
        shape_ir = self.int32_tensor(f"{base}/shape", list(shape))
        self.emit("RESHAPE", [src_ir, shape_ir], [out], {"new_shape": list(shape)}, node)
        return out

    def stored_value(self, value: Value, perm: tuple, key=None) -> str:
        """IR name of ``value`` laid out in ``perm``: a RESHAPE when only unit axes move, else one TRANSPOSE."""
        perm = tuple(perm)
        if value.feature_order is not None:
            raise ModelError(f"internal: '{value.ir}' is a permuted flatten and cannot be re-laid out")
        if value.perm == perm:
            return value.ir
        cache_key = (key or value.ir, perm)
        if cache_key in self._layout_cache:
            return self._layout_cache[cache_key]
        target_shape = layout.storage_shape(value.shape, perm)
        base = f"{value.ir}/{''.join(str(a) for a in perm)}"
        if layout.same_memory_order(value.shape, value.perm, perm):
            out = self.reshape_storage(value.ir, target_shape, base)
        else:
            out = self.temp(base, target_shape, value.dtype)
            k = layout.transpose_between(value.perm, perm)
            self.emit("TRANSPOSE", [value.ir, self.int32_tensor(f"{base}/perm", k)], [out])
        self._layout_cache[cache_key] = out
        return out

    def stored(self, name: str, perm: tuple) -> str:
        """IR name of ONNX tensor ``name`` (activation or constant) laid out in ``perm``."""
        if name in self.constants:
            key = (name, tuple(perm), "const")
            if key not in self._layout_cache:
                data = self.constants[name]
                self._layout_cache[key] = self.const_tensor(name, layout.to_storage(data, perm))
            return self._layout_cache[key]
        return self.stored_value(self.value(name), perm, key=name)

    def broadcast_operand(self, name: str, perm: tuple) -> str:
        """``name`` as an operand broadcasting against a tensor of rank len(perm) stored in ``perm``.

        ONNX aligns shapes on the right; lower-rank operands get leading unit axes first.
        """
        rank = len(perm)
        if name in self.constants:
            data = self.constants[name]
            key = (name, tuple(perm), "broadcast")
            if key not in self._layout_cache:
                data = data.reshape((1,) * (rank - data.ndim) + data.shape)
                self._layout_cache[key] = self.const_tensor(name, layout.to_storage(data, perm))
            return self._layout_cache[key]
        value = self.value(name)
        if value.rank < rank:
            extra = rank - value.rank
            expanded = Value(
                value.ir,
                tuple(range(extra)) + tuple(a + extra for a in value.perm),
                (1,) * extra + value.shape,
                value.dtype,
            )
            if expanded.perm == tuple(perm):
                key = (name, tuple(perm), "expand")
                if key not in self._layout_cache:
                    self._layout_cache[key] = self.reshape_storage(
                        value.ir, layout.storage_shape(expanded.shape, perm), f"{value.ir}/expanded"
                    )
                return self._layout_cache[key]
            # Reuse stored_value: it reshapes (unit axes only) or transposes from the expanded view.
            expanded_ir = self.reshape_storage(
                value.ir, layout.storage_shape(expanded.shape, expanded.perm), f"{value.ir}/expanded"
            )
            expanded.ir = expanded_ir
            return self.stored_value(expanded, perm, key=f"{name}/expanded")
        return self.stored_value(value, perm, key=name)

    # -- boundary ----------------------------------------------------------------------------
    def boundary_perm(self, rank: int) -> tuple:
        return layout.identity(rank) if self.keep_onnx_layout else layout.nhwc_perm(rank)

    def add_inputs(self) -> None:
        for inp in self.model.graph.input:
            shape = self.shape(inp.name)
            ir = self.define(inp.name, self.boundary_perm(len(shape)), shape)
            self.graph.inputs.append(ir)

    def add_outputs(self) -> None:
        for out in self.model.graph.output:
            name = out.name
            if name in self.constants:
                raise ModelError(f"graph output '{name}' is a constant; nothing to compute")
            value = self.value(name)
            ir = self.stored_value(value, self.boundary_perm(value.rank), key=name)
            if ir != name:
                self.rename_ir(ir, name)
                ir = name
            self.graph.outputs.append(ir)

    def rename_ir(self, old: str, new: str) -> None:
        """Give IR tensor ``old`` the name ``new``, moving aside any tensor that holds ``new``."""
        graph = self.graph
        if new in graph.tensors:
            aside = graph.unique_name(f"{new}/stored")
            self._rename_one(new, aside)
        self._rename_one(old, new)

    def _rename_one(self, old: str, new: str) -> None:
        graph = self.graph
        tensor = graph.tensors.pop(old)
        tensor.name = new
        graph.tensors[new] = tensor
        graph.rename_tensor(old, new)
        for value in self.values.values():
            if value.ir == old:
                value.ir = new
        self._layout_cache = {k: (new if v == old else v) for k, v in self._layout_cache.items()}

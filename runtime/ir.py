"""The in-memory IR shared by the converter and the runtime: a TFLite-level graph, NHWC.

Conventions (the TFLite schema's, so reading and writing a flatbuffer is a one-to-one mapping):

* A ``Tensor`` has a unique ``name``, a static ``shape`` (tuple of ints), a numpy ``dtype``
  (float32, float16, int8, uint8, int16, int32, int64, bool), constant ``data`` (a numpy array of
  that shape and dtype) or ``None`` for activations, and ``quant`` (``QuantParams``) or ``None``.
* An ``Op`` has ``type``, the TFLite builtin operator name (``"CONV_2D"``), ``inputs`` and
  ``outputs`` as tensor names (``""`` for an omitted optional input, TFLite's -1), and ``options``,
  a dict of the op's builtin options under the schema's snake_case field names
  (``{"padding": "SAME", "stride_w": 1, ..., "fused_activation_function": "RELU6"}``); enum values
  are their schema names as strings. ``name`` is for messages only and is not serialized.
  A custom op has type ``"CUSTOM"`` and options ``{"custom_code": "Convolution2DTransposeBias",
  "custom_options": b"..."}``: its operator code's name and its options' raw bytes, as the file holds them.
* Weight layouts are TFLite's: CONV_2D filter [O, H, W, I], DEPTHWISE_CONV_2D filter [1, H, W, C*M],
  FULLY_CONNECTED weights [O, I], TRANSPOSE_CONV filter [O, H, W, I]; biases are 1-D.
* ``Graph.ops`` is kept in execution (topological) order.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np


class ModelError(ValueError):
    """A model file or graph that edgeq cannot read or run; the message names the tensor/op at fault."""


def naming_file(error: ModelError, path) -> ModelError:
    """``error`` with the file it is about in front of its message (once), of the same class."""
    message = str(error)
    if message.startswith(f"{path}:") or message.startswith(f"{path} "):
        return error
    return type(error)(f"{path}: {message}")


class InvokeError(ModelError, RuntimeError):
    """An op that failed while the model ran, named with its position and type. Also a RuntimeError, as
    LiteRT's invoke raises, so code written for LiteRT catches it."""


@dataclass
class QuantParams:
    """Affine quantization: real = scale * (q - zero_point), per tensor or along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0

    def __post_init__(self):
        self.scale = np.atleast_1d(np.asarray(self.scale, dtype=np.float32))
        self.zero_point = np.atleast_1d(np.asarray(self.zero_point, dtype=np.int64))

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1

    def __eq__(self, other):
        return (
            isinstance(other, QuantParams)
            and self.axis == other.axis
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )


@dataclass
class Tensor:
    name: str
    shape: tuple
    dtype: np.dtype = np.dtype(np.float32)
    data: Optional[np.ndarray] = None
    quant: Optional[QuantParams] = None
    # How a constant is stored in the file: None (dense) or the schema's SparsityParameters as a dict
    # (see ``sparse_positions``). ``data`` is always the dense array.
    sparsity: Optional[dict] = None

    def __post_init__(self):
        self.shape = tuple(int(d) for d in self.shape)
        self.dtype = np.dtype(self.dtype)
        if self.data is not None:
            self.data = np.asarray(self.data, dtype=self.dtype)
            if self.data.shape != self.shape:
                raise ModelError(
                    f"tensor '{self.name}': data shape {self.data.shape} differs from shape {self.shape}"
                )

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass
class Op:
    type: str
    inputs: list
    outputs: list
    options: dict = field(default_factory=dict)
    name: str = ""

    @property
    def kind(self) -> str:
        """The builtin op name, or for a custom op "CUSTOM" and its custom code."""
        return f"CUSTOM {self.options.get('custom_code', '')}" if self.type == "CUSTOM" else self.type

    def __str__(self):
        label = f" '{self.name}'" if self.name else ""
        return f"{self.kind}{label}"


class Graph:
    """Named tensors plus ops in execution order; ``inputs``/``outputs`` name the graph's boundary.

    ``float_ops`` is what int8 quantization left in float, one line per op naming it and the
    reason (``"SIN (no int8 kernel rule)"``); empty for a graph no quantization has touched.
    ``given_quantization`` is what a quantized source model states (a QDQ ONNX model's scales and
    zero points, converter.quantize.GivenQuantization) for int8 conversion to use; None otherwise.
    Neither is serialized.
    """

    def __init__(self, tensors: Iterable[Tensor] = (), ops: Iterable[Op] = (), inputs=(), outputs=(),
                 float_ops=()):
        self.tensors: dict[str, Tensor] = {}
        for t in tensors:
            self.add_tensor(t)
        self.ops: list[Op] = list(ops)
        self.inputs: list[str] = list(inputs)
        self.outputs: list[str] = list(outputs)
        self.float_ops: list[str] = list(float_ops)
        self.given_quantization = None

    # -- building --------------------------------------------------------------------------
    def add_tensor(self, tensor: Tensor) -> Tensor:
        if tensor.name in self.tensors:
            raise ModelError(f"tensor '{tensor.name}' is defined twice")
        self.tensors[tensor.name] = tensor
        return tensor

    def unique_name(self, base: str) -> str:
        if base not in self.tensors:
            return base
        i = 1
        while f"{base}_{i}" in self.tensors:
            i += 1
        return f"{base}_{i}"

    def add_constant(self, base_name: str, data: np.ndarray, dtype=None, quant=None) -> str:
        data = np.asarray(data, dtype=dtype) if dtype is not None else np.asarray(data)
        name = self.unique_name(base_name)
        self.add_tensor(Tensor(name, data.shape, data.dtype, data, quant))
        return name

    def add_activation(self, base_name: str, shape, dtype=np.float32, quant=None) -> str:
        name = self.unique_name(base_name)
        self.add_tensor(Tensor(name, tuple(shape), dtype, None, quant))
        return name

    def add_op(self, op: Op) -> Op:
        self.ops.append(op)
        return op

    # -- queries ---------------------------------------------------------------------------
    def producers(self) -> dict:
        return {out: op for op in self.ops for out in op.outputs}

    def consumers(self) -> dict:
        users: dict[str, list] = {}
        for op in self.ops:
            for name in op.inputs:
                if name:
                    users.setdefault(name, []).append(op)
        return users

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelError(f"no tensor named '{name}'") from None

    def copy(self) -> "Graph":
        """A copy whose tensors, ops and lists can be changed without touching this graph.

        Constant arrays are shared, not copied: weights can be hundreds of MB, and no stage changes
        an array in place (a pass that changes weights gives the tensor a new array).
        """
        tensors = [
            dataclasses.replace(t, quant=copy.deepcopy(t.quant)) for t in self.tensors.values()
        ]
        ops = [
            Op(op.type, list(op.inputs), list(op.outputs), copy.deepcopy(op.options), op.name)
            for op in self.ops
        ]
        copied = Graph(tensors, ops, self.inputs, self.outputs, self.float_ops)
        copied.given_quantization = self.given_quantization
        return copied

    # -- maintenance -----------------------------------------------------------------------
    def toposort(self) -> None:
        """Order ops so every op runs after the producers of its inputs; raise on a cycle."""
        produced_by = self.producers()
        state: dict[int, int] = {}
        order: list[Op] = []
        index = {id(op): op for op in self.ops}

        for root in self.ops:
            stack = [(root, False)]
            while stack:
                op, done = stack.pop()
                key = id(op)
                if done:
                    state[key] = 2
                    order.append(op)
                    continue
                if state.get(key) == 2:
                    continue
                if state.get(key) == 1:
                    raise ModelError(f"the graph has a cycle through op {op}")
                state[key] = 1
                stack.append((op, True))
                for name in op.inputs:
                    dep = produced_by.get(name)
                    if dep is not None and state.get(id(dep)) != 2:
                        if state.get(id(dep)) == 1:
                            raise ModelError(f"the graph has a cycle through op {dep}")
                        stack.append((dep, False))
        assert len(order) == len(index)
        self.ops = order

    def remove_unused(self) -> None:
        """Drop ops whose outputs reach no graph output, then tensors nothing refers to."""
        needed = set(self.outputs)
        kept = []
        for op in reversed(self.ops):
            if any(o in needed for o in op.outputs):
                kept.append(op)
                needed.update(n for n in op.inputs if n)
        self.ops = kept[::-1]
        referenced = set(self.inputs) | set(self.outputs)
        for op in self.ops:
            referenced.update(n for n in op.inputs if n)
            referenced.update(op.outputs)
        self.tensors = {n: t for n, t in self.tensors.items() if n in referenced}

    def rename_tensor(self, old: str, new: str) -> None:
        """Make every reference to ``old`` refer to ``new`` (which must already exist)."""
        for op in self.ops:
            op.inputs = [new if n == old else n for n in op.inputs]
            op.outputs = [new if n == old else n for n in op.outputs]
        self.inputs = [new if n == old else n for n in self.inputs]
        self.outputs = [new if n == old else n for n in self.outputs]

    def __repr__(self):
        return f"Graph({len(self.ops)} ops, {len(self.tensors)} tensors, inputs={self.inputs}, outputs={self.outputs})"

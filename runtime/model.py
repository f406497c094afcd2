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

    def __str__(self):
        label = f" '{self.name}'" if self.name else ""
        return f"{self.type}{label}"


class Graph:
    """Named tensors plus ops in execution order; ``inputs``/``outputs`` name the graph's boundary."""

    def __init__(self, tensors: Iterable[Tensor] = (), ops: Iterable[Op] = (), inputs=(), outputs=()):
        self.tensors: dict[str, Tensor] = {}
        for t in tensors:
            self.add_tensor(t)
        self.ops: list[Op] = list(ops)
        self.inputs: list[str] = list(inputs)
        self.outputs: list[str] = list(outputs)

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
        return Graph(tensors, ops, self.inputs, self.outputs)

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


def sparse_positions(shape: tuple, sparsity: dict) -> np.ndarray:
    """The flat (row-major) dense index of every value a sparse-encoded tensor stores, in storage order.

    ``sparsity`` mirrors the schema's SparsityParameters: ``traversal_order`` (the dims, then the block
    dims, in storage order), ``block_map`` (which dim each block dim splits) and ``dim_metadata``, one
    per level: ``{"format": "DENSE", "dense_size": n}`` or ``{"format": "SPARSE_CSR",
    "array_segments": [...], "array_indices": [...]}``. The walk is TFLite's FormatConverter's: a
    DENSE level repeats every parent position ``dense_size`` times; a CSR level keeps, for parent
    position p, the entries segments[p]:segments[p + 1], whose coordinates are ``array_indices``.
    """
    rank = len(shape)
    order = [int(d) for d in sparsity["traversal_order"]]
    block_map = [int(d) for d in sparsity.get("block_map", [])]
    levels = sparsity["dim_metadata"]
    if sorted(order) != list(range(rank + len(block_map))) or len(levels) != len(order):
        raise ModelError(f"sparsity: traversal order {order} does not fit rank {rank} with block map {block_map}")
    positions = np.zeros(1, np.int64)
    coordinates: dict = {}
    for dim, level in zip(order, levels):
        if level["format"] == "DENSE":
            size = int(level["dense_size"])
            parent = np.repeat(np.arange(positions.size), size)
            inner = np.tile(np.arange(size, dtype=np.int64), positions.size)
            positions = positions[parent] * size + inner
        else:
            segments = np.asarray(level["array_segments"], np.int64)
            indices = np.asarray(level["array_indices"], np.int64)
            if positions.size and positions.max() + 1 >= segments.size:
                raise ModelError(f"sparsity: {segments.size} array segments are too few for dim {dim}")
            counts = segments[positions + 1] - segments[positions]
            parent = np.repeat(np.arange(positions.size), counts)
            first = np.repeat(segments[positions] - (np.cumsum(counts) - counts), counts)
            positions = first + np.arange(parent.size)
            if positions.size and positions.max() >= indices.size:
                raise ModelError(f"sparsity: array segments of dim {dim} point past its {indices.size} indices")
            inner = indices[positions]
        coordinates = {d: c[parent] for d, c in coordinates.items()}
        coordinates[dim] = inner
    dense = []
    for dim in range(rank):
        coordinate = coordinates[dim]
        for block_dim, split in enumerate(block_map, start=rank):
            if split == dim:
                block_size = int(levels[order.index(block_dim)]["dense_size"])
                coordinate = coordinate * block_size + coordinates[block_dim]
        if coordinate.size and (coordinate.min() < 0 or coordinate.max() >= shape[dim]):
            raise ModelError(f"sparsity: a coordinate of dim {dim} lies outside shape {shape}")
        dense.append(coordinate)
    return np.ravel_multi_index(dense, shape) if dense else positions


# -- reading TFLite flatbuffers -------------------------------------------------------------------
# runtime.schema imports ModelError from here, hence these imports below its definition.
import struct  # noqa: E402

import tflite  # noqa: E402

from edgeq.runtime import schema  # noqa: E402

TFLITE_FILE_IDENTIFIER = b"TFL3"
TFLITE_SCHEMA_VERSION = 3


def read_tflite(data) -> Graph:
    """Subgraph 0 of a TFLite flatbuffer as a Graph; constants are read-only views into ``data``.

    Raises ModelError, naming the tensor or op at fault, on anything malformed.
    """
    data = memoryview(data).cast("B")
    if len(data) < 8 or bytes(data[4:8]) != TFLITE_FILE_IDENTIFIER:
        raise ModelError("not a TFLite model: the file identifier is not 'TFL3'")
    if struct.unpack_from("<I", data, 0)[0] >= len(data):
        raise ModelError("not a TFLite model: the root offset points past the end (truncated file?)")
    try:
        return _read_model(tflite.Model.GetRootAs(data, 0), data)
    except ModelError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, OverflowError) as error:
        raise ModelError(f"malformed TFLite flatbuffer (truncated or corrupt): {error}") from None


def _read_model(model, data) -> Graph:
    if model.Version() != TFLITE_SCHEMA_VERSION:
        raise ModelError(f"TFLite schema version {model.Version()} is not supported (only 3)")
    if model.SubgraphsLength() < 1:
        raise ModelError("the model has no subgraph")
    subgraph = model.Subgraphs(0)
    count = subgraph.TensorsLength()
    names = _tensor_names(model, subgraph)
    graph = Graph()
    for index in range(count):
        graph.add_tensor(_read_tensor(model, subgraph.Tensors(index), graph.unique_name(names[index]), data))
    tensor_names = list(graph.tensors)

    def name_of(index: int, what: str) -> str:
        if index == -1:
            return ""
        if not 0 <= index < count:
            raise ModelError(f"{what}: tensor index {index} is out of range (0..{count - 1})")
        return tensor_names[index]

    for position in range(subgraph.OperatorsLength()):
        graph.add_op(_read_operator(model, subgraph.Operators(position), position, name_of))
    graph.inputs = [name_of(int(i), "subgraph input") for i in _int_list(subgraph.InputsAsNumpy())]
    graph.outputs = [name_of(int(i), "subgraph output") for i in _int_list(subgraph.OutputsAsNumpy())]
    if "" in graph.inputs or "" in graph.outputs:
        raise ModelError("a subgraph input/output has tensor index -1")
    return graph


def _int_list(vector) -> list:
    """A flatbuffer vector read with ``...AsNumpy()`` (which gives 0 when the vector is absent)."""
    return [] if isinstance(vector, int) else vector.tolist()


def _tensor_names(model, subgraph) -> list:
    """Each tensor's stored name; unnamed ones take their signature name, else ``tensor_<index>``."""
    names = [(subgraph.Tensors(i).Name() or b"").decode("utf-8", "replace") for i in range(subgraph.TensorsLength())]
    for s in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(s)
        if signature.SubgraphIndex() != 0:
            continue
        maps = [signature.Inputs(j) for j in range(signature.InputsLength())]
        maps += [signature.Outputs(j) for j in range(signature.OutputsLength())]
        for tensor_map in maps:
            index = tensor_map.TensorIndex()
            if 0 <= index < len(names) and not names[index]:
                names[index] = (tensor_map.Name() or b"").decode("utf-8", "replace")
    return [name or f"tensor_{i}" for i, name in enumerate(names)]


def _read_tensor(model, fb_tensor, name: str, data) -> Tensor:
    shape = tuple(_int_list(fb_tensor.ShapeAsNumpy()))
    if any(d < 0 for d in shape):
        raise ModelError(f"tensor '{name}': dynamic shape {shape} is not supported")
    try:
        dtype = schema.numpy_dtype(fb_tensor.Type())
    except ModelError as error:
        raise ModelError(f"tensor '{name}': {error}") from None
    constant = _read_buffer(model, fb_tensor.Buffer(), name, data)
    sparsity = _read_sparsity(fb_tensor.Sparsity(), name)
    if constant is not None and sparsity is not None:
        constant = _densify(constant, shape, dtype, sparsity, name)
    elif constant is not None:
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if constant.size != expected:
            raise ModelError(
                f"tensor '{name}': buffer {fb_tensor.Buffer()} holds {constant.size} bytes,"
                f" shape {shape} of {dtype} needs {expected}"
            )
        constant = constant.view(dtype).reshape(shape)
    quant = _read_quantization(fb_tensor.Quantization(), name, shape)
    return Tensor(name, shape, dtype, constant, quant, sparsity)


def _read_sparsity(params, name: str) -> Optional[dict]:
    """A tensor's SparsityParameters as the dict ``sparse_positions`` reads, or None when dense."""
    if params is None:
        return None
    levels = []
    for i in range(params.DimMetadataLength()):
        meta = params.DimMetadata(i)
        if meta.Format() == tflite.DimensionType.DENSE:
            levels.append({"format": "DENSE", "dense_size": int(meta.DenseSize())})
        else:
            levels.append({
                "format": "SPARSE_CSR",
                "array_segments": _index_vector(meta.ArraySegmentsType(), meta.ArraySegments(), name),
                "array_indices": _index_vector(meta.ArrayIndicesType(), meta.ArrayIndices(), name),
            })
    return {
        "traversal_order": _int_list(params.TraversalOrderAsNumpy()),
        "block_map": _int_list(params.BlockMapAsNumpy()),
        "dim_metadata": levels,
    }


_INDEX_VECTORS = {
    tflite.SparseIndexVector.Int32Vector: tflite.Int32Vector,
    tflite.SparseIndexVector.Uint16Vector: tflite.Uint16Vector,
    tflite.SparseIndexVector.Uint8Vector: tflite.Uint8Vector,
}


def _index_vector(kind: int, table, name: str) -> np.ndarray:
    if kind not in _INDEX_VECTORS or table is None:
        raise ModelError(f"tensor '{name}': sparse index vector of unknown type {kind}")
    vector = _INDEX_VECTORS[kind]()
    vector.Init(table.Bytes, table.Pos)
    values = vector.ValuesAsNumpy()
    return np.zeros(0, np.int64) if isinstance(values, int) else values.astype(np.int64)


def _densify(stored: np.ndarray, shape: tuple, dtype: np.dtype, sparsity: dict, name: str) -> np.ndarray:
    """The dense constant of a sparse-encoded tensor: runtime kernels only ever see dense arrays."""
    try:
        positions = sparse_positions(shape, sparsity)
    except ModelError as error:
        raise ModelError(f"tensor '{name}': {error}") from None
    if stored.size != positions.size * dtype.itemsize:
        raise ModelError(
            f"tensor '{name}': sparse buffer holds {stored.size} bytes, its encoding lists {positions.size} values"
        )
    dense = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype)
    dense[positions] = stored.view(dtype)
    dense = dense.reshape(shape)
    dense.flags.writeable = False
    return dense


def _read_buffer(model, index: int, tensor_name: str, data) -> Optional[np.ndarray]:
    """The bytes of buffer ``index`` as a read-only uint8 view, or None when it is empty."""
    if not 0 <= index < model.BuffersLength():
        raise ModelError(f"tensor '{tensor_name}': buffer index {index} is out of range (0..{model.BuffersLength() - 1})")
    buffer = model.Buffers(index)
    # Models past the 2 GB flatbuffer limit keep their buffers after it, by offset (> 1) and size.
    if buffer.Offset() > 1:
        start, size = buffer.Offset(), buffer.Size()
        if start + size > len(data):
            raise ModelError(f"tensor '{tensor_name}': buffer {index} lies past the end of the file")
        raw = np.frombuffer(data, dtype=np.uint8, count=size, offset=start)
    elif buffer.DataLength() > 0:
        raw = buffer.DataAsNumpy()
    else:
        return None
    raw.flags.writeable = False
    return raw


def _read_quantization(params, name: str, shape: tuple) -> Optional[QuantParams]:
    if params is None or params.ScaleLength() == 0:
        return None
    scale = params.ScaleAsNumpy()
    zero_point = params.ZeroPointAsNumpy() if params.ZeroPointLength() > 0 else np.zeros(1, np.int64)
    axis = params.QuantizedDimension()
    if zero_point.size not in (1, scale.size):
        raise ModelError(f"tensor '{name}': {zero_point.size} zero points for {scale.size} scales")
    if scale.size > 1 and not (0 <= axis < len(shape) and shape[axis] == scale.size):
        raise ModelError(f"tensor '{name}': {scale.size} scales do not match dimension {axis} of shape {shape}")
    return QuantParams(scale, zero_point, axis)


def _read_operator(model, fb_op, position: int, name_of) -> Op:
    opcode_index = fb_op.OpcodeIndex()
    if not 0 <= opcode_index < model.OperatorCodesLength():
        raise ModelError(f"op #{position}: operator code index {opcode_index} is out of range")
    opcode = model.OperatorCodes(opcode_index)
    # Files from before the extended code space set only the deprecated field: take the larger.
    code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
    if code == schema.BUILTIN_CODES["CUSTOM"]:
        custom = (opcode.CustomCode() or b"").decode("utf-8", "replace")
        raise ModelError(f"op #{position}: custom operator '{custom}' is not supported")
    if code not in schema.BUILTIN_NAMES:
        raise ModelError(f"op #{position}: unknown builtin operator code {code}")
    op_type = schema.BUILTIN_NAMES[code]
    where = f"op #{position} ({op_type})"
    inputs = [name_of(int(i), where) for i in _int_list(fb_op.InputsAsNumpy())]
    outputs = [name_of(int(i), where) for i in _int_list(fb_op.OutputsAsNumpy())]
    if "" in outputs:
        raise ModelError(f"{where}: an output has tensor index -1")
    return Op(op_type, inputs, outputs, _read_options(fb_op, op_type, where))


def _read_options(fb_op, op_type: str, where: str) -> dict:
    table = schema.options_table_name(op_type)
    union_type = fb_op.BuiltinOptionsType()
    if table is None or union_type == tflite.BuiltinOptions.NONE:
        return schema.options_defaults(op_type)
    if union_type != schema.options_union_type(table):
        raise ModelError(f"{where}: builtin options of union type {union_type}, expected {table}")
    position = fb_op.BuiltinOptions()
    if position is None:  # a union type without its table: the defaults, as LiteRT reads it
        return schema.options_defaults(op_type)
    options = getattr(tflite, table)()
    options.Init(position.Bytes, position.Pos)
    values = {}
    for field in schema.options_fields(table):
        if field.kind == "scalar":
            try:
                values[field.name] = field.to_ir(getattr(options, field.accessor)())
            except ModelError as error:
                raise ModelError(f"{where}: {error}") from None
        elif field.kind == "vector":
            values[field.name] = _int_list(getattr(options, f"{field.accessor}AsNumpy")())
    return values

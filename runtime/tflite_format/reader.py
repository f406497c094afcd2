"""TFLite flatbuffer -> IR: ``read_tflite`` checks every table it reads and names the tensor or op at fault."""
from __future__ import annotations

import struct
from typing import Optional

import numpy as np
import tflite

from edgeq.runtime.ir import Graph, ModelError, Op, QuantParams, Tensor
from edgeq.runtime.tflite_format import schema
from edgeq.runtime.tflite_format.schema import FILE_IDENTIFIER, SCHEMA_VERSION
from edgeq.runtime.tflite_format.sparsity import sparse_positions


def read_tflite(data) -> Graph:
    """Subgraph 0 of a TFLite flatbuffer as a Graph; constants are read-only views into ``data``.

    Raises ModelError, naming the tensor or op at fault, on anything malformed.
    """
    data = memoryview(data).cast("B")
    if len(data) < 8 or bytes(data[4:8]) != FILE_IDENTIFIER:
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
    if model.Version() != SCHEMA_VERSION:
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
    _name_constants_after_their_ops(model, subgraph, names)
    return [name or f"tensor_{i}" for i, name in enumerate(names)]


# The role of a constant input, by op and input position, for the names of unnamed constants.
_INPUT_ROLES = {
    "CONV_2D": {1: "filter", 2: "bias"},
    "DEPTHWISE_CONV_2D": {1: "filter", 2: "bias"},
    "FULLY_CONNECTED": {1: "weights", 2: "bias"},
    "TRANSPOSE_CONV": {0: "output_shape", 1: "filter", 3: "bias"},
    "PAD": {1: "paddings", 2: "pad_value"},
    "PADV2": {1: "paddings", 2: "pad_value"},
    "RESHAPE": {1: "shape"},
    "TRANSPOSE": {1: "perm"},
    **{reduction: {1: "axes"} for reduction in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD")},
}


def _holds_data(model, buffer_index: int) -> bool:
    if not 0 < buffer_index < model.BuffersLength():
        return False
    buffer = model.Buffers(buffer_index)
    return buffer.DataLength() > 0 or buffer.Size() > 0


def _name_constants_after_their_ops(model, subgraph, names: list) -> None:
    """An unnamed constant (edgeq stores weights, biases and shapes without names) takes the name of the
    output of the first op it feeds, with its role there: ``<output>/filter``, ``<output>/bias``, or
    ``<output>/input<k>`` where the role is not known. Indices out of range are left for the op reader
    to refuse."""
    count = len(names)
    for position in range(subgraph.OperatorsLength()):
        fb_op = subgraph.Operators(position)
        outputs = _int_list(fb_op.OutputsAsNumpy())
        if not outputs or not 0 <= outputs[0] < count or not names[outputs[0]]:
            continue
        opcode_index = fb_op.OpcodeIndex()
        code = -1
        if 0 <= opcode_index < model.OperatorCodesLength():
            opcode = model.OperatorCodes(opcode_index)
            code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
        roles = _INPUT_ROLES.get(schema.BUILTIN_NAMES.get(code), {})
        for k, index in enumerate(_int_list(fb_op.InputsAsNumpy())):
            if 0 <= index < count and not names[index] and _holds_data(model, subgraph.Tensors(index).Buffer()):
                names[index] = f"{names[outputs[0]]}/{roles.get(k, f'input{k}')}"


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
    if code not in schema.BUILTIN_NAMES:
        raise ModelError(f"op #{position}: unknown builtin operator code {code}")
    op_type = schema.BUILTIN_NAMES[code]
    if op_type == "CUSTOM":
        options = _read_custom_options(opcode, fb_op)
        where = f"op #{position} (CUSTOM {options['custom_code']})"
    else:
        where = f"op #{position} ({op_type})"
        options = _read_options(fb_op, op_type, where)
    inputs = [name_of(int(i), where) for i in _int_list(fb_op.InputsAsNumpy())]
    outputs = [name_of(int(i), where) for i in _int_list(fb_op.OutputsAsNumpy())]
    if "" in outputs:
        raise ModelError(f"{where}: an output has tensor index -1")
    return Op(op_type, inputs, outputs, options)


def _read_custom_options(opcode, fb_op) -> dict:
    """A custom op's name and its options as raw bytes: only the op's kernel knows their layout."""
    raw = fb_op.CustomOptionsAsNumpy()
    return {
        "custom_code": (opcode.CustomCode() or b"").decode("utf-8", "replace"),
        "custom_options": b"" if isinstance(raw, int) else raw.tobytes(),
    }


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

"""Graph -> TFLite flatbuffer (schema v3), through the ``tflite`` binding's generated builders."""
from __future__ import annotations

import hashlib

import flatbuffers
import numpy as np
import tflite

from edgeq.runtime.ir import Graph, ModelError, Op, QuantParams
from edgeq.runtime.tflite_format import schema
from edgeq.runtime.tflite_format.op_versions import operator_version
from edgeq.runtime.tflite_format.schema import FILE_IDENTIFIER, SCHEMA_VERSION
from edgeq.runtime.tflite_format.sparsity import sparse_positions

SIGNATURE_KEY = "serving_default"
# TFLite's writer aligns every constant buffer so a reader can map weights in place with any dtype.
BUFFER_ALIGNMENT = 16


def write_tflite(graph: Graph, *, description: str = "edgeq", store_names: bool = True,
                 name_constants: bool = True) -> bytes:
    """Serialize ``graph`` as a one-subgraph TFLite model; ``store_names=False`` leaves tensor names empty.

    ``name_constants=False`` stores names only for the tensors a user can ask for or read about: the
    inputs, the outputs and what every op computes. A constant's name (weights, biases, shapes) mostly
    repeats the name of the op that uses it, and the reader gives it back as ``<that op's output>/<role>``."""
    _check_references(graph)
    builder = flatbuffers.Builder(_size_estimate(graph))
    tensor_index = {name: i for i, name in enumerate(graph.tensors)}

    buffers, buffer_of = _write_buffers(builder, graph)
    opcode_keys, opcode_of = _assign_opcodes(graph)
    shared = _SharedTables(builder)
    operators = [_write_operator(builder, op, opcode_of[id(op)], tensor_index, shared) for op in graph.ops]
    named = set(graph.tensors) if name_constants else (
        set(graph.inputs) | set(graph.outputs) | {n for n, t in graph.tensors.items() if not t.is_constant})
    tensors = [
        _write_tensor(builder, graph[name], buffer_of[name], store_names and name in named, shared)
        for name in graph.tensors
    ]
    subgraph = _write_subgraph(builder, graph, tensors, operators, tensor_index)
    signature = _write_signature(builder, graph, tensor_index)
    opcodes = [_write_opcode(builder, *key) for key in opcode_keys]
    description_offset = builder.CreateString(description)

    model_vectors = {
        "OperatorCodes": opcodes,
        "Subgraphs": [subgraph],
        "Buffers": buffers,
        "SignatureDefs": [signature],
    }
    vector_offsets = {field: _offset_vector(builder, "Model", field, items) for field, items in model_vectors.items()}
    tflite.ModelStart(builder)
    tflite.ModelAddVersion(builder, SCHEMA_VERSION)
    tflite.ModelAddDescription(builder, description_offset)
    for field, offset in vector_offsets.items():
        getattr(tflite, f"ModelAdd{field}")(builder, offset)
    builder.Finish(tflite.ModelEnd(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


# -- checks -------------------------------------------------------------------------------------

def _check_references(graph: Graph) -> None:
    for op in graph.ops:
        for name in list(op.inputs) + list(op.outputs):
            if name and name not in graph.tensors:
                raise ModelError(f"op {op}: tensor '{name}' is not in the graph")
        if "" in op.outputs:
            raise ModelError(f"op {op}: an output has no tensor")
    for name in list(graph.inputs) + list(graph.outputs):
        if name not in graph.tensors:
            raise ModelError(f"graph input/output '{name}' is not in the graph")


def _size_estimate(graph: Graph) -> int:
    constant_bytes = sum(t.nbytes for t in graph.tensors.values() if t.is_constant)
    return constant_bytes + 256 * (len(graph.tensors) + len(graph.ops)) + 1024


# -- vectors ------------------------------------------------------------------------------------

def _offset_vector(builder, table: str, field: str, offsets: list) -> int:
    getattr(tflite, f"{table}Start{field}Vector")(builder, len(offsets))
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _int_vector(builder, values, dtype=np.int32) -> int:
    return builder.CreateNumpyVector(np.asarray(values, dtype=dtype).reshape(-1))


# -- buffers ------------------------------------------------------------------------------------

def _write_buffers(builder, graph: Graph) -> tuple:
    """Buffer tables (0 = the empty sentinel every activation uses), constants stored once each. Each
    table is written right after its data: the table's 8 bytes then fill most of the gap that aligning
    the next data to 16 bytes would otherwise leave as padding."""
    buffers = [_buffer_table(builder, None)]
    index_of_content: dict = {}
    buffer_of: dict = {}
    for name, tensor in graph.tensors.items():
        if not tensor.is_constant:
            buffer_of[name] = 0
            continue
        raw = np.ascontiguousarray(_stored_values(tensor)).astype(tensor.data.dtype.newbyteorder("<"), copy=False).tobytes()
        key = hashlib.sha256(tensor.dtype.str.encode() + b":" + raw).digest()
        if key not in index_of_content:
            index_of_content[key] = len(buffers)
            buffers.append(_buffer_table(builder, _aligned_bytes(builder, raw)))
        buffer_of[name] = index_of_content[key]
    return buffers, buffer_of


def _buffer_table(builder, data) -> int:
    tflite.BufferStart(builder)
    if data is not None:
        tflite.BufferAddData(builder, data)
    return tflite.BufferEnd(builder)


def _stored_values(tensor) -> np.ndarray:
    """What the buffer holds: the data, or for a sparse-encoded tensor only the values its encoding
    lists (in storage order); refuses an encoding that would drop a non-zero value."""
    if tensor.sparsity is None:
        return tensor.data
    positions = sparse_positions(tensor.shape, tensor.sparsity)
    flat = tensor.data.reshape(-1)
    dropped = np.count_nonzero(flat) - np.count_nonzero(flat[positions])
    if dropped:
        raise ModelError(f"tensor '{tensor.name}': its sparse encoding leaves out {dropped} non-zero values")
    return flat[positions]


def _aligned_bytes(builder, raw: bytes) -> int:
    builder.Prep(BUFFER_ALIGNMENT, len(raw))
    return builder.CreateByteVector(raw)


# -- tensors ------------------------------------------------------------------------------------

class _SharedTables:
    """Identical shape vectors, quantization tables and op options are written once and referred to by
    every tensor or op that has them: a flatbuffer may point many tables at one vector or table. Per-channel
    zero points (one int64 per channel, all 0, which TFLite insists on) then cost one vector per
    channel count instead of one per tensor, and the convolutions of a network share a few options tables."""

    def __init__(self, builder):
        self.builder = builder
        self.offsets: dict = {}

    def vector(self, values: np.ndarray) -> int:
        key = ("vector", values.dtype.str, values.tobytes())
        if key not in self.offsets:
            self.offsets[key] = self.builder.CreateNumpyVector(values)
        return self.offsets[key]

    def quantization(self, quant: QuantParams, tensor) -> int:
        key = ("quantization", quant.scale.tobytes(), quant.zero_point.tobytes(), int(quant.axis))
        if key not in self.offsets:
            self.offsets[key] = _write_quantization(self, quant, tensor)
        return self.offsets[key]

    def options(self, op: Op, table: str) -> int:
        key = ("options", table, repr(sorted((name, np.asarray(value).tolist()) for name, value in op.options.items())))
        if key not in self.offsets:
            self.offsets[key] = _write_options(self.builder, op, table)
        return self.offsets[key]


def _write_tensor(builder, tensor, buffer_index: int, store_name: bool, shared: _SharedTables) -> int:
    shape = shared.vector(np.asarray(tensor.shape, dtype=np.int32))
    name = builder.CreateSharedString(tensor.name) if store_name else None  # the signature repeats some
    quant = shared.quantization(tensor.quant, tensor) if tensor.quant is not None else None
    sparsity = _write_sparsity(builder, tensor.sparsity) if tensor.sparsity is not None else None
    tflite.TensorStart(builder)
    tflite.TensorAddShape(builder, shape)
    tflite.TensorAddType(builder, schema.tensor_type(tensor.dtype))
    tflite.TensorAddBuffer(builder, buffer_index)
    if name is not None:
        tflite.TensorAddName(builder, name)
    if quant is not None:
        tflite.TensorAddQuantization(builder, quant)
    if sparsity is not None:
        tflite.TensorAddSparsity(builder, sparsity)
    return tflite.TensorEnd(builder)


def _write_sparsity(builder, sparsity: dict) -> int:
    """The schema's SparsityParameters: traversal order, block map, one DimensionMetadata per level."""
    levels = [_write_dimension_metadata(builder, meta) for meta in sparsity["dim_metadata"]]
    traversal_order = _int_vector(builder, sparsity["traversal_order"])
    block_map = _int_vector(builder, sparsity.get("block_map", []))
    dim_metadata = _offset_vector(builder, "SparsityParameters", "DimMetadata", levels)
    tflite.SparsityParametersStart(builder)
    tflite.SparsityParametersAddTraversalOrder(builder, traversal_order)
    tflite.SparsityParametersAddBlockMap(builder, block_map)
    tflite.SparsityParametersAddDimMetadata(builder, dim_metadata)
    return tflite.SparsityParametersEnd(builder)


def _write_dimension_metadata(builder, meta: dict) -> int:
    if meta["format"] == "DENSE":
        tflite.DimensionMetadataStart(builder)
        tflite.DimensionMetadataAddFormat(builder, tflite.DimensionType.DENSE)
        tflite.DimensionMetadataAddDenseSize(builder, int(meta["dense_size"]))
        return tflite.DimensionMetadataEnd(builder)
    segments_type, segments = _index_vector(builder, meta["array_segments"])
    indices_type, indices = _index_vector(builder, meta["array_indices"])
    tflite.DimensionMetadataStart(builder)
    tflite.DimensionMetadataAddFormat(builder, tflite.DimensionType.SPARSE_CSR)
    tflite.DimensionMetadataAddArraySegmentsType(builder, segments_type)
    tflite.DimensionMetadataAddArraySegments(builder, segments)
    tflite.DimensionMetadataAddArrayIndicesType(builder, indices_type)
    tflite.DimensionMetadataAddArrayIndices(builder, indices)
    return tflite.DimensionMetadataEnd(builder)


def _index_vector(builder, values) -> tuple:
    """A SparseIndexVector in the narrowest type that holds ``values`` (uint8, uint16 or int32):
    the indices are most of a sparse tensor's bytes."""
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    largest = int(values.max()) if values.size else 0
    for name, dtype, limit in (("Uint8Vector", np.uint8, 1 << 8), ("Uint16Vector", np.uint16, 1 << 16),
                               ("Int32Vector", np.int32, 1 << 31)):
        if largest < limit:
            break
    vector = builder.CreateNumpyVector(values.astype(dtype))
    getattr(tflite, f"{name}Start")(builder)
    getattr(tflite, f"{name}AddValues")(builder, vector)
    return getattr(tflite.SparseIndexVector, name), getattr(tflite, f"{name}End")(builder)


def _write_quantization(shared: _SharedTables, quant: QuantParams, tensor) -> int:
    if quant.zero_point.size not in (1, quant.scale.size):
        raise ModelError(f"tensor '{tensor.name}': {quant.zero_point.size} zero points for {quant.scale.size} scales")
    # LiteRT refuses a file with fewer zero points than scales, or none.
    zero_point = np.broadcast_to(quant.zero_point, quant.scale.shape)
    scale = shared.vector(quant.scale.astype(np.float32))
    zero_point = shared.vector(np.ascontiguousarray(zero_point, dtype=np.int64))
    builder = shared.builder
    tflite.QuantizationParametersStart(builder)
    tflite.QuantizationParametersAddScale(builder, scale)
    tflite.QuantizationParametersAddZeroPoint(builder, zero_point)
    tflite.QuantizationParametersAddQuantizedDimension(builder, int(quant.axis))
    return tflite.QuantizationParametersEnd(builder)


# -- operators ----------------------------------------------------------------------------------

def _assign_opcodes(graph: Graph) -> tuple:
    """One operator code per (builtin code, version, custom code), in order of first use."""
    keys: list = []
    index_of_key: dict = {}
    opcode_of: dict = {}
    for op in graph.ops:
        key = (schema.builtin_code(op.type), operator_version(op, graph), op.options.get("custom_code", "")
               if op.type == "CUSTOM" else "")
        if key not in index_of_key:
            index_of_key[key] = len(keys)
            keys.append(key)
        opcode_of[id(op)] = index_of_key[key]
    return keys, opcode_of


def _write_opcode(builder, code: int, version: int, custom_code: str) -> int:
    custom_code = builder.CreateString(custom_code) if custom_code else None
    tflite.OperatorCodeStart(builder)
    if custom_code is not None:
        tflite.OperatorCodeAddCustomCode(builder, custom_code)
    # Readers older than the 8-bit code space overflowed look only at the deprecated field.
    tflite.OperatorCodeAddDeprecatedBuiltinCode(builder, min(code, tflite.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES))
    tflite.OperatorCodeAddBuiltinCode(builder, code)
    tflite.OperatorCodeAddVersion(builder, version)
    return tflite.OperatorCodeEnd(builder)


def _write_operator(builder, op: Op, opcode_index: int, tensor_index: dict, shared: _SharedTables) -> int:
    inputs = _int_vector(builder, [tensor_index[n] if n else -1 for n in op.inputs])
    outputs = _int_vector(builder, [tensor_index[n] for n in op.outputs])
    if op.type == "CUSTOM":
        return _write_custom_operator(builder, op, opcode_index, inputs, outputs)
    table = schema.options_table_name(op.type)
    if table is None and op.options:
        raise ModelError(f"op {op}: {op.type} takes no options, got {sorted(op.options)}")
    options = shared.options(op, table) if table is not None else None
    tflite.OperatorStart(builder)
    tflite.OperatorAddOpcodeIndex(builder, opcode_index)
    tflite.OperatorAddInputs(builder, inputs)
    tflite.OperatorAddOutputs(builder, outputs)
    if options is not None:
        tflite.OperatorAddBuiltinOptionsType(builder, schema.options_union_type(table))
        tflite.OperatorAddBuiltinOptions(builder, options)
    return tflite.OperatorEnd(builder)


def _write_custom_operator(builder, op: Op, opcode_index: int, inputs: int, outputs: int) -> int:
    """A custom op: its options are raw bytes (custom_options) that only its kernel reads."""
    unknown = sorted(set(op.options) - {"custom_code", "custom_options"})
    if unknown or not op.options.get("custom_code"):
        raise ModelError(f"op {op}: a CUSTOM op takes custom_code and custom_options, got {sorted(op.options)}")
    raw = bytes(op.options.get("custom_options", b""))
    custom_options = builder.CreateByteVector(raw) if raw else None
    tflite.OperatorStart(builder)
    tflite.OperatorAddOpcodeIndex(builder, opcode_index)
    tflite.OperatorAddInputs(builder, inputs)
    tflite.OperatorAddOutputs(builder, outputs)
    if custom_options is not None:
        tflite.OperatorAddCustomOptions(builder, custom_options)
        tflite.OperatorAddCustomOptionsFormat(builder, tflite.CustomOptionsFormat.FLEXBUFFERS)
    return tflite.OperatorEnd(builder)


def _write_options(builder, op: Op, table: str) -> int:
    fields = {f.name: f for f in schema.options_fields(table)}
    unknown = sorted(set(op.options) - {n for n, f in fields.items() if f.kind != "unsupported"})
    if unknown:
        raise ModelError(f"op {op}: unknown options {unknown} for {table}")
    # Vectors must be complete before the table is started.
    vectors = {
        name: _options_vector(builder, fields[name], value)
        for name, value in op.options.items()
        if fields[name].kind == "vector" and len(value) > 0
    }
    getattr(tflite, f"{table}Start")(builder)
    for name, value in op.options.items():
        field = fields[name]
        if field.kind == "scalar":
            try:
                field.add(builder, field.to_flatbuffer(value))
            except ModelError as error:
                raise ModelError(f"op {op}: {error}") from None
        elif name in vectors:
            field.add(builder, vectors[name])
    return getattr(tflite, f"{table}End")(builder)


def _options_vector(builder, field, values) -> int:
    array = np.asarray(values, dtype=field.vector_dtype).reshape(-1)
    field.start_vector(builder, array.size)
    for value in reversed(array.tolist()):
        builder.Prepend(_NUMBER_FLAGS[array.dtype], value)
    return builder.EndVector()


_NUMBER_FLAGS = {
    np.dtype(np.int8): flatbuffers.number_types.Int8Flags,
    np.dtype(np.int16): flatbuffers.number_types.Int16Flags,
    np.dtype(np.int32): flatbuffers.number_types.Int32Flags,
    np.dtype(np.int64): flatbuffers.number_types.Int64Flags,
    np.dtype(np.float32): flatbuffers.number_types.Float32Flags,
}


# -- subgraph and signature ---------------------------------------------------------------------

def _write_subgraph(builder, graph: Graph, tensors: list, operators: list, tensor_index: dict) -> int:
    tensor_vector = _offset_vector(builder, "SubGraph", "Tensors", tensors)
    operator_vector = _offset_vector(builder, "SubGraph", "Operators", operators)
    inputs = _int_vector(builder, [tensor_index[n] for n in graph.inputs])
    outputs = _int_vector(builder, [tensor_index[n] for n in graph.outputs])
    name = builder.CreateString("main")
    tflite.SubGraphStart(builder)
    tflite.SubGraphAddTensors(builder, tensor_vector)
    tflite.SubGraphAddInputs(builder, inputs)
    tflite.SubGraphAddOutputs(builder, outputs)
    tflite.SubGraphAddOperators(builder, operator_vector)
    tflite.SubGraphAddName(builder, name)
    return tflite.SubGraphEnd(builder)


def _write_signature(builder, graph: Graph, tensor_index: dict) -> int:
    """The "serving_default" signature, naming the graph's inputs and outputs (even without tensor names)."""
    maps = {
        "Inputs": [_write_tensor_map(builder, n, tensor_index[n]) for n in graph.inputs],
        "Outputs": [_write_tensor_map(builder, n, tensor_index[n]) for n in graph.outputs],
    }
    vectors = {field: _offset_vector(builder, "SignatureDef", field, items) for field, items in maps.items()}
    key = builder.CreateString(SIGNATURE_KEY)
    tflite.SignatureDefStart(builder)
    tflite.SignatureDefAddInputs(builder, vectors["Inputs"])
    tflite.SignatureDefAddOutputs(builder, vectors["Outputs"])
    tflite.SignatureDefAddSignatureKey(builder, key)
    tflite.SignatureDefAddSubgraphIndex(builder, 0)
    return tflite.SignatureDefEnd(builder)


def _write_tensor_map(builder, name: str, index: int) -> int:
    name_offset = builder.CreateSharedString(name)
    tflite.TensorMapStart(builder)
    tflite.TensorMapAddName(builder, name_offset)
    tflite.TensorMapAddTensorIndex(builder, index)
    return tflite.TensorMapEnd(builder)

"""Where the bytes of a .tflite file go: weights, biases, other constants, quantization parameters,
tensor names, and the structure (tables, vectors, offsets, alignment) that holds them together."""
from __future__ import annotations

import tflite

from edgeq.runtime.tflite_format.reader import read_tflite

_ALIGN = 4  # flatbuffers pads strings and vectors to 4 bytes


def _padded(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def size_breakdown(content: bytes) -> dict:
    """Bytes per category; ``structure`` is the rest of the file, so the categories add up to its size."""
    graph = read_tflite(content)
    model = tflite.Model.GetRootAs(content, 0)
    subgraph = model.Subgraphs(0)
    weight_users = _weight_inputs(graph)

    counted_buffers, counted_vectors = set(), set()
    weights = biases = other_constants = quant_params = names = 0
    for i in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(i)
        names += _padded(len(tensor.Name() or b"")) + 4 if tensor.Name() else 0
        quant = tensor.Quantization()
        if quant is not None:
            quant_params += _unique_vector_bytes(quant, counted_vectors)
        buffer_index = tensor.Buffer()
        if buffer_index == 0 or buffer_index in counted_buffers:
            continue
        counted_buffers.add(buffer_index)
        size = model.Buffers(buffer_index).DataLength()
        if size == 0:
            size = model.Buffers(buffer_index).Size()  # data stored after the flatbuffer
        name = graph_names(graph)[i]
        role = weight_users.get(name)
        if role == "weights":
            weights += size
        elif role == "bias":
            biases += size
        else:
            other_constants += size
    total = len(content)
    return {
        "total": total,
        "weights": weights,
        "biases": biases,
        "other_constants": other_constants,
        "quantization_params": quant_params,
        "names": names,
        "structure": total - weights - biases - other_constants - quant_params - names,
    }


def graph_names(graph) -> list:
    return list(graph.tensors)


# QuantizationParameters fields by vtable slot: min, max, scale (float32), zero_point (int64).
_QUANT_VECTOR_SLOTS = ((4, 4), (6, 4), (8, 4), (10, 8))


def _unique_vector_bytes(quant, counted: set) -> int:
    """Bytes of the quantization vectors not counted yet: the writer shares identical vectors."""
    table = quant._tab
    size = 0
    for slot, item_size in _QUANT_VECTOR_SLOTS:
        offset = table.Offset(slot)
        if offset == 0:
            continue
        position = table.Vector(offset)
        if position not in counted:
            counted.add(position)
            size += 4 + item_size * table.VectorLen(offset)
    return size


# Ops that carry weights: (input index of the weights, input index of the bias).
_WEIGHT_AND_BIAS_INPUTS = {
    "CONV_2D": (1, 2),
    "DEPTHWISE_CONV_2D": (1, 2),
    "FULLY_CONNECTED": (1, 2),
    "TRANSPOSE_CONV": (1, 3),
    "CUSTOM Convolution2DTransposeBias": (1, 2),
}


def _weight_inputs(graph) -> dict:
    """Constant tensor name -> "weights" or "bias" for the inputs of ops that carry weights.

    A constant stored narrow (float16, int8) behind a DEQUANTIZE is a weight too, and takes the role
    of the DEQUANTIZE's output where that feeds a weighted op (a bias stays a bias)."""
    stored_as = {op.outputs[0]: op.inputs[0] for op in graph.ops
                 if op.type == "DEQUANTIZE" and graph[op.inputs[0]].is_constant}
    roles = {constant: "weights" for constant in stored_as.values()}
    for op in graph.ops:
        if op.kind in _WEIGHT_AND_BIAS_INPUTS:
            weight_index, bias_index = _WEIGHT_AND_BIAS_INPUTS[op.kind]
            for index, role in ((weight_index, "weights"), (bias_index, "bias")):
                name = op.inputs[index] if index < len(op.inputs) else ""
                name = stored_as.get(name, name)
                if name and graph[name].is_constant:
                    roles[name] = role
    return roles

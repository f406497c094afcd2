"""Quantized ONNX models in QDQ form: read as a float model plus the quantization they state.

onnxruntime's ``quantize_static`` (QDQ format), PyTorch's quantization-aware-training export and NNCF write
a float graph in which every quantized activation passes through QuantizeLinear -> DequantizeLinear and
every quantized weight is an integer initializer behind DequantizeLinear. ``dissolve_qdq`` removes those
pairs (the consumers read the float value again, the weights become their dequantized float values) and
records what they stated: each activation's (scale, zero point) and each weighted node's weight scales.
int8 conversion then uses them instead of calibrated ranges (converter.quantize, ``given``).

Dynamically quantized models (DynamicQuantizeLinear, MatMulInteger, ...) and onnxruntime's QOperator
format (QLinearConv, ...) are refused with what to do instead.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.converter.quantize import GivenQuantization
from edgeq.runtime.ir import ModelError

# Integer ops of dynamically quantized models: the scales are computed at run time from the data.
DYNAMIC_QUANTIZATION_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM",
                            "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
# onnxruntime's QOperator format: quantized kernels in place of float ones.
QOPERATOR_OPS = {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearAveragePool",
                 "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu",
                 "QLinearSoftmax", "QGemm", "QAttention"}
# Nodes whose input 1 is a weight that int8 stores per output channel, and the ONNX axis of the output
# channels in that weight (Gemm's depends on transB, see weight_output_axis).
WEIGHTED_OPS = {"Conv": 0, "ConvTranspose": 1, "Gemm": 1, "MatMul": -1}


def node_label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


def refuse_dynamic_quantization(model: onnx.ModelProto) -> None:
    """One clear refusal of a dynamically quantized or QOperator-format model, naming the first node."""
    for node in model.graph.node:
        if node.op_type in DYNAMIC_QUANTIZATION_OPS:
            raise ModelError(
                f"dynamically quantized ONNX ({node_label(node)}) is not supported: convert the float model with "
                "--quantize dynamic (int8 weights, float activations) or --quantize int8 with calibration samples")
        if node.op_type in QOPERATOR_OPS:
            raise ModelError(
                f"ONNX quantized in the QOperator format ({node_label(node)}) is not supported: quantize the float "
                "model in the QDQ format (onnxruntime quantize_static(..., quant_format=QuantFormat.QDQ)), or "
                "convert the float model with --quantize int8")


def is_qdq_model(model: onnx.ModelProto) -> bool:
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


def _constants(graph: onnx.GraphProto) -> dict:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:  # PyTorch shares zero points so
            values[node.output[0]] = values[node.input[0]]
    return values


def _attribute(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _quantization(node: onnx.NodeProto, constants: dict) -> tuple:
    """(scale, zero point, integer dtype, axis) of a QuantizeLinear or DequantizeLinear node."""
    if _attribute(node, "block_size", 0):
        raise ModelError(f"{node_label(node)}: blocked quantization (block_size) is not supported")
    for name in node.input[1:3]:
        if name and name not in constants:
            raise ModelError(f"{node_label(node)}: its scale and zero point must be constants ('{name}' is not)")
    scale = np.asarray(constants[node.input[1]], np.float32)
    has_zero_point = len(node.input) > 2 and node.input[2]
    zero_point = constants[node.input[2]] if has_zero_point else np.zeros(scale.shape, np.uint8)
    if not has_zero_point and node.op_type == "DequantizeLinear" and node.input[0] in constants:
        zero_point = np.zeros(scale.shape, constants[node.input[0]].dtype)
    dtype = np.dtype(zero_point.dtype)
    if dtype not in (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int32)):
        raise ModelError(f"{node_label(node)}: {dtype.name} quantization is not supported (int8 and uint8 are)")
    return scale, np.asarray(zero_point, np.int64), dtype, int(_attribute(node, "axis", 1))


def _activation_params(node: onnx.NodeProto, constants: dict) -> tuple:
    scale, zero_point, dtype, _ = _quantization(node, constants)
    if scale.size != 1:
        raise ModelError(f"{node_label(node)}: per-channel activation quantization is not supported")
    zero_point = int(zero_point.reshape(-1)[0]) - (128 if dtype == np.uint8 else 0)
    return float(scale.reshape(-1)[0]), zero_point


def _dequantized(node: onnx.NodeProto, constants: dict) -> tuple:
    """(float values, scale, zero point, dtype, axis) of a DequantizeLinear of a constant."""
    q = np.asarray(constants[node.input[0]])
    scale, zero_point, dtype, axis = _quantization(node, constants)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis % q.ndim] = -1
    values = (q.astype(np.float64) - zero_point.reshape(shape)) * scale.astype(np.float64).reshape(shape)
    return values.astype(np.float32), scale, zero_point, np.dtype(q.dtype), axis % max(q.ndim, 1)


def _quantized(node: onnx.NodeProto, constants: dict) -> np.ndarray:
    """ONNX QuantizeLinear of a constant: round half to even, add the zero point, saturate."""
    x = np.asarray(constants[node.input[0]], np.float64)
    scale, zero_point, dtype, axis = _quantization(node, constants)
    shape = [1] * x.ndim
    if scale.size > 1:
        shape[axis % x.ndim] = -1
    q = np.rint(x / scale.astype(np.float64).reshape(shape)) + zero_point.reshape(shape)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def weight_output_axis(node: onnx.NodeProto, rank: int) -> int:
    if node.op_type == "Gemm":
        return 0 if _attribute(node, "transB", 0) else 1
    return WEIGHTED_OPS[node.op_type] % rank


def _weight_scales(consumer, values, scale, zero_point, dtype, axis, notes) -> Optional[np.ndarray]:
    """One scale per output channel of ``consumer``'s weight, or None (with a note) where the model's
    weight quantization is not TFLite's symmetric int8 along the output channels."""
    out_axis = weight_output_axis(consumer, values.ndim)
    channels = values.shape[out_axis]
    label = node_label(consumer)
    if dtype == np.int32:
        return None
    if dtype != np.int8 or np.any(zero_point != 0):
        notes.append(f"{label}: the model's {'asymmetric ' if dtype == np.int8 else ''}{dtype.name} weights "
                     "requantized to symmetric int8 (TFLite's int8 spec)")
        return None
    if scale.size == 1:
        return np.full(channels, scale.reshape(-1)[0], np.float32)
    if axis != out_axis:
        notes.append(f"{label}: the model's weight scales along axis {axis} (not the output channels) "
                     "requantized per output channel")
        return None
    return scale.astype(np.float32)


def dissolve_qdq(model: onnx.ModelProto) -> tuple:
    """(float model, GivenQuantization) of a QDQ model; a model without Q/DQ nodes is returned as it is
    with an empty GivenQuantization. ``model`` is not modified."""
    refuse_dynamic_quantization(model)
    given = GivenQuantization()
    if not is_qdq_model(model):
        return model, given
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    graph = proto.graph
    constants = _constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}

    source: dict = {}  # a removed DequantizeLinear's output -> the float tensor its consumers read now
    removed = set()
    new_initializers = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        x = node.input[0]
        quantize = producers.get(x)
        if x not in constants and quantize is not None and quantize.op_type == "QuantizeLinear" \
                and quantize.input[0] in constants:
            # A fake-quantized weight (PyTorch's QAT export): the float weight through Q and DQ.
            constants[x] = _quantized(quantize, constants)
            removed.add(id(quantize))
        if x in constants:
            values, scale, zero_point, dtype, axis = _dequantized(node, constants)
            new_initializers.append(numpy_helper.from_array(values, node.output[0]))
            for consumer in consumers.get(node.output[0], []):
                if consumer.op_type in WEIGHTED_OPS and list(consumer.input).index(node.output[0]) == 1:
                    scales = _weight_scales(consumer, values, scale, zero_point, dtype, axis, given.notes)
                    if scales is not None:
                        given.weights[consumer.name or consumer.output[0]] = scales
            removed.add(id(node))
            continue
        if quantize is None or quantize.op_type != "QuantizeLinear":
            raise ModelError(f"{node_label(node)} reads '{x}', which no QuantizeLinear makes: integer model "
                             "inputs and integer tensors between nodes are not supported")
        if any(c.op_type != "DequantizeLinear" for c in consumers.get(x, [])) or x in graph_outputs:
            raise ModelError(f"{node_label(quantize)}: its integer output is used other than by DequantizeLinear")
        real = quantize.input[0]
        params = _activation_params(node, constants)
        if _activation_params(quantize, constants) != params:
            raise ModelError(f"{node_label(quantize)} and {node_label(node)} state different quantizations")
        source[node.output[0]] = source.get(real, real)
        given.activations[source[node.output[0]]] = params
        removed.update((id(node), id(quantize)))
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and id(node) not in removed:
            raise ModelError(f"{node_label(node)} is not followed by DequantizeLinear: integer model outputs "
                             "are not supported")

    kept = [node for node in graph.node if id(node) not in removed]
    # A dissolved pair at a graph output: the float tensor before it takes the output's name.
    renamed = {}
    for out in graph.output:
        if out.name in source:
            real = source.pop(out.name)
            if real in {i.name for i in graph.input} or real in renamed:
                raise ModelError(f"graph output '{out.name}' is a quantized copy of '{real}', which is "
                                 "also an input or another output; not supported")
            renamed[real] = out.name
            if real in given.activations:
                given.activations[out.name] = given.activations.pop(real)
    for node in kept:
        for i, name in enumerate(node.input):
            name = source.get(name, name)
            node.input[i] = renamed.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renamed.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_initializers)
    used = {name for node in kept for name in node.input} | graph_outputs
    keep_initializers = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_initializers)
    del graph.value_info[:]  # the dissolved tensors' declarations are stale
    return proto, given

"""Custom ops (type CUSTOM) that on-device models carry, told apart by their custom code.

* ``Convolution2DTransposeBias`` (MediaPipe): a float transposed convolution with a bias. Inputs:
  input [N, H, W, I], filter [O, KH, KW, I], bias [O]. Its custom options are a TfLite params struct
  whose first three little-endian int32s are padding (TfLitePadding: 1 SAME, 2 VALID; 0, unknown,
  pads nothing as VALID does), stride_width and stride_height; whatever follows is not read.
  Output size: stride * (in - 1) + filter - total padding, where SAME pads
  max(0, filter - 1 - (in - 1) % stride) in total, VALID nothing; the padding before is half the
  total, rounded down. That is exactly TRANSPOSE_CONV's arithmetic for that output size (its SAME
  padding, computed from the output size, comes to the same total), so the kernel runs the op as
  TRANSPOSE_CONV with a bias, and the converter rewrites it to one (``transpose_conv_equivalent``).
"""
from __future__ import annotations

import struct

import numpy as np

from edgeq.runtime.ir import Graph, ModelError, Op, Tensor
from edgeq.runtime.kernels import CUSTOM_REGISTRY, check, register, register_custom
from edgeq.runtime.kernels.transpose_conv import prepare_transpose_conv

TRANSPOSE_CONV_BIAS = "Convolution2DTransposeBias"
_TFLITE_PADDING = {0: "VALID", 1: "SAME", 2: "VALID"}


@check("CUSTOM")
def check_custom(op, graph):
    """The dtypes each custom op's kernel takes (its shapes are ``output_shape``'s)."""
    if op.options.get("custom_code") == TRANSPOSE_CONV_BIAS:
        if any(graph[name].dtype != np.float32 for name in op.inputs + op.outputs):
            raise ModelError("only float32 is supported, as in MediaPipe")


def output_shape(op, graph) -> tuple:
    """The output shape of a custom op with a kernel here, as that kernel computes it."""
    return CUSTOM_OUTPUT_SHAPES[op.options.get("custom_code")](op, graph)


@register("CUSTOM")
def prepare_custom(op, graph):
    prepare = CUSTOM_REGISTRY.get(op.options.get("custom_code"))
    if prepare is None:
        raise ModelError(f"op {op}: no kernel for custom op '{op.options.get('custom_code', '')}'")
    return prepare(op, graph)


def transpose_conv_bias_options(op: Op) -> dict:
    """padding ("SAME"/"VALID"), stride_w and stride_h from a Convolution2DTransposeBias op's raw options."""
    raw = bytes(op.options.get("custom_options", b""))
    if len(raw) < 12:
        raise ModelError(f"op {op}: custom options hold {len(raw)} bytes, need 12 (padding, stride_w, stride_h)")
    padding, stride_w, stride_h = struct.unpack_from("<3i", raw)
    if padding not in _TFLITE_PADDING:
        raise ModelError(f"op {op}: padding {padding} is not a TfLitePadding value (1 SAME, 2 VALID)")
    if stride_w < 1 or stride_h < 1:
        raise ModelError(f"op {op}: strides ({stride_h}, {stride_w}) must be positive")
    return {"padding": _TFLITE_PADDING[padding], "stride_w": stride_w, "stride_h": stride_h}


def transpose_conv_bias_output_shape(op: Op, graph: Graph) -> tuple:
    """[N, out_h, out_w, O] of a Convolution2DTransposeBias op; ModelError when its inputs do not fit."""
    if len(op.inputs) != 3 or len(op.outputs) != 1 or not all(op.inputs):
        raise ModelError(f"op {op}: takes input, filter and bias and gives one output")
    x, filters, bias = (graph[name] for name in op.inputs)
    if len(x.shape) != 4 or len(filters.shape) != 4 or bias.shape != filters.shape[:1]:
        raise ModelError(f"op {op}: input {x.shape}, filter {filters.shape} and bias {bias.shape} "
                         "must be [N, H, W, I], [O, KH, KW, I] and [O]")
    if filters.shape[3] != x.shape[3]:
        raise ModelError(f"op {op}: filter {filters.shape} does not fit input {x.shape}")
    options = transpose_conv_bias_options(op)
    out_h, out_w = (
        _output_size(x.shape[axis], filters.shape[axis], options[stride], options["padding"])
        for axis, stride in ((1, "stride_h"), (2, "stride_w"))
    )
    return (x.shape[0], out_h, out_w, filters.shape[0])


def _output_size(in_size: int, filter_size: int, stride: int, padding: str) -> int:
    total_padding = max(0, filter_size - 1 - (in_size - 1) % stride) if padding == "SAME" else 0
    return stride * (in_size - 1) + filter_size - total_padding


def transpose_conv_equivalent(op: Op, graph: Graph) -> tuple:
    """(TRANSPOSE_CONV options, output_shape) computing what the Convolution2DTransposeBias ``op`` does
    when given inputs (output_shape, filter, input, bias)."""
    output_shape = transpose_conv_bias_output_shape(op, graph)
    if graph[op.outputs[0]].shape != output_shape:
        raise ModelError(f"op {op}: output '{op.outputs[0]}' is declared {graph[op.outputs[0]].shape}, "
                         f"the op gives {output_shape}")
    options = transpose_conv_bias_options(op)
    return {**options, "fused_activation_function": "NONE"}, output_shape


# custom code -> output_shape(op, graph), declared for every custom op with a kernel here.
CUSTOM_OUTPUT_SHAPES = {TRANSPOSE_CONV_BIAS: transpose_conv_bias_output_shape}


@register_custom(TRANSPOSE_CONV_BIAS)
def prepare_transpose_conv_bias(op, graph):
    x_name, filter_name, bias_name = op.inputs
    options, output_shape = transpose_conv_equivalent(op, graph)
    # The TRANSPOSE_CONV kernel, prepared on a graph of this op's tensors alone.
    shape = np.array(output_shape, np.int32)
    shape_name = f"{op.outputs[0]}/output_shape"
    alone = Graph(
        [Tensor(shape_name, shape.shape, np.int32, shape)]
        + [graph[name] for name in dict.fromkeys((filter_name, x_name, bias_name, op.outputs[0]))],
    )
    equivalent = Op("TRANSPOSE_CONV", [shape_name, filter_name, x_name, bias_name], list(op.outputs),
                    options, op.name)
    evaluate = prepare_transpose_conv(equivalent, alone)

    def transpose_conv_bias(x, filters, bias):
        return evaluate(shape, filters, x, bias)

    return transpose_conv_bias

"""TFLite operator-code versions: the version TFLite's converter gives each op, from its tensors' dtypes,
ranks and quantization and its options (tensorflow/lite/tools/versioning/op_version.cc,
GetBuiltinOperatorVersion). Kept apart from the writer, as TFLite keeps them apart: the writer only
asks ``operator_version``. LiteRT refuses a file naming a version its op resolver does not register,
so every op edgeq writes or runs has an entry in ``VERSION_RULES``, even when it is always version 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from edgeq.runtime.ir import Graph, Op
from edgeq.runtime.tflite_format import schema


@dataclass
class _Signature:
    """What an op's version depends on: its tensors' dtypes, ranks and quantization, and its options."""

    op: Op
    inputs: list     # Tensor or None for an omitted input
    outputs: list

    def in_type(self, i: int) -> Optional[np.dtype]:
        return self.inputs[i].dtype if i < len(self.inputs) and self.inputs[i] is not None else None

    def out_type(self, i: int = 0) -> Optional[np.dtype]:
        return self.outputs[i].dtype if i < len(self.outputs) else None

    def in_rank(self, i: int = 0) -> int:
        return len(self.inputs[i].shape) if i < len(self.inputs) and self.inputs[i] is not None else 0

    def option(self, name: str):
        return schema.options_with_defaults(self.op.type, self.op.options).get(name)

    def types_are(self, *dtypes) -> bool:
        """Input 0, input 1 (the weights) and output 0 have these dtypes."""
        return (self.in_type(0), self.in_type(1), self.out_type(0)) == tuple(np.dtype(d) for d in dtypes)

    def per_channel(self, tensor) -> bool:
        return tensor is not None and tensor.quant is not None and tensor.quant.per_channel

    def broadcasts_beyond_4d(self) -> bool:
        shapes = [t.shape for t in self.inputs if t is not None]
        return len(set(shapes)) > 1 and max(len(s) for s in shapes) > 4


I8, I16, I32, I64, U8, F16, F32, F64, BOOL = (np.dtype(t) for t in ("int8", "int16", "int32", "int64", "uint8", "float16", "float32", "float64", "bool"))


def _by_input_type(table: dict) -> Callable:
    """A rule that only looks at input 0's dtype; ``table`` maps dtype -> version, anything else is 1."""
    return lambda s: table.get(s.in_type(0), 1)


def _conv_2d(s: _Signature) -> int:
    if s.types_are(I16, I8, I16) and s.option("quantized_bias_type") != "FLOAT32":
        return 8
    filter_in_channels = s.inputs[1].shape[-1] if s.inputs[1] is not None else None
    if s.inputs[0] is not None and s.inputs[0].shape and filter_in_channels not in (None, s.inputs[0].shape[-1]):
        return 6
    if s.types_are(I16, I16, I16):
        return 4
    if s.types_are(I8, I8, I8):
        return 3
    if s.types_are(F32, I8, F32):
        return 5 if s.per_channel(s.inputs[1]) else 2
    return 1


def _depthwise_conv_2d(s: _Signature) -> int:
    if s.types_are(I16, I16, I16):
        return 5
    if s.types_are(F32, I8, F32):
        return 6 if s.per_channel(s.inputs[1]) else 4
    if s.types_are(I8, I8, I8):
        return 3
    if s.option("dilation_w_factor") != 1 or s.option("dilation_h_factor") != 1:
        return 2
    return 1


def _fully_connected(s: _Signature) -> int:
    if s.types_are(F32, I8, F32) and s.per_channel(s.inputs[1]):
        return 12
    if s.types_are(I16, I8, I16) and s.option("quantized_bias_type") != "FLOAT32":
        return 11
    if s.types_are(I16, I16, I16):
        return 7
    if len(s.op.inputs) == 2:
        return 6
    if s.option("keep_num_dims"):
        return 5
    if s.types_are(I8, I8, I8):
        return 4
    if s.types_are(F32, I8, F32):
        return 9 if s.option("asymmetric_quantize_inputs") else 3
    if s.option("weights_format") != "DEFAULT":
        return 2
    return 1


def _add(s: _Signature) -> int:
    if s.in_type(0) == I16 and s.inputs[0].quant is None:
        return 5
    if s.in_type(0) == I64:
        return 4
    if s.in_type(0) == I16 and s.out_type() == I16 and not s.option("pot_scale_int16"):
        return 3
    return 2 if s.in_type(0) == I8 else 1


def _sub(s: _Signature) -> int:
    if s.in_type(0) == I16 and s.out_type() == I16 and not s.option("pot_scale_int16"):
        return 5
    if s.in_type(0) == I64:
        return 4
    if s.broadcasts_beyond_4d():
        return 3
    return 2 if s.in_type(0) == I8 else 1


def _mul(s: _Signature) -> int:
    if s.in_type(0) == I16 and s.inputs[0].quant is None:
        return 7
    if s.in_type(0) == np.dtype(np.complex64):
        return 6
    if s.in_type(0) == I64:
        return 5
    if s.in_type(0) == I16:
        return 4
    quants = [t.quant for t in (s.inputs[0], s.inputs[1], s.outputs[0]) if t is not None and t.quant is not None]
    if len(quants) == 3 and all(q.scale[0] != 0 for q in quants):
        if quants[0].scale[0] * quants[1].scale[0] / quants[2].scale[0] >= 1.0:
            return 3
    return 2 if s.in_type(0) == I8 else 1


def _maximum_minimum(s: _Signature) -> int:
    if s.in_type(0) == I16:
        return 4
    if s.broadcasts_beyond_4d():
        return 3
    return 2 if s.in_type(0) == I8 else 1


def _div(s: _Signature) -> int:
    return 2 if s.broadcasts_beyond_4d() else 1


def _transpose(s: _Signature) -> int:
    if s.in_rank() > 5:
        return 6
    if s.in_type(0) == I16:
        return 5
    if s.in_rank() > 4:
        return 4
    return {BOOL: 3, I8: 2}.get(s.in_type(0), 1)


def _transpose_conv(s: _Signature) -> int:
    # inputs: output_shape, weights, input, bias
    if (s.in_type(2), s.in_type(1), s.out_type()) == (I16, I8, I16) and s.option("quantized_bias_type") != "FLOAT32":
        return 5
    if s.option("fused_activation_function") != "NONE":
        return 4
    if len(s.op.inputs) == 4 and s.op.inputs[3]:
        return 3
    return 2 if s.in_type(1) == I8 else 1


def _pad(s: _Signature) -> int:
    if s.in_rank() > 4:
        return 4
    return {I16: 3, I8: 2}.get(s.in_type(0), 1)


def _slice(s: _Signature) -> int:
    if s.in_rank() > 4:
        return 5
    return {I16: 4, I8: 2}.get(s.in_type(0), 1)


def _strided_slice(s: _Signature) -> int:
    if s.option("offset"):
        return 8
    if s.option("ellipsis_mask") or s.option("new_axis_mask"):
        return 6
    if s.in_rank() > 4:
        return 4
    return {BOOL: 3, I8: 2}.get(s.in_type(0), 1)


def _gather(s: _Signature) -> int:
    if s.in_type(1) == I16:
        return 6
    if s.option("batch_dims"):
        return 5
    return {I16: 4, BOOL: 3, I8: 2}.get(s.in_type(0), 1)


def _split(s: _Signature) -> int:
    # input 0 is the axis; the data is input 1
    return {I16: 4, I32: 3, I8: 2}.get(s.in_type(1), 1)


def _resize(s: _Signature) -> int:
    if s.in_type(0) == I16:
        return 4
    if s.option("half_pixel_centers") or (s.op.type == "RESIZE_NEAREST_NEIGHBOR" and s.option("align_corners")):
        return 3
    return 2 if s.in_type(0) == I8 else 1


def _quantize(s: _Signature) -> int:
    if s.per_channel(s.outputs[0]):
        return 3
    return 2 if s.out_type() == I16 else 1


def _dequantize(s: _Signature) -> int:
    if s.in_type(0) in (I16, F16):
        return 3
    if s.in_type(0) == I8:
        return 5 if s.per_channel(s.inputs[0]) else 2
    return 1


def _abs(s: _Signature) -> int:
    if s.in_type(0) == I16:
        return 3 if s.inputs[0].quant is not None else 4
    return {I32: 5, I8: 2, U8: 2}.get(s.in_type(0), 1)


def _batch_matmul(s: _Signature) -> int:
    if s.in_type(0) in (I16, I8):
        return {I16: 3, I8: 2}[s.in_type(0)]
    if s.types_are(F32, I8, F32) and s.option("asymmetric_quantize_inputs"):
        return 4
    return 1


def _select_v2(s: _Signature) -> int:
    return 2 if max(s.in_rank(i) for i in range(3)) > 4 else 1


def _cast(s: _Signature) -> int:
    types = {s.in_type(0), s.out_type()}
    if types & {F64, F16}:
        return 5
    if np.dtype(np.uint16) in types:
        return 4
    if I8 in types:
        return 3
    return 2 if np.dtype(np.uint32) in types else 1


def _unpack(s: _Signature) -> int:
    return {I8: 2, U8: 2, BOOL: 3, I16: 4}.get(s.in_type(0), 1)


_INT8_IS_2 = _by_input_type({I8: 2})
_INT16_3_INT8_2 = _by_input_type({I16: 3, I8: 2})


def _version_1(s: _Signature) -> int:
    """op_version.cc has no case for the op, or none that a signature edgeq writes reaches."""
    return 1


# TFLite's GetBuiltinOperatorVersion (tensorflow/lite/tools/versioning/op_version.cc) for the ops edgeq
# writes or runs, each listed even when always version 1 (tests/test_op_catalogue.py holds every op to
# that); an op read from someone else's file and not listed is written as version 1.
VERSION_RULES: dict = {
    "CONV_2D": _conv_2d,
    "DEPTHWISE_CONV_2D": _depthwise_conv_2d,
    "FULLY_CONNECTED": _fully_connected,
    "ADD": _add,
    "SUB": _sub,
    "MUL": _mul,
    "DIV": _div,
    "MAXIMUM": _maximum_minimum,
    "MINIMUM": _maximum_minimum,
    "RELU": _by_input_type({I16: 3, I8: 2, U8: 2}),
    "RELU6": _INT16_3_INT8_2,
    "LEAKY_RELU": _by_input_type({I16: 2}),
    "LOGISTIC": _INT16_3_INT8_2,
    "TANH": _INT16_3_INT8_2,
    "MAX_POOL_2D": _INT16_3_INT8_2,
    "AVERAGE_POOL_2D": _INT16_3_INT8_2,
    "SOFTMAX": _INT16_3_INT8_2,
    "MEAN": _INT16_3_INT8_2,
    "REDUCE_MAX": _INT16_3_INT8_2,
    "REDUCE_MIN": _INT16_3_INT8_2,
    "MIRROR_PAD": _INT16_3_INT8_2,
    "RSQRT": _INT16_3_INT8_2,
    "CONCATENATION": _INT16_3_INT8_2,
    "SUM": _INT8_IS_2,
    "SPLIT_V": _INT8_IS_2,
    "SQUARED_DIFFERENCE": _INT8_IS_2,
    "SPACE_TO_DEPTH": _INT8_IS_2,
    # TFLite gives int8 version 2, which LiteRT's reference resolver does not register; its version 1
    # kernel computes int8 all the same (it dispatches on the type), so version 1 runs everywhere.
    "DEPTH_TO_SPACE": lambda s: 1,
    "LOG_SOFTMAX": _INT8_IS_2,
    "L2_NORMALIZATION": _INT8_IS_2,
    "GREATER": _INT8_IS_2,
    "LESS_EQUAL": _INT8_IS_2,
    "LESS": _INT16_3_INT8_2,
    "GREATER_EQUAL": _INT16_3_INT8_2,
    "EXP": _by_input_type({I8: 2, I16: 2}),
    "LOG": _by_input_type({I8: 2, I16: 2}),
    "SQRT": _by_input_type({I8: 2, I16: 2}),
    "REDUCE_PROD": _by_input_type({I8: 2, I16: 2}),
    "GELU": _by_input_type({I8: 2, U8: 2}),
    "ARG_MAX": _by_input_type({BOOL: 3, I8: 2}),
    "ARG_MIN": _by_input_type({BOOL: 3, I8: 2}),
    "TILE": _by_input_type({I8: 3}),
    "TOPK_V2": _by_input_type({I8: 2, I16: 3}),
    # Version 1 was withdrawn when the op changed its builtin code, so float starts at 2.
    "BROADCAST_TO": lambda s: 3 if s.in_type(0) == I16 else 2,
    "PACK": _by_input_type({I8: 2, I16: 3}),
    "UNPACK": _unpack,
    "PAD": _pad,
    "PADV2": _pad,
    "TRANSPOSE": _transpose,
    "TRANSPOSE_CONV": _transpose_conv,
    "SLICE": _slice,
    "STRIDED_SLICE": _strided_slice,
    "GATHER": _gather,
    "SPLIT": _split,
    "RESIZE_BILINEAR": _resize,
    "RESIZE_NEAREST_NEIGHBOR": _resize,
    "QUANTIZE": _quantize,
    "DEQUANTIZE": _dequantize,
    "ABS": _abs,
    "BATCH_MATMUL": _batch_matmul,
    "CAST": _cast,
    "SELECT_V2": _select_v2,
    "EQUAL": _by_input_type({I16: 4, I8: 2}),
    "NOT_EQUAL": _INT8_IS_2,
    "FLOOR_MOD": _by_input_type({I8: 2, I16: 2}),
    "SIGN": _by_input_type({I32: 2}),
    # op_version.cc versions builtins only; the custom ops with a kernel here (MediaPipe's
    # Convolution2DTransposeBias) are registered as version 1.
    "CUSTOM": _version_1,
    **{op_type: _version_1 for op_type in (
        "CEIL", "COS", "CUMSUM", "DENSIFY", "ELU", "EXPAND_DIMS", "FLOOR", "HARD_SWISH", "LOCAL_RESPONSE_NORMALIZATION",
        "LOGICAL_AND", "LOGICAL_NOT", "LOGICAL_OR", "NEG", "POW", "PRELU", "RELU_N1_TO_1", "RESHAPE", "ROUND", "SHAPE",
        "SIN", "SQUARE", "SQUEEZE")},
}


def operator_version(op: Op, graph: Graph) -> int:
    """The operator-code version TFLite's converter gives ``op`` in ``graph``."""
    rule = VERSION_RULES.get(op.type)
    if rule is None:
        return 1
    signature = _Signature(op, [graph[n] if n else None for n in op.inputs], [graph[n] for n in op.outputs])
    return rule(signature)

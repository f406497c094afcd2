"""int8/uint8/int16 tensors that hold plain integers (ONNX has no quantization on them).

TFLite reads those types as quantized: its kernels for them require quantization parameters (LiteRT
aborts the process on some without them; XNNPACK refuses even a TRANSPOSE of them) and rescale and
saturate their results. A plain integer is exactly the quantized value with scale 1 and zero point 0,
so every such tensor gets those identity parameters; then kernels that only compare, clamp or move
integers compute ONNX's result exactly. Where a kernel would rescale or saturate (where ONNX integer
arithmetic wraps), results could differ from ONNX's, and the import is refused, naming the op.
"""
from __future__ import annotations

from edgeq.runtime.ir import Graph, ModelError, QuantParams

NARROW_INTEGERS = ("int8", "uint8", "int16")
# Kernels whose int8/uint8/int16 path is the quantized one.
QUANTIZED_KERNELS = {
    "ADD", "SUB", "MUL", "DIV", "SQUARED_DIFFERENCE", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
    "TRANSPOSE_CONV", "BATCH_MATMUL", "AVERAGE_POOL_2D", "MAX_POOL_2D", "RELU", "RELU6", "RELU_N1_TO_1",
    "RELU_0_TO_1", "LEAKY_RELU", "PRELU", "LOGISTIC", "TANH", "ELU", "HARD_SWISH", "GELU", "SOFTMAX",
    "LOG_SOFTMAX", "EXP", "LOG", "SQRT", "RSQRT", "ABS", "NEG", "SIN", "COS", "MEAN", "SUM", "REDUCE_PROD",
    "RESIZE_BILINEAR", "LOCAL_RESPONSE_NORMALIZATION", "L2_NORMALIZATION", "CONCATENATION",
}
# With identity parameters on every operand these compute the integer op exactly: a max, a clamp to
# integer bounds, or a copy (the requantization multiplier is exactly 1).
EXACT_WITH_IDENTITY = {"MAX_POOL_2D", "RELU", "RELU6", "RELU_N1_TO_1", "CONCATENATION"}


def identity_params() -> QuantParams:
    return QuantParams(scale=[1.0], zero_point=[0])


def settle_plain_integers(graph: Graph) -> Graph:
    """Give every plain narrow-integer tensor identity parameters; refuse kernels where they are not exact."""
    plain = {name for name, tensor in graph.tensors.items()
             if tensor.dtype.name in NARROW_INTEGERS and tensor.quant is None}
    for op in graph.ops:
        if op.type in QUANTIZED_KERNELS and op.type not in EXACT_WITH_IDENTITY:
            touched = [name for name in list(op.inputs) + list(op.outputs) if name in plain]
            if touched:
                tensor = graph[touched[0]]
                raise ModelError(
                    f"op {op.type} '{op.name}': '{tensor.name}' holds plain {tensor.dtype.name} integers, which "
                    f"TFLite's {op.type} reads as quantized values (rescaled and saturated), so its results "
                    f"would differ from ONNX's"
                )
    for name in plain:
        graph[name].quant = identity_params()
    return graph

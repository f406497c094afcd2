"""QUANTIZE (float -> int8/uint8/int16, and requantization between integer types) and DEQUANTIZE
(int8/uint8/int16 -> float, and float16 -> float for float16 models), as LiteRT's reference kernels.

* float -> integer (reference_ops::AffineQuantize): round(x / scale) in float32 with std::round
  (ties away from zero), plus the zero point, clamped to the type's range.
* integer -> integer (reference_ops::Requantize): (x - input_zero_point) * input_scale/output_scale
  through a Q31 multiplier (MultiplyByQuantizedMultiplier, double rounding), plus the output zero
  point, clamped. With equal scales this is just the shift of zero point (uint8 <-> int8 by 128).
* integer -> float (reference_ops::Dequantize): (x - zero_point) * scale in double, cast to float.
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime import native
from edgeq.runtime.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier, round_half_away
from edgeq.runtime.kernels import check, register
from edgeq.runtime.kernels.buffers import BuffersByShape
from edgeq.runtime.kernels.requantize import double_to_int32, saturate, scale_and_zero_point
from edgeq.runtime.ir import ModelError

_INTEGER_TYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16))


def _check_quantized(tensor) -> None:
    if tensor.quant is None or tensor.quant.scale.size == 0:
        raise ModelError(f"tensor '{tensor.name}' ({tensor.dtype}) has no quantization parameters")


@check("QUANTIZE")
def check_quantize(op, graph):
    input_tensor, output_tensor = graph[op.inputs[0]], graph[op.outputs[0]]
    if output_tensor.dtype not in _INTEGER_TYPES:
        raise ModelError(f"QUANTIZE to {output_tensor.dtype} is not supported (int8, uint8, int16 are)")
    _check_quantized(output_tensor)
    if input_tensor.dtype not in (np.float32, np.float16):
        if input_tensor.dtype not in _INTEGER_TYPES:
            raise ModelError(f"QUANTIZE from {input_tensor.dtype} is not supported")
        _check_quantized(input_tensor)


@check("DEQUANTIZE")
def check_dequantize(op, graph):
    input_tensor = graph[op.inputs[0]]
    if input_tensor.dtype == np.float16:
        return
    if input_tensor.dtype not in _INTEGER_TYPES:
        raise ModelError(f"DEQUANTIZE from {input_tensor.dtype} is not supported (int8, uint8, int16, float16 are)")
    _check_quantized(input_tensor)


@register("QUANTIZE")
def prepare_quantize(op, graph):
    input_tensor, output_tensor = graph[op.inputs[0]], graph[op.outputs[0]]
    output_scale, output_zero_point = scale_and_zero_point(output_tensor, op)
    info = np.iinfo(output_tensor.dtype)
    low, high = int(info.min), int(info.max)
    dtype = output_tensor.dtype

    if input_tensor.dtype == np.float32 and dtype == np.int8 and native.enabled():
        isa, outputs = native.isa(), BuffersByShape(dtype)

        def quantize_native(x):
            return native.quantize_int8(np.ascontiguousarray(x), output_scale, output_zero_point, low, high,
                                        outputs.get(x.shape), isa)

        return quantize_native

    if input_tensor.dtype in (np.float32, np.float16):
        def quantize(x):
            q = round_half_away(x.astype(np.float32, copy=False) / output_scale)
            # static_cast<int32_t>(q) + zero_point, as the reference kernel computes it on x86-64: NaN and
            # values outside int32 give INT32_MIN, and the sum wraps in int32 (numpy's own cast would leave
            # those values to the CPU, and ARM's saturates).
            whole = double_to_int32(q).astype(np.int32) + np.int32(output_zero_point)
            return saturate(whole.astype(np.int64), low, high, dtype)

        return quantize

    input_scale, input_zero_point = scale_and_zero_point(input_tensor, op)
    effective_scale = np.float64(input_scale) / np.float64(output_scale)
    output_multiplier, output_shift = quantize_multiplier(effective_scale)

    def requantize(x):
        scaled = multiply_by_quantized_multiplier(x.astype(np.int64) - input_zero_point,
                                                  output_multiplier, output_shift)
        return saturate(scaled.astype(np.int64) + output_zero_point, low, high, dtype)

    return requantize


@register("DEQUANTIZE")
def prepare_dequantize(op, graph):
    input_tensor = graph[op.inputs[0]]
    if input_tensor.dtype == np.float16:
        return lambda x: x.astype(np.float32)
    quant = input_tensor.quant
    if quant.scale.size > 1:  # per-channel constant (e.g. weights) along quant.axis
        shape = [1] * len(input_tensor.shape)
        shape[quant.axis] = -1
        scale = quant.scale.astype(np.float64).reshape(shape)
        zero_point = quant.zero_point.astype(np.int64).reshape(shape) if quant.zero_point.size > 1 \
            else np.int64(quant.zero_point[0])
    else:
        scale = np.float64(np.float32(quant.scale[0]))
        zero_point = np.int64(quant.zero_point[0])
        if input_tensor.dtype == np.int8 and native.enabled():
            isa, outputs = native.isa(), BuffersByShape(np.float32)

            def dequantize_native(x):
                return native.dequantize_int8(isa, np.ascontiguousarray(x), scale, int(zero_point),
                                              outputs.get(x.shape))

            return dequantize_native

    def dequantize(x):
        return ((x.astype(np.int64) - zero_point) * scale).astype(np.float32)

    return dequantize

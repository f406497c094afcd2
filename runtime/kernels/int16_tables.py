"""The int16 (16x8: symmetric int16 activations, zero point 0) forms of the elementwise activations, as
65536-entry tables: entry i is LiteRT's reference-kernel output for the int16 whose bits are i.

Prepare runs TFLite's own integer computation on every int16 value once; eval is one lookup, exact by
construction. Three computations fill the tables:
  - requantizing clamps and slopes (RELU, RELU6, LEAKY_RELU, ABS): MultiplyByQuantizedMultiplier, as int8;
  - LOGISTIC and TANH: reference_integer_ops' fixed-point scheme, the input rescaled to 1/(3 * 4096) (or
    by its power-of-two scale) and a 256-entry sigmoid table interpolated over 9 (LOGISTIC) or 8 (TANH)
    fraction bits;
  - EXP, LOG, RSQRT, GELU: LUTPopulate<int16_t>, a 513-entry table of the float32 function sampled at
    512 steps across the input range (each entry biased by half its midpoint interpolation error), read
    with LUTLookup's 7-bit linear interpolation.
Nothing here registers a kernel: activations.py picks these tables for int16 tensors.
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier, round_half_away
from edgeq.runtime.ir import ModelError
from edgeq.runtime.kernels.requantize import activation_range_for

INT16_MIN, INT16_MAX = -32768, 32767
# Every int16 value, in table order: entry i of a table is the output for the int16 whose bits are i.
ALL_INT16 = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int64)


def lookup(table: np.ndarray):
    """eval for a 65536-entry int16 table."""
    def lookup_table_int16(x):
        return table[x.view(np.uint16)]

    return lookup_table_int16


def _clamped(values: np.ndarray) -> np.ndarray:
    return np.clip(values, INT16_MIN, INT16_MAX).astype(np.int16)


def _wrapped(values: np.ndarray) -> np.ndarray:
    """static_cast<int16_t> of an int: the low 16 bits."""
    return np.asarray(values, dtype=np.int64).astype(np.uint16).view(np.int16)


def check_symmetric(graph, names) -> None:
    """The 16x8 tensors ``names`` are quantized int16 with zero point 0 (what LiteRT's int16 kernels
    require). Raises ModelError without naming the op (the validator does)."""
    for name in names:
        tensor = graph[name]
        if tensor.dtype != np.int16:
            raise ModelError(f"tensor '{name}' is {tensor.dtype}; an int16 input takes int16 tensors here")
        if tensor.quant is None or tensor.quant.scale.size == 0:
            raise ModelError(f"int16 tensor '{name}' has no quantization parameters")
        if np.any(tensor.quant.zero_point != 0):
            raise ModelError(f"int16 tensor '{name}' must have zero point 0 (16x8 quantization)")


def check_q15_output(op, graph) -> None:
    """LOGISTIC, TANH and SOFTMAX give Q0.15: output scale 1/32768 (as CheckedLog2 and the kernels test it)."""
    output_scale = np.float32(graph[op.outputs[0]].quant.scale[0])
    output_log2, is_power = checked_log2(output_scale)
    if not is_power or output_log2 != -_OUTPUT_FRACTIONAL_BITS or (
            op.type == "LOGISTIC" and output_scale != np.float32(1.0 / 32768)):
        raise ModelError(f"int16 {op.type} needs the output scale 1/32768, not {output_scale:g}")


def symmetric_params(op, graph) -> tuple:
    """(input_scale, output_scale) as float32 of an int16 -> int16 op; both zero points must be 0."""
    check_symmetric(graph, (op.inputs[0], op.outputs[0]))
    return np.float32(graph[op.inputs[0]].quant.scale[0]), np.float32(graph[op.outputs[0]].quant.scale[0])


# -- requantizing clamps ---------------------------------------------------------------------------

def relu_family_table(op, graph) -> np.ndarray:
    """QuantizedReluX<int16_t>: x requantized by input_scale / output_scale, clamped to the op's range."""
    input_scale, output_scale = symmetric_params(op, graph)
    multiplier, shift = quantize_multiplier(float(input_scale / output_scale))
    low, high = activation_range_for(op.type, output_scale, 0, np.int16, op)
    requantized = multiply_by_quantized_multiplier(ALL_INT16, multiplier, shift).astype(np.int64)
    return _clamped(np.clip(requantized, low, high))


def leaky_relu_table(op, graph, alpha) -> np.ndarray:
    """reference_ops::QuantizeLeakyRelu<int16_t>: the identity multiplier for x >= 0, else the alpha
    multiplier (a negative alpha multiplies by |alpha| and negates)."""
    input_scale, output_scale = symmetric_params(op, graph)
    alpha_multiplier, alpha_shift = quantize_multiplier(float(input_scale * np.float32(alpha) / output_scale))
    identity_multiplier, identity_shift = quantize_multiplier(float(input_scale / output_scale))
    identity = multiply_by_quantized_multiplier(ALL_INT16, identity_multiplier, identity_shift).astype(np.int64)
    scaled_alpha = multiply_by_quantized_multiplier(ALL_INT16, abs(alpha_multiplier), alpha_shift).astype(np.int64)
    if alpha_multiplier < 0:
        scaled_alpha = -scaled_alpha
    return _clamped(np.where(ALL_INT16 >= 0, identity, scaled_alpha))


def abs_table(op, graph) -> np.ndarray:
    """elementwise.cc's AbsEvalQuantized<int16_t>: |x|, requantized only when the scales differ."""
    input_scale, output_scale = symmetric_params(op, graph)
    value = np.abs(ALL_INT16)
    if input_scale != output_scale:
        multiplier, shift = quantize_multiplier(float(input_scale / output_scale))
        value = multiply_by_quantized_multiplier(value, multiplier, shift).astype(np.int64)
    return _clamped(value)


def sqrt_table(op, graph) -> np.ndarray:
    """elementwise.cc's SqrtEvalQuantized<int16_t>: sqrtf of the float32 dequantized input, divided by the
    output scale and truncated toward zero (static_cast<int>), clamped. Entries for negative inputs are
    unused (eval refuses them)."""
    input_scale, output_scale = symmetric_params(op, graph)
    dequantized = input_scale * np.maximum(ALL_INT16, 0).astype(np.float32)
    quotient = (np.sqrt(dequantized) / output_scale).astype(np.float32)
    # static_cast<int>(float): truncation; beyond the int32 range x86-64 gives INT32_MIN.
    inside = quotient < np.float32(2.0**31)
    return _clamped(np.where(inside, np.trunc(np.where(inside, quotient, 0)), -(2**31)).astype(np.int64))


# -- LOGISTIC and TANH: fixed point over a 256-entry sigmoid table -----------------------------------

# common.h's sigmoid_table_uint16: 65536 * sigmoid(x) at 256 points about 1/24 apart (one step is 512 units
# of the 1/(3 * 4096)-scaled input), the last held at 65535. The published values are not exactly
# round(65536 * sigmoid(i / 24)) (44 entries differ by one), so they are kept as data.
SIGMOID_TABLE_UINT16 = np.array([
    32768, 33451, 34133, 34813, 35493, 36169, 36843, 37513, 38180, 38841, 39498, 40149, 40794, 41432, 42064,
    42688, 43304, 43912, 44511, 45102, 45683, 46255, 46817, 47369, 47911, 48443, 48964, 49475, 49975, 50464,
    50942, 51409, 51865, 52311, 52745, 53169, 53581, 53983, 54374, 54755, 55125, 55485, 55834, 56174, 56503,
    56823, 57133, 57433, 57724, 58007, 58280, 58544, 58800, 59048, 59288, 59519, 59743, 59959, 60168, 60370,
    60565, 60753, 60935, 61110, 61279, 61441, 61599, 61750, 61896, 62036, 62172, 62302, 62428, 62549, 62666,
    62778, 62886, 62990, 63090, 63186, 63279, 63368, 63454, 63536, 63615, 63691, 63765, 63835, 63903, 63968,
    64030, 64090, 64148, 64204, 64257, 64308, 64357, 64405, 64450, 64494, 64536, 64576, 64614, 64652, 64687,
    64721, 64754, 64786, 64816, 64845, 64873, 64900, 64926, 64950, 64974, 64997, 65019, 65039, 65060, 65079,
    65097, 65115, 65132, 65149, 65164, 65179, 65194, 65208, 65221, 65234, 65246, 65258, 65269, 65280, 65291,
    65301, 65310, 65319, 65328, 65337, 65345, 65352, 65360, 65367, 65374, 65381, 65387, 65393, 65399, 65404,
    65410, 65415, 65420, 65425, 65429, 65433, 65438, 65442, 65445, 65449, 65453, 65456, 65459, 65462, 65465,
    65468, 65471, 65474, 65476, 65479, 65481, 65483, 65485, 65488, 65489, 65491, 65493, 65495, 65497, 65498,
    65500, 65501, 65503, 65504, 65505, 65507, 65508, 65509, 65510, 65511, 65512, 65513, 65514, 65515, 65516,
    65517, 65517, 65518, 65519, 65520, 65520, 65521, 65522, 65522, 65523, 65523, 65524, 65524, 65525, 65525,
    65526, 65526, 65526, 65527, 65527, 65528, 65528, 65528, 65529, 65529, 65529, 65529, 65530, 65530, 65530,
    65530, 65531, 65531, 65531, 65531, 65531, 65532, 65532, 65532, 65532, 65532, 65532, 65533, 65533, 65533,
    65533, 65533, 65533, 65533, 65533, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534,
    65535], dtype=np.int64)
_INPUT_INTEGER_BITS = 3
_OUTPUT_FRACTIONAL_BITS = 15


def checked_log2(scale) -> tuple:
    """TFLite's CheckedLog2 in float32: (round(log2 x), whether log2 x is within 1e-3 of it)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log2 = np.float32(np.log(np.float32(scale))) * np.float32(np.float32(1.0) / np.float32(np.log(np.float32(2.0))))
    rounded = np.float32(round_half_away(np.float32(log2)))
    return int(rounded), bool(abs(np.float32(log2 - rounded)) < np.float32(1e-3))


def _fixed_point_input_rescale(op, graph, power_of_two_shifts: tuple) -> tuple:
    """(input_multiplier, input_left_shift) of activations.cc's int16 SigmoidPrepare / TanhPrepare, after
    Logistic / Tanh's own power-of-two substitution (multiplier 3 << shift, shift 0)."""
    input_scale, _ = symmetric_params(op, graph)
    check_q15_output(op, graph)
    input_log2, is_power = checked_log2(input_scale)
    left_shift = (15 - _INPUT_INTEGER_BITS) + input_log2
    if is_power and left_shift in power_of_two_shifts:
        return 3 << left_shift, 0
    # Rescale the input to 1/(3 * 4096) (the table spans [-10.7, 10.7] in 2^17 units).
    multiplier = float(input_scale) * 4096.0 * 3.0
    left_shift = 0
    while multiplier <= 32767.0 / 2.0 and left_shift <= 30:
        left_shift += 1
        multiplier *= 2.0
    # static_cast<int32_t>(double), truncating; an out-of-range value gives INT32_MIN on x86-64.
    truncated = int(multiplier) if multiplier < 2.0**31 else -(2**31)
    return truncated, left_shift


def _rescaled_input(multiplier: int, left_shift: int) -> np.ndarray:
    """(x * input_multiplier + round) >> input_left_shift in int32 for every int16 x."""
    rounding = (1 << (left_shift - 1)) if left_shift > 0 else 0
    product = ((ALL_INT16 * multiplier + rounding + 2**31) & 0xFFFFFFFF) - 2**31  # int32 wrap
    return product >> left_shift


def logistic_table(op, graph) -> np.ndarray:
    """reference_integer_ops::Logistic(int16): |input| interpolated over 9 fraction bits, mirrored for
    negative inputs as 1 - sigmoid(|x|), rounded to Q0.15."""
    multiplier, left_shift = _fixed_point_input_rescale(op, graph, (0,))
    value = _rescaled_input(multiplier, left_shift)
    magnitude = np.abs(value) & 0xFFFFFFFF
    high = magnitude >> 9
    inside = high < 255
    index = np.where(inside, high, 0)
    below, above = SIGMOID_TABLE_UINT16[index], SIGMOID_TABLE_UINT16[np.minimum(index + 1, 255)]
    interpolated = (below << 9) + (magnitude & 0x1FF) * (above - below)
    result = np.where(inside, interpolated, 0x7FFF << 10)
    result = np.where(value >= 0, result + (1 << 9), (1 << (16 + 9)) - result + (1 << 9) - 1)
    return _wrapped((result & 0xFFFFFFFF) >> 10)


def tanh_table(op, graph) -> np.ndarray:
    """reference_integer_ops::Tanh(int16): tanh(x) = 2 sigmoid(2x) - 1 from the same table, |input|
    interpolated over 8 fraction bits, mirrored for negative inputs, rounded to Q0.15."""
    multiplier, left_shift = _fixed_point_input_rescale(op, graph, (0, 1))
    value = _rescaled_input(multiplier, left_shift)
    magnitude = np.abs(value) & 0xFFFFFFFF
    high = magnitude >> 8
    inside = high < 255
    index = np.where(inside, high, 0)
    below, above = SIGMOID_TABLE_UINT16[index], SIGMOID_TABLE_UINT16[np.minimum(index + 1, 255)]
    interpolated = (below << 8) + (magnitude & 0xFF) * (above - below)
    result = np.where(inside, interpolated, 0xFFFF << 8)
    result = np.where(value >= 0, result - (1 << (14 + 9)) + (1 << (9 - 2)),
                      -result + (1 << (14 + 9)) + (1 << (9 - 2)) - 1)
    return _wrapped(result >> (9 - 1))


# -- LUTPopulate<int16_t> + LUTLookup --------------------------------------------------------------

LUT_STEPS = 512


def _to_int16_saturating(values: np.ndarray) -> np.ndarray:
    """static_cast<int16_t> of floats already clamped to the int16 range; NaN (inf - inf in a bias)
    converts through int32 on x86-64 as INT32_MIN, whose low 16 bits are 0."""
    return np.where(np.isnan(values), 0, values).astype(np.int64)


def populate_lut_int16(input_scale, input_zero_point, output_scale, output_zero_point, transform,
                       float_type=np.float32) -> np.ndarray:
    """LUTPopulateInt16<FloatT>: 513 entries, in FloatT arithmetic as the C++ evaluates it."""
    f = float_type
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        input_min = f(input_scale) * f(INT16_MIN - input_zero_point)
        input_max = f(input_scale) * f(INT16_MAX - input_zero_point)
        output_min = f(output_scale) * f(INT16_MIN - output_zero_point)
        output_max = f(output_scale) * f(INT16_MAX - output_zero_point)
        step = (input_max - input_min) / f(LUT_STEPS)
        half_step = step / f(2)
        output_scaling_inv = f(65536) / (output_max - output_min)
        steps = np.arange(LUT_STEPS).astype(f)
        at = (input_min + steps * step).astype(f)
        value = np.asarray(transform(at), dtype=f)
        value_midpoint = np.asarray(transform((at + half_step).astype(f)), dtype=f)
        value_next = np.asarray(transform((input_min + (steps + f(1)) * step).astype(f)), dtype=f)
        sample = round_half_away((value * output_scaling_inv).astype(f))
        midpoint_interpolated = round_half_away(
            ((value_next * output_scaling_inv + round_half_away((value * output_scaling_inv).astype(f))) / f(2)).astype(f))
        midpoint = round_half_away((value_midpoint * output_scaling_inv).astype(f))
        bias = round_half_away(((midpoint_interpolated - midpoint) / f(2)).astype(f))
        entries = np.minimum(np.maximum(sample - bias, f(INT16_MIN)), f(INT16_MAX))
        last = round_half_away((np.asarray(transform(np.array([input_max], f)), dtype=f) * output_scaling_inv).astype(f))
        last = np.minimum(np.maximum(last, f(INT16_MIN)), f(INT16_MAX))
    # std::max(NaN, lo) and std::min(NaN, hi) keep the NaN: numpy's maximum/minimum do too.
    return np.concatenate([_to_int16_saturating(entries), _to_int16_saturating(last)])


def lut_lookup_table(lut: np.ndarray) -> np.ndarray:
    """LUTLookup on every int16: entry 256 + (x >> 7) plus the int16 slope to the next entry times the
    7 low bits, rounded (+64 >> 7); the sum wraps to int16 as the C++ cast does."""
    lut = np.asarray(lut, dtype=np.int64)
    index = 256 + (ALL_INT16 >> 7)
    offset = ALL_INT16 & 0x7F
    base = lut[index]
    slope = _wrapped(lut[index + 1] - base).astype(np.int64)
    delta = (slope * offset + 64) >> 7
    return _wrapped(base + delta)


def float_function_table(op, graph, transform) -> np.ndarray:
    """A LUTPopulate<int16_t> op (EXP, GELU) as a 65536-entry table."""
    input_scale, output_scale = symmetric_params(op, graph)
    return lut_lookup_table(populate_lut_int16(input_scale, 0, output_scale, 0, transform))


def log_table(op, graph, logf) -> np.ndarray:
    """LogLUTPrepare(int16): log, with every non-positive input mapped to the lowest output."""
    input_scale, output_scale = symmetric_params(op, graph)
    output_min = np.float32(INT16_MIN) * output_scale

    def log_or_min(v):
        return np.where(v <= 0, output_min, logf(np.where(v > 0, v, np.float32(1))))

    return lut_lookup_table(populate_lut_int16(input_scale, 0, output_scale, 0, log_or_min))


def rsqrt_table(op, graph) -> np.ndarray:
    """elementwise.cc's int16 RSQRT table: 1 / sqrtf(x), every non-positive input mapped to
    32767 * output_scale (eval refuses negative inputs before the lookup)."""
    input_scale, output_scale = symmetric_params(op, graph)
    largest = np.float32(INT16_MAX) * output_scale

    def rsqrt_or_max(v):
        with np.errstate(divide="ignore"):
            root = np.sqrt(np.where(v > 0, v, np.float32(1)).astype(np.float32))
            return np.where(v <= 0, largest, np.float32(1) / root)

    return lut_lookup_table(populate_lut_int16(input_scale, 0, output_scale, 0, rsqrt_or_max))

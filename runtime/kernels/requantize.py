"""Helpers shared by the integer kernels: quantization params, activation ranges, exact int GEMM,
TFLite's integer rounding divisions, saturating casts.

Everything here runs in prepare or works on whole arrays; nothing registers a kernel.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edgeq.runtime.fixedpoint import round_half_away
from edgeq.runtime.ir import ModelError, Op
from edgeq.runtime.kernels.common import ACTIVATION_BOUNDS, FUSED_CLAMPS, NO_ACTIVATION

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

# int8 x int8 products summed over K terms stay below 2^24 (exact in float32) while
# K * 128 * 128 < 2^24; float64 is exact for any K a model has.
FLOAT32_EXACT_LIMIT = 2**24


def is_quantized_int(tensor) -> bool:
    return tensor is not None and tensor.dtype in (np.int8, np.uint8, np.int16)


def scale_and_zero_point(tensor, op: Op) -> tuple:
    """(float32 scale, int zero point) of a per-tensor quantized tensor."""
    quant = tensor.quant
    if quant is None or quant.scale.size == 0:
        raise ModelError(f"op {op}: tensor '{tensor.name}' ({tensor.dtype}) has no quantization parameters")
    return np.float32(quant.scale[0]), int(quant.zero_point[0])


def activation_range(op: Op, scale, zero_point: int, dtype=np.int8) -> tuple:
    """TFLite's CalculateActivationRangeQuantized: the output integer range of the fused activation."""
    name = op.options.get("fused_activation_function", "NONE")
    return activation_range_for(name, scale, zero_point, dtype, op)


def activation_range_for(name, scale, zero_point: int, dtype=np.int8, op=None) -> tuple:
    """The integer range of activation ``name`` (fused, or a RELU-family op's own clamp) for an
    output of ``dtype`` with ``scale`` and ``zero_point``."""
    info = np.iinfo(dtype)
    low, high = int(info.min), int(info.max)
    if name in NO_ACTIVATION:
        return low, high
    if name not in FUSED_CLAMPS:
        raise ModelError(f"op {op}: fused activation {name!r} has no integer form")
    real_low, real_high = ACTIVATION_BOUNDS[name]
    scale = np.float32(scale)

    def quantize(real):  # zero_point + round(real / scale), float32 as TFLite computes it
        return zero_point + int(round_half_away(np.float32(real) / scale))

    low = max(low, quantize(real_low))
    if real_high != np.inf:
        high = min(high, quantize(real_high))
    return low, high


def exact_matmul_dtype(depth: int):
    """The float dtype in which an int8 GEMM over ``depth`` terms is exact."""
    return np.float32 if depth * 128 * 128 < FLOAT32_EXACT_LIMIT else np.float64


def saturate(values: np.ndarray, low: int, high: int, dtype) -> np.ndarray:
    """Clamp to [low, high] and cast (the last step of every integer kernel)."""
    return np.clip(values, low, high).astype(dtype)


def rounding_divide(acc: np.ndarray, count) -> np.ndarray:
    """acc / count rounded to nearest with ties away from zero, as TFLite's integer average pool and
    mean write it: acc > 0 ? (acc + count/2) / count : (acc - count/2) / count (C division)."""
    acc = np.asarray(acc, dtype=np.int64)
    count = np.asarray(count, dtype=np.int64)
    magnitude = (np.abs(acc) + count // 2) // count
    return np.where(acc > 0, magnitude, -magnitude)


def c_divide(numerator: np.ndarray, denominator) -> np.ndarray:
    """C integer division: truncates toward zero."""
    numerator = np.asarray(numerator, dtype=np.int64)
    quotient = np.abs(numerator) // np.abs(denominator)
    return np.where((numerator < 0) != (np.asarray(denominator) < 0), -quotient, quotient)


def double_to_int32(values: np.ndarray) -> np.ndarray:
    """static_cast<int32_t>(double) as x86-64 does it: truncation, out-of-range gives INT32_MIN."""
    values = np.asarray(values, dtype=np.float64)
    inside = (values > INT32_MIN - 1.0) & (values < INT32_MAX + 1.0)
    return np.where(inside, np.trunc(np.where(inside, values, 0.0)), INT32_MIN).astype(np.int64)


def exact_matmul_dtype_for(depth: int, max_abs_lhs: int = 128, max_abs_rhs: int = 128):
    """The float dtype in which a GEMM of integers bounded by the given magnitudes is exact."""
    return np.float32 if depth * max_abs_lhs * max_abs_rhs < FLOAT32_EXACT_LIMIT else np.float64


def per_channel_multipliers(input_scale, filter_scales, output_scale, channels: int):
    """TFLite's PopulateConvolutionQuantizationParams: per output channel, the real multiplier
    double(input_scale) * double(filter_scale) / double(output_scale) as (Q31 multiplier, shift)."""
    from edgeq.runtime.fixedpoint import quantize_multiplier

    filter_scales = np.asarray(filter_scales, dtype=np.float32).astype(np.float64).reshape(-1)
    if filter_scales.size == 1:
        filter_scales = np.repeat(filter_scales, channels)
    real = (np.float64(np.float32(input_scale)) * filter_scales) / np.float64(np.float32(output_scale))
    multipliers, shifts = quantize_multiplier(real)
    return multipliers.astype(np.int64), shifts.astype(np.int64)


def per_tensor_product_multiplier(lhs_scale, rhs_scale, output_scale):
    """TFLite's GetQuantizedConvolutionMultipler, which per-tensor int8 BATCH_MATMUL uses: the real
    multiplier double(float32(lhs_scale * rhs_scale)) / double(output_scale), the scales' product
    taken in float32 (unlike ``per_channel_multipliers``), as (Q31 multiplier, shift)."""
    from edgeq.runtime.fixedpoint import quantize_multiplier

    product = np.float32(np.float32(lhs_scale) * np.float32(rhs_scale))
    multipliers, shifts = quantize_multiplier(np.array([np.float64(product) / np.float64(np.float32(output_scale))]))
    return int(multipliers[0]), int(shifts[0])


def check_quantized_tensors(op: Op, graph, data_index: int = 0, weight_index: int = 1,
                            symmetric_weights: bool = True) -> None:
    """What the weighted kernels need beyond shapes: a float32, int8 or int16 input (int16: 16x8,
    with int8 weights and zero points 0); int8 weights with quantization parameters (zero points 0
    where the kernel takes them symmetric); for an integer input, a quantized input and output.
    Raises ModelError saying which tensor lacks what."""
    data, weights, output = graph[op.inputs[data_index]], graph[op.inputs[weight_index]], graph[op.outputs[0]]
    if data.dtype not in (np.int8, np.int16, np.float32):
        raise ModelError(f"input '{data.name}' is {data.dtype}; float32, int8 and int16 are supported")
    if data.dtype == np.int16:
        _check_16x8(data, weights, output)
    if weights.dtype == np.int8:
        if weights.quant is None or weights.quant.scale.size == 0:
            raise ModelError(f"int8 weights '{weights.name}' have no quantization parameters")
        if symmetric_weights and np.any(weights.quant.zero_point != 0):
            raise ModelError(f"int8 weights '{weights.name}' must be symmetric (zero point 0)")
    if data.dtype in (np.int8, np.int16):
        for tensor in (data, output):
            if tensor.quant is None or tensor.quant.scale.size == 0:
                raise ModelError(f"tensor '{tensor.name}' ({tensor.dtype}) has no quantization parameters")


def _check_16x8(data, weights, output) -> None:
    """TFLite's 16x8 weighted ops: int8 weights, an int16 output, zero points 0 on the int16 tensors."""
    if weights.dtype != np.int8:
        raise ModelError(f"weights '{weights.name}' are {weights.dtype}; an int16 input takes int8 weights (16x8)")
    if output.dtype != np.int16:
        raise ModelError(f"output '{output.name}' is {output.dtype}; an int16 input gives an int16 output")
    for tensor in (data, output):
        if tensor.quant is not None and np.any(tensor.quant.zero_point != 0):
            raise ModelError(f"int16 tensor '{tensor.name}' must have zero point 0 (16x8 quantization)")


def int16_bias(op: Op, graph, index: int, channels: int):
    """A 16x8 op's bias as int64 [channels] (TFLite writes it int64; int32 is read too), or None."""
    if index >= len(op.inputs) or not op.inputs[index]:
        return None
    tensor = graph[op.inputs[index]]
    if tensor.data is None:
        raise ModelError(f"op {op}: bias '{tensor.name}' must be constant")
    if tensor.dtype not in (np.int64, np.int32):
        raise ModelError(f"op {op}: bias '{tensor.name}' is {tensor.dtype}; an int16 op takes an int64 or int32 bias")
    bias = tensor.data.astype(np.int64).reshape(-1)
    if bias.size != channels:
        raise ModelError(f"op {op}: bias has {bias.size} values for {channels} output channels")
    return bias


def int16x8_requantizer(op: Op, graph, input_scale, filter_scales, channels: int):
    """requantize(acc int64 [..., channels]) -> int16: reference_integer_ops' 16x8 epilogue,
    MultiplyByQuantizedMultiplier(int64 acc) per channel, clamped to the fused activation's range."""
    from edgeq.runtime.fixedpoint import multiply_by_quantized_multiplier_int64

    output_scale, _ = scale_and_zero_point(graph[op.outputs[0]], op)
    multipliers, shifts = per_channel_multipliers(input_scale, filter_scales, output_scale, channels)
    low, high = activation_range(op, output_scale, 0, np.int16)

    def requantize(acc):
        scaled = multiply_by_quantized_multiplier_int64(acc, multipliers, shifts)
        return saturate(scaled, low, high, np.int16)

    return requantize


def weight_zero_points_are_zero(tensor, op: Op) -> None:
    if tensor.quant is not None and np.any(tensor.quant.zero_point != 0):
        raise ModelError(f"op {op}: int8 weights '{tensor.name}' must be symmetric (zero point 0)")


# -- dynamic-range (hybrid) input quantization ---------------------------------------------------
# TFLite's portable tensor_utils: each batch row of a float input is quantized on the fly.

def symmetric_quantize_rows(x: np.ndarray):
    """SymmetricQuantizeFloats per row of a [N, K] float32 array: (int32 values in [-127, 127],
    float32 scaling factors range / 127)."""
    x = np.asarray(x, dtype=np.float32)
    value_range = np.maximum(np.abs(x.min(axis=1)), np.abs(x.max(axis=1)))
    zero = value_range == 0
    safe_range = np.where(zero, np.float32(1), value_range)
    scaling = np.where(zero, np.float32(1), safe_range / np.float32(127)).astype(np.float32)
    inverse = (np.float32(127) / safe_range).astype(np.float32)
    q = np.clip(round_half_away(x * inverse[:, None]), -127, 127).astype(np.int32)
    q[zero] = 0
    return q, scaling


def asymmetric_quantize_rows(x: np.ndarray):
    """AsymmetricQuantizeFloats per row of a [N, K] float32 array: (int32 values in [-128, 127],
    float32 scaling factors, int32 zero points), the range widened to contain 0."""
    x = np.asarray(x, dtype=np.float32)
    rmin = np.minimum(np.float32(0), x.min(axis=1)).astype(np.float64)
    rmax = np.maximum(np.float32(0), x.max(axis=1)).astype(np.float64)
    empty = rmin == rmax
    scale = np.where(empty, 1.0, (rmax - rmin) / 255.0)
    from_min = -128.0 - rmin / scale
    from_max = 127.0 - rmax / scale
    from_min_error = 128.0 + np.abs(rmin / scale)
    from_max_error = 127.0 + np.abs(rmax / scale)
    zero_point_double = np.where(from_min_error < from_max_error, from_min, from_max)
    nudged = np.where(zero_point_double <= -128, -128,
                      np.where(zero_point_double >= 127, 127, round_half_away(zero_point_double)))
    offsets = np.where(empty, 0, nudged).astype(np.int32)
    scaling = np.where(empty, 1.0, scale).astype(np.float32)
    inverse = (np.float32(1) / scaling).astype(np.float32)
    q = round_half_away(offsets[:, None].astype(np.float32) + x * inverse[:, None])
    q = np.clip(q, -128, 127).astype(np.int32)
    q[empty] = 0
    return q, scaling, offsets


# -- exact integer GEMM on float32 BLAS ------------------------------------------------------------
# Every partial sum a BLAS can form (in any order, with or without FMA) is bounded by the sum of the
# absolute products, so a GEMM of integers is exact in float32 while, for every output channel,
# max|input| * sum|weights| < 2^24. Real weights are far below the worst case K * 127, so most GEMMs
# pass in one piece; the rest are cut along K into pieces that each pass, summed in float64.

# Above this many weights, chunk bounds come from each depth column's largest weight instead of
# per-channel running sums, which would take 8 bytes per weight at prepare (a VGG-size layer: GBs).
EXACT_CHUNKING_MAX_WEIGHTS = 1 << 24


def exact_float32_chunks(weights_by_channel: np.ndarray, max_abs_input: int) -> list:
    """Slices of the depth axis of ``weights_by_channel`` [channels, depth] (integers) such that a
    float32 GEMM over each slice is exact for inputs bounded by ``max_abs_input``."""
    weights = np.asarray(weights_by_channel)
    channels, depth = weights.shape
    if depth == 0 or np.abs(weights).sum(axis=1, dtype=np.int64).max(initial=0) * int(max_abs_input) \
            < FLOAT32_EXACT_LIMIT:
        return [slice(0, depth)]
    if weights.size > EXACT_CHUNKING_MAX_WEIGHTS:
        # Every channel's sum over a slice is at most the slice's sum of column maxima.
        column_bound = np.abs(weights).max(axis=0).astype(np.int64) * int(max_abs_input)
        return _chunks_under_limit(np.cumsum(column_bound)[None, :])
    return _chunks_under_limit(np.cumsum(np.abs(weights.astype(np.int64)) * int(max_abs_input), axis=1))


def _chunks_under_limit(running: np.ndarray) -> list:
    """Depth slices over which every row's increase of ``running`` (cumulative magnitudes) stays
    under the float32 exact limit (at least one column each)."""
    channels, depth = running.shape
    chunks, start = [], 0
    while start < depth:
        base = running[:, start - 1] if start else np.zeros(channels, np.int64)
        # The longest run from ``start`` whose every channel stays under the limit (at least one column).
        fits = (running[:, start:] - base[:, None]).max(axis=0) < FLOAT32_EXACT_LIMIT
        stop = start + max(1, int(np.argmin(fits)) if not fits.all() else depth - start)
        chunks.append(slice(start, stop))
        start = stop
    return chunks


def exact_gemm(weights: np.ndarray, chunks: list):
    """gemm(lhs [rows, depth] float32, out) -> out [rows, channels]: lhs @ weights, exact for integer
    operands, into ``out`` (float32 for one chunk, else float64; see ``exact_gemm_dtype``)."""
    if len(chunks) == 1:
        def gemm(lhs, out):
            return np.matmul(lhs, weights, out=out)

        return gemm
    from edgeq.runtime.kernels.buffers import SCRATCH

    pieces = [np.ascontiguousarray(weights[chunk]) for chunk in chunks]
    channels = weights.shape[1]

    def chunked_gemm(lhs, out):
        partial = SCRATCH.get("gemm_partial", (lhs.shape[0], channels), np.float32)
        np.matmul(lhs[:, chunks[0]], pieces[0], out=partial)
        np.copyto(out, partial)
        for chunk, piece in zip(chunks[1:], pieces[1:]):
            np.matmul(lhs[:, chunk], piece, out=partial)
            np.add(out, partial, out=out)
        return out

    return chunked_gemm


def exact_gemm_dtype(chunks: list):
    """The accumulator dtype ``exact_gemm`` writes: float32 when it is one piece, else float64."""
    return np.float32 if len(chunks) == 1 else np.float64


# -- per-channel requantization with everything static folded in prepare ---------------------------
# MultiplyByQuantizedMultiplier (double rounding) of x = acc + constant_term, + output_offset:
#   a = x * 2^L                                    (L = max(shift, 0); no int32 wrap when |x| 2^L < 2^31)
#   h = SRDHM(a, M) = (a*M + 2^30) >> 31           (exact for M >= 0: C's truncating division of
#                                                   a*M + (a*M >= 0 ? 2^30 : 1 - 2^30) by 2^31 is this floor)
#   r = RoundingDivideByPOT(h, R) = (h + half - [h < 0 and R > 0]) >> R   (R = max(-shift, 0), half = 2^R / 2)
# and since floor(floor(y) / 2^R) = floor(y / 2^R), the two shifts merge into one:
#   r + o = (acc*M' + K - [t < T] * C) >> (31 + R)  with  M' = M 2^L,  K = constant_term*M' + 2^30 +
#   half 2^31 + o 2^(31+R),  T = half 2^31 + o 2^(31+R),  C = 2^31 if R > 0 else 0,
# where t is the sum before the correction. It holds while every term fits in int64, which prepare checks.

class FoldedRequantization(NamedTuple):
    scaled_multiplier: np.ndarray  # M', int64 per channel
    bias_term: np.ndarray          # K
    threshold: np.ndarray          # T
    correction: np.ndarray         # C
    total_shift: np.ndarray        # 31 + R
    any_correction: bool


def fold_requantization(constant_term, multipliers, shifts, output_offset: int, accumulator_bound: int):
    """The per-channel constants of the folded form above, or None when an accumulator bounded by
    ``accumulator_bound`` (in magnitude, before the constant term) could leave its int64 range."""
    constant_term = np.asarray(constant_term, dtype=np.int64)
    multipliers = np.asarray(multipliers, dtype=np.int64)
    shifts = np.asarray(shifts, dtype=np.int64)
    left = np.maximum(shifts, 0)
    right = np.maximum(-shifts, 0)
    if np.any(multipliers < 0) or np.any(right > 31):
        return None
    # Python ints for the bound checks: they cannot overflow.
    x_bound = int(accumulator_bound) + int(np.abs(constant_term).max(initial=0))
    if x_bound << int(left.max(initial=0)) >= 2**31:
        return None  # TFLite would wrap a * 2^L in int32; the general path reproduces that
    total_shift = 31 + right
    offset_term = [int(output_offset) << int(s) for s in total_shift]
    half_term = [((1 << int(r)) >> 1) << 31 for r in right]
    worst = max((x_bound << int(l)) * int(m) + (1 << 30) + h + abs(o) + (1 << 31)
                for l, m, h, o in zip(left, multipliers, half_term, offset_term))
    if worst >= 2**62:
        return None
    scaled_multiplier = multipliers << left
    bias_term = np.array([int(c) * int(m) + (1 << 30) + h + o
                          for c, m, h, o in zip(constant_term, scaled_multiplier, half_term, offset_term)], np.int64)
    threshold = np.array([h + o for h, o in zip(half_term, offset_term)], np.int64)
    correction = np.where(right > 0, np.int64(1 << 31), np.int64(0))
    return FoldedRequantization(scaled_multiplier, bias_term, threshold, correction, total_shift.astype(np.int64),
                                bool(np.any(right > 0)))


def folded_requantizer(folded: FoldedRequantization, low: int, high: int):
    """requantize(acc [rows, channels] exact integers (float or int), out int8 [rows, channels]):
    the folded form in numpy, a few whole-array int64 passes over shared scratch."""
    from edgeq.runtime.kernels.buffers import SCRATCH

    # -C as a mask: (t - T) >> 63 is all ones where t < T, so ANDing it with -C gives -C there and 0
    # elsewhere (a masked subtract or a bool multiply is several times slower in numpy).
    negative_correction = -folded.correction
    if np.all(negative_correction == negative_correction[0]):
        negative_correction = negative_correction[0]  # a scalar operand is a faster numpy loop
    total_shift = folded.total_shift
    if np.all(total_shift == total_shift[0]):
        total_shift = total_shift[0]

    def requantize(acc, out):
        t = SCRATCH.get("requantize_wide", acc.shape, np.int64)
        np.copyto(t, acc, casting="unsafe")  # exact: the accumulators are integers
        np.multiply(t, folded.scaled_multiplier, out=t)
        np.add(t, folded.bias_term, out=t)
        if folded.any_correction:
            below = SCRATCH.get("requantize_below", acc.shape, np.int64)
            np.subtract(t, folded.threshold, out=below)
            np.right_shift(below, 63, out=below)
            np.bitwise_and(below, negative_correction, out=below)
            np.add(t, below, out=t)
        np.right_shift(t, total_shift, out=t)
        np.clip(t, low, high, out=t)
        np.copyto(out, t, casting="unsafe")
        return out

    return requantize

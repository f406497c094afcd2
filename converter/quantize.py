"""Post-training quantization of a float IR graph.

* ``quantize_int8(graph, ranges)``: full integer quantization following the TFLite int8 spec: symmetric
  int8 weights (per channel where TFLite allows it) in [-127, 127], int32 biases with
  scale = input_scale * weight_scale and zero point 0, asymmetric per-tensor int8 activations whose
  range always contains 0, and the op-specific constraints written down in ``RULES`` below.
* ``quantize_int16x8(graph, ranges)``: TFLite's 16x8 mode: int16 activations, symmetric (zero point 0,
  scale max|x| / 32767), int8 per-channel weights as in int8, int64 biases for the weighted ops. Ops
  listed in ``INT16_RULES`` are quantized so; every other op stays float between DEQUANTIZE/QUANTIZE.
* ``quantize_dynamic(graph)``: dynamic-range ("hybrid") quantization: int8 weights, float activations.
* ``quantize_float16(graph)``: float16 constants, each DEQUANTIZEd to float32 before use.

``ranges`` maps activation tensor names to calibrated ``(min, max)`` (see ``converter.calibrate``).
Ops without an int8 rule stay in float between DEQUANTIZE/QUANTIZE; the returned graph lists them
in ``graph.float_ops``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from edgeq.runtime.fixedpoint import round_half_away
from edgeq.runtime.ir import Graph, ModelError, Op, QuantParams, Tensor
from edgeq.runtime.kernels.common import ACTIVATION_BOUNDS, FUSED_CLAMPS, NO_ACTIVATION

QMIN, QMAX = -128, 127  # int8 activations
WEIGHT_QMAX = 127  # int8 weights are symmetric: [-127, 127], zero point 0
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FLOAT32 = np.dtype(np.float32)

# LiteRT's int8 FULLY_CONNECTED accepts per-channel weights (quantized_dimension 0) and its reference
# kernel uses one multiplier per output channel; tests/test_quantize.py checks this.
PER_CHANNEL_FULLY_CONNECTED = True


@dataclass(frozen=True)
class Rule:
    """How one op type is quantized to int8.

    ``weight``: (input index, per-channel axis) of the constant weight, quantized symmetric.
    ``bias``: input index of the bias, quantized to int32 with scale = input scale * weight scale.
    ``input``: the input index whose scale the bias scale is built from.
    ``output``: "own" (the output's calibrated range), "shared" (every float input and output of the
    op takes one set of params: TFLite's kernels for these ops do not requantize), or a fixed
    (scale, zero_point) pair. Every other float input is an asymmetric int8 activation (a float
    constant there is quantized from its own range).
    """

    output: object = "own"
    weight: Optional[tuple] = None
    bias: Optional[int] = None
    input: int = 0


SHARED = Rule(output="shared")
OWN = Rule(output="own")

RULES: dict = {
    # Weighted ops: per-channel symmetric weights along the output-channel axis.
    "CONV_2D": Rule(weight=(1, 0), bias=2),  # filter [O, H, W, I]
    "DEPTHWISE_CONV_2D": Rule(weight=(1, 3), bias=2),  # filter [1, H, W, C]
    "FULLY_CONNECTED": Rule(weight=(1, 0), bias=2),  # weights [O, I]
    "TRANSPOSE_CONV": Rule(weight=(1, 0), bias=3, input=2),  # (output_shape, filter, input, bias)
    # Ops that requantize freely: the output keeps its own calibrated range.
    "ADD": OWN,
    "SUB": OWN,
    "MUL": OWN,
    "MEAN": OWN,
    "SUM": OWN,
    "RELU": OWN,
    "RELU6": OWN,
    "RELU_N1_TO_1": OWN,
    "LEAKY_RELU": OWN,
    "PRELU": OWN,
    "HARD_SWISH": OWN,
    "SQUARED_DIFFERENCE": OWN,
    "BATCH_MATMUL": OWN,  # int8 x int8 with per-tensor params (LiteRT has no per-channel form)
    # Lookup-table unary ops: LiteRT builds the int8 table from the input and output params.
    "GELU": OWN,
    "EXP": OWN,
    "LOG": OWN,
    "RSQRT": OWN,
    "ABS": OWN,
    # Fixed output params: the spec pins the output range to the function's range.
    "SOFTMAX": Rule(output=(1.0 / 256, -128)),
    "LOGISTIC": Rule(output=(1.0 / 256, -128)),
    "TANH": Rule(output=(1.0 / 128, 0)),
    "LOG_SOFTMAX": Rule(output=(16.0 / 256, 127)),
    "L2_NORMALIZATION": Rule(output=(1.0 / 128, 0)),
    # Data movement and max/min selection: inputs and outputs share one scale and zero point.
    "MAX_POOL_2D": SHARED,
    "AVERAGE_POOL_2D": SHARED,
    "RESHAPE": SHARED,
    "SQUEEZE": SHARED,
    "EXPAND_DIMS": SHARED,
    "TRANSPOSE": SHARED,
    "PAD": SHARED,
    "PADV2": SHARED,
    "MIRROR_PAD": SHARED,
    "CONCATENATION": SHARED,
    "SPLIT": SHARED,
    "SPLIT_V": SHARED,
    "PACK": SHARED,
    "UNPACK": SHARED,
    "SLICE": SHARED,
    "STRIDED_SLICE": SHARED,
    "GATHER": SHARED,
    "TILE": SHARED,
    "BROADCAST_TO": SHARED,
    "SPACE_TO_DEPTH": SHARED,
    "DEPTH_TO_SPACE": SHARED,
    "SPACE_TO_BATCH_ND": SHARED,
    "BATCH_TO_SPACE_ND": SHARED,
    "RESIZE_BILINEAR": SHARED,
    "RESIZE_NEAREST_NEIGHBOR": SHARED,
    "MAXIMUM": SHARED,
    "MINIMUM": SHARED,
    "REDUCE_MAX": SHARED,
    "REDUCE_MIN": SHARED,
    "SELECT_V2": SHARED,  # picks stored values of x or y; the condition is bool
}

_BOOL_OUTPUT = "its output is bool: int8 holds real numbers, the quantizer leaves other outputs alone"
_INDEX_OUTPUT = "its output is an int32 index: int8 holds real numbers, the quantizer leaves other outputs alone"
_NO_INT8_KERNEL = "LiteRT's kernel has no int8 form"

# The ops without an int8 rule, each with why it stays float (between DEQUANTIZE and QUANTIZE when it
# sits among int8 ops). Every op has either a rule above or a reason here (tests/test_op_catalogue.py).
STAYS_FLOAT: dict = {
    "QUANTIZE": "it is the conversion between float and int8 itself, which the quantizer inserts",
    "DEQUANTIZE": "it is the conversion between int8 and float itself, which the quantizer inserts",
    "CAST": "it converts between dtypes: the side that is not float has no scale to share",
    "SHAPE": "it reads only its input's shape and gives int32",
    "DENSIFY": "it expands a sparse constant, which the reader has already made dense",
    "ARG_MAX": _INDEX_OUTPUT,
    "ARG_MIN": _INDEX_OUTPUT,
    "TOPK_V2": "one of its outputs is an int32 index, and its values would need shared params with no rule yet",
    "EQUAL": _BOOL_OUTPUT,
    "NOT_EQUAL": _BOOL_OUTPUT,
    "LESS": _BOOL_OUTPUT,
    "LESS_EQUAL": _BOOL_OUTPUT,
    "GREATER": _BOOL_OUTPUT,
    "GREATER_EQUAL": _BOOL_OUTPUT,
    "LOGICAL_AND": _BOOL_OUTPUT,
    "LOGICAL_OR": _BOOL_OUTPUT,
    "LOGICAL_NOT": _BOOL_OUTPUT,
    "DIV": "LiteRT's DIV quantizes uint8 only, not int8",
    "POW": _NO_INT8_KERNEL,
    "FLOOR_MOD": "LiteRT's int8 FLOOR_MOD is plain integer arithmetic, without scales",
    "SQRT": _NO_INT8_KERNEL,
    "SQUARE": _NO_INT8_KERNEL,
    "SIN": _NO_INT8_KERNEL,
    "COS": _NO_INT8_KERNEL,
    "FLOOR": _NO_INT8_KERNEL,
    "CEIL": _NO_INT8_KERNEL,
    "ROUND": _NO_INT8_KERNEL,
    "NEG": "LiteRT's NEG takes float32, int32 and int64 only",
    "SIGN": "LiteRT's SIGN takes float32 and int32 only",
    "CUMSUM": "LiteRT's CUMSUM takes float32, int32 and int64 only",
    "LOCAL_RESPONSE_NORMALIZATION": _NO_INT8_KERNEL,
    "ELU": "the runtime has no int8 ELU table yet (LiteRT has one)",
    "REDUCE_PROD": "the runtime has no int8 REDUCE_PROD kernel yet (LiteRT has one)",
    "CUSTOM": "its arithmetic is its own kernel's; conversion rewrites the custom ops it knows to builtins first",
}


INT16_QMAX = 32767  # int16 activations are symmetric: zero point 0, [-32767, 32767] for the range

# The ops TFLite's 16x8 mode quantizes (int16 activations, int8 weights) and that both LiteRT's reference
# kernels and edgeq's runtime compute in int16, each with its int16 rule: the int8 rule unless the op
# pins its output params differently in int16. Enabling an op in int16x8 is one line here; the rest of
# RULES stays float in int16x8 (between DEQUANTIZE and QUANTIZE), with ``NO_INT16_KERNEL`` as reason.
INT16_RULES: dict = {
    "CONV_2D": RULES["CONV_2D"],
    "DEPTHWISE_CONV_2D": RULES["DEPTHWISE_CONV_2D"],
    "FULLY_CONNECTED": RULES["FULLY_CONNECTED"],
    "MAX_POOL_2D": SHARED,
    "RESHAPE": SHARED,
    "SQUEEZE": SHARED,
    "EXPAND_DIMS": SHARED,
    "TRANSPOSE": SHARED,
    "PAD": SHARED,
    "PADV2": SHARED,
    "CONCATENATION": SHARED,
    "SPLIT": SHARED,
    "SPLIT_V": SHARED,
    "PACK": SHARED,
    "UNPACK": SHARED,
    "SLICE": SHARED,
    "STRIDED_SLICE": SHARED,
    "GATHER": SHARED,
    "TRANSPOSE_CONV": RULES["TRANSPOSE_CONV"],
    "TILE": SHARED,
    "BROADCAST_TO": SHARED,
    "RESIZE_BILINEAR": SHARED,
    "RESIZE_NEAREST_NEIGHBOR": SHARED,
    "REDUCE_MAX": SHARED,
    "REDUCE_MIN": SHARED,
    "SELECT_V2": SHARED,
    "ADD": OWN,
    "SUB": OWN,
    "MUL": OWN,
    "MAXIMUM": SHARED,
    "MINIMUM": SHARED,
    "RELU": OWN,
    "RELU6": OWN,
    "LEAKY_RELU": OWN,
    "GELU": OWN,
    "EXP": OWN,
    "LOG": OWN,
    "RSQRT": OWN,
    "ABS": OWN,
    "MEAN": OWN,
    "AVERAGE_POOL_2D": SHARED,
    "BATCH_MATMUL": OWN,
    # Q0.15 outputs: int16 LOGISTIC, TANH and SOFTMAX take scale 1/32768 (zero point 0).
    "LOGISTIC": Rule(output=(1.0 / 32768, 0)),
    "TANH": Rule(output=(1.0 / 32768, 0)),
    "SOFTMAX": Rule(output=(1.0 / 32768, 0)),
    "PRELU": OWN,  # its constant alpha stays int8 (INT16_OP_INT8_INPUTS)
}
# Inputs of int16 ops that LiteRT reads as int8 (asymmetric, own params): PRELU's alpha.
INT16_OP_INT8_INPUTS = {"PRELU": (1,)}
NO_INT16_KERNEL = "no int16 kernel (in LiteRT's reference kernels or edgeq's runtime) for int16x8"
# Weighted ops whose int16 form takes an int64 bias (TFLite's 16x8 spec); int8 ops take int32.
INT64_BIAS_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}
INT8, INT16 = np.dtype(np.int8), np.dtype(np.int16)


# -- quantization parameters ---------------------------------------------------------------------

def choose_activation_params(range_min: float, range_max: float, qmin: int = QMIN, qmax: int = QMAX):
    """Asymmetric (scale, zero_point) for a real range, as the TFLite converter chooses them.

    The range is first widened to contain 0, so that real 0 (padding, ReLU's floor) is exact; the
    zero point round(qmin - min / scale) is clamped to [qmin, qmax].
    """
    range_min = min(float(range_min), 0.0)
    range_max = max(float(range_max), 0.0)
    if not np.isfinite(range_min) or not np.isfinite(range_max):
        raise ModelError(f"cannot quantize the infinite range [{range_min}, {range_max}]")
    if range_max == range_min:
        return 1.0, qmin  # an all-zero tensor: any scale represents it
    # The kernels see the float32 scale, so derive the zero point from that.
    scale = float(np.float32((range_max - range_min) / (qmax - qmin)))
    zero_point = int(np.clip(round_half_away(qmin - range_min / scale), qmin, qmax))
    return scale, zero_point


def choose_int16_params(range_min: float, range_max: float):
    """Symmetric int16 (scale, 0) for a real range, as TFLite's 16x8 mode chooses them:
    scale = max(|min|, |max|) / 32767."""
    range_min, range_max = float(range_min), float(range_max)
    if not np.isfinite(range_min) or not np.isfinite(range_max):
        raise ModelError(f"cannot quantize the infinite range [{range_min}, {range_max}]")
    max_abs = max(abs(range_min), abs(range_max))
    if max_abs == 0:
        return 1.0, 0  # an all-zero tensor: any scale represents it
    return float(np.float32(max_abs / INT16_QMAX)), 0


def activation_params_for(dtype, range_min: float, range_max: float):
    """(scale, zero_point) of an activation of ``dtype`` (int8: asymmetric; int16: symmetric)."""
    if np.dtype(dtype) == INT16:
        return choose_int16_params(range_min, range_max)
    return choose_activation_params(range_min, range_max)


def symmetric_weight_params(weights: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """Per-channel (along ``axis``) or per-tensor (``axis=None``) scales max|w| / 127."""
    w = np.abs(np.asarray(weights))  # |w| and its maximum are exact in the weights' own dtype
    if axis is None:
        max_abs = np.atleast_1d(w.max() if w.size else 0.0)
    else:
        other_axes = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
        max_abs = w.max(axis=other_axes) if w.size else np.zeros(w.shape[axis])
    scales = (np.asarray(max_abs, dtype=np.float64) / WEIGHT_QMAX).astype(np.float32)
    return np.where(scales > 0, scales, np.float32(1.0))  # an all-zero channel quantizes to 0 anyway


def quantize_symmetric(weights: np.ndarray, scales: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """int8 weights in [-127, 127] for the given per-channel or per-tensor scales."""
    w = np.asarray(weights, dtype=np.float64)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis % w.ndim] = -1
    per_element_scale = np.asarray(scales, dtype=np.float64).reshape(shape if axis is not None else ())
    q = round_half_away(w / per_element_scale)
    return np.clip(q, -WEIGHT_QMAX, WEIGHT_QMAX, out=q).astype(np.int8)


def quantize_affine(values: np.ndarray, scale: float, zero_point: int, dtype=np.int8) -> np.ndarray:
    """Per-tensor affine quantization of real values (TFLite's QUANTIZE: round, add zero point, clamp)."""
    info = np.iinfo(dtype)
    q = round_half_away(np.asarray(values, dtype=np.float64) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def quantize_bias(bias: np.ndarray, bias_scales: np.ndarray, dtype=np.int32) -> np.ndarray:
    """int32 (int8 ops) or int64 (16x8 ops) bias, scale = input scale * weight scale, zero point 0."""
    q = round_half_away(np.asarray(bias, dtype=np.float64) / np.asarray(bias_scales, dtype=np.float64))
    if np.dtype(dtype) == np.int64:
        # 16x8 kernels accumulate in int64 but require |acc| < 2^47 before the requantization.
        return np.clip(q, -(2.0**47), 2.0**47 - 1).astype(np.int64)
    return np.clip(q, INT32_MIN, INT32_MAX).astype(np.int32)


# -- full int8 -----------------------------------------------------------------------------------

class _UnionFind:
    def __init__(self):
        self.parent = {}

    def find(self, key):
        self.parent.setdefault(key, key)
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
        return ra


def _float_inputs(op: Op, graph: Graph, original_float: set):
    """(index, name) of the op's float32 inputs."""
    return [(i, n) for i, n in enumerate(op.inputs) if n and n in original_float]


def _why_not_int8(op: Op, graph: Graph, original_float: set) -> Optional[str]:
    rule = RULES.get(op.type)
    if rule is None:
        return "no int8 kernel rule"
    if rule.weight is not None:
        index = rule.weight[0]
        if index >= len(op.inputs) or not op.inputs[index] or not graph[op.inputs[index]].is_constant:
            return "weights are not constant"
    if rule.bias is not None and rule.bias < len(op.inputs) and op.inputs[rule.bias]:
        if not graph[op.inputs[rule.bias]].is_constant:
            return "bias is not constant"
    if any(name not in original_float for name in op.outputs):
        return "output is not float32"
    activation = op.options.get("fused_activation_function", "NONE")
    if activation not in (*NO_ACTIVATION, *FUSED_CLAMPS):
        return f"fused activation {activation} has no int8 form"
    return None


# Magnitudes from here up are "minus infinity" stand-ins (finfo(float32).min, -1e38 ...). An int8 scale
# for such a range is ~1e36, and the requantization multipliers built from it leave float32: LiteRT
# aborts in allocate_tensors() on an int8 ADD of an attention mask (1 - mask) * finfo(float32).min.
NEAR_FLOAT32_LIMIT = 1e30
# An additive attention mask written with large finite values: Hugging Face's eager attention adds
# (1 - mask) * finfo(float32).min, other exports -1e9 or -10000. Values this far below zero, beside a
# tensor's values near zero, leave one int8 scale nothing for the values that matter.
MASK_MAGNITUDE = 1e4
MASK_DOMINANCE = 100.0  # the negative extreme is this many times the positive one, at least


def is_mask_like(lo: float, hi: float) -> bool:
    """Whether a tensor ranging over [lo, hi] looks like an additive mask (or scores with one added)."""
    return lo <= -MASK_MAGNITUDE and max(hi, 0.0) * MASK_DOMINANCE < -lo


# A masked score is clamped this far below the lowest unmasked score (divided by the softmax's beta):
# its weight is then at most exp(-16) ~ 1e-7 of the row's top, zero in int8 as it is in float.
MASK_MARGIN = 16.0


@dataclass
class MaskClamp:
    """How int8 holds one additive mask: the ranges that replace the calibrated ones, for the mask
    tensor (a constant or an activation) and for the masked scores on their way to the softmax."""

    mask: str
    mask_range: tuple
    scores: list  # the ADD's output and the data movement after it, up to the softmax
    scores_range: tuple


def _tensor_range(name: str, graph: Graph, ranges: dict) -> Optional[tuple]:
    tensor = graph[name]
    if tensor.is_constant:
        data = tensor.data
        return (float(np.min(data)), float(np.max(data))) if data.size else None
    return tuple(float(v) for v in ranges[name]) if name in ranges else None


def _path_to_softmax(name: str, consumers: dict) -> Optional[tuple]:
    """(tensors from ``name`` on, softmax ops) when ``name`` flows only through data movement into
    softmaxes; None when it goes anywhere else."""
    tensors, softmaxes, frontier = [name], [], [name]
    while frontier:
        users = consumers.get(frontier.pop(), [])
        if not users:
            return None  # a graph output: masked scores are seen as they are
        for user in users:
            if user.type == "SOFTMAX":
                softmaxes.append(user)
            elif user.type in ("RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE") and user.inputs[0] in tensors:
                tensors.append(user.outputs[0])
                frontier.append(user.outputs[0])
            else:
                return None
    return tensors, softmaxes


def mask_clamps(graph: Graph, ranges: dict, original_float: set) -> list:
    """``MaskClamp`` for every finite additive mask int8 can hold by clamping: an ADD of scores and a
    mask-like tensor (see ``is_mask_like``) whose sum goes only to softmaxes, through data movement
    at most, and a mask read by such ADDs only. The sum's range becomes the scores' range widened
    down by ``MASK_MARGIN``: a masked score saturates at its low end, which the softmax turns into 0;
    the mask's range reaches just low enough for that, so its 0 stays exact and its huge values
    saturate. A mask used by several ADDs gets the lowest of their clamps."""
    consumers = graph.consumers()
    uses: dict = {}  # mask name -> [(ADD op, MaskClamp-to-be fields)]
    for op in graph.ops:
        if op.type != "ADD" or len(op.inputs) != 2 or not all(n in original_float for n in op.inputs):
            continue
        found = [_tensor_range(n, graph, ranges) for n in op.inputs]
        if any(r is None or not np.all(np.isfinite(r)) for r in found):
            continue
        masks = [i for i in (0, 1) if is_mask_like(*found[i])]
        if len(masks) != 1 or graph[op.inputs[1 - masks[0]]].is_constant or is_mask_like(*found[1 - masks[0]]):
            continue
        path = _path_to_softmax(op.outputs[0], consumers)
        if path is None:
            continue
        tensors, softmaxes = path
        beta = min(float(sm.options.get("beta", 1.0)) for sm in softmaxes)
        if beta <= 0:
            continue
        scores_lo, scores_hi = found[1 - masks[0]]
        mask_lo, mask_hi = found[masks[0]]
        low = min(scores_lo, 0.0) - MASK_MARGIN / beta
        high = max(scores_hi, 0.0) + max(mask_hi, 0.0)
        # Every masked score, however high, must land at the sum's low end or below.
        uses.setdefault(op.inputs[masks[0]], []).append((op, (low - high, max(mask_hi, 0.0)), tensors, (low, high)))
    clamps = []
    for mask, found in uses.items():
        if not graph[mask].is_constant and len(consumers.get(mask, [])) != len(found):
            continue  # the mask is read elsewhere too, where its huge values matter
        mask_range = (min(r[0] for _, r, _, _ in found), max(r[1] for _, r, _, _ in found))
        for _, _, tensors, scores_range in found:
            clamps.append(MaskClamp(mask, mask_range, tensors, scores_range))
    return clamps


def _unquantizable_range(op: Op, graph: Graph, ranges: dict, original_float: set,
                         constant_ranges: dict, masks: bool = True) -> Optional[str]:
    """Why ``op`` stays float when one of its float activations or non-weight constants holds an
    infinite value, one near the float32 limit, or mask-like values: an additive attention mask of
    -inf (torch's export of scaled_dot_product_attention with a boolean mask) or of a huge finite
    negative value (Hugging Face's eager attention: finfo(float32).min), the scores it is added to,
    and the softmax reading them. No int8 scale holds -inf, LiteRT cannot requantize a scale of 1e36,
    a scale stretched to a mask holds nothing else, and the softmax turns those entries into exact
    zeros only in float. ``masks=False`` leaves mask-like values to a quantized model's stated params."""
    rule = RULES[op.type]
    skip = {rule.weight[0] if rule.weight else None, rule.bias}
    names = [n for i, n in _float_inputs(op, graph, original_float) if i not in skip]
    names += [n for n in op.outputs if n in original_float]
    if _pads_for_max(op, graph):
        # The lowest-float fill only has to lose every max: it clamps to the lowest int8 value, and
        # the output takes the data's range (see _activation_params).
        names = [op.inputs[0]]
    for name in names:
        tensor = graph[name]
        if name in constant_ranges:  # a mask constant int8 holds clamped
            values = np.asarray(constant_ranges[name], dtype=np.float64)
        elif tensor.is_constant:
            values = tensor.data
        elif name in ranges:
            values = np.asarray(ranges[name], dtype=np.float64)
        else:
            continue
        if not np.all(np.isfinite(values)):
            return f"'{name}' holds infinite values, which int8 cannot represent"
        lo, hi = (float(np.min(values)), float(np.max(values))) if values.size else (0.0, 0.0)
        if masks and is_mask_like(lo, hi):
            return (f"'{name}' holds mask values down to {lo:.3g}: one int8 scale would leave nothing "
                    f"for the values near 0")
        if max(-lo, hi) >= NEAR_FLOAT32_LIMIT:
            return (f"'{name}' holds values near the float32 limit (a stand-in for -inf), whose int8 "
                    "scale LiteRT cannot requantize")
    return None


def _observed_range(name: str, graph: Graph, ranges: dict, constant_ranges: Optional[dict] = None):
    tensor = graph[name]
    if constant_ranges and name in constant_ranges:  # a mask constant held clamped (see ``mask_clamps``)
        return constant_ranges[name]
    if tensor.is_constant:
        data = tensor.data.astype(np.float64)
        return (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if name not in ranges:
        raise ModelError(f"tensor '{name}' has no calibration range; calibrate every float activation")
    lo, hi = ranges[name]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ModelError(f"tensor '{name}' has a non-finite calibration range ({lo}, {hi})")
    return float(lo), float(hi)


def _pads_for_max(op: Op, graph: Graph) -> bool:
    """A PADV2 whose fill is the lowest float: the padding a max pool with explicit pads needs."""
    if op.type != "PADV2" or len(op.inputs) < 3 or not op.inputs[2]:
        return False
    fill = graph[op.inputs[2]]
    return fill.is_constant and fill.data.size == 1 and float(fill.data.reshape(-1)[0]) <= -1e30


def _activation_params(graph: Graph, int8_ops: list, ranges: dict, io_dtype: str, original_float: set,
                       stated: Optional[dict] = None, notes: Optional[list] = None,
                       constant_ranges: Optional[dict] = None, op_dtypes: Optional[dict] = None,
                       base_dtype=INT8):
    """QuantParams for every int8 (or int16) activation, keyed by tensor name, or by (op index, input
    index) for a float constant or a requantized use that has params of its own, or by (name, dtype
    name) for a tensor read by an op of another integer type than its own (an int16 op reading an
    int8 tensor: a QUANTIZE between them).

    ``op_dtypes``: id(op) -> the op's activation dtype (``base_dtype`` when absent). Every group of
    tensors sharing params then has one dtype, the dtype of the ops it belongs to.

    ``stated``: {tensor name: (scale, zero_point)} a quantized model states (see GivenQuantization);
    a group of tensors that must share params takes them from a member that has them, and a tensor
    with stated params needs no calibrated range. ``notes`` receives where the spec overrides them."""
    stated = stated or {}
    op_dtypes = op_dtypes or {}
    groups = _UnionFind()
    node_range: dict = {}
    node_dtype: dict = {}
    pinned: dict = {}  # group root -> (scale, zero_point)
    input_node: dict = {}  # (op index, input index) -> node key
    # An activation's own integer type: its producer's; a graph input's is the io type (or the base).
    home_dtype = {name: op_dtypes.get(id(op), base_dtype) for _, op in int8_ops for name in op.outputs}
    if io_dtype != "float32":
        home_dtype.update({name: INT8 for name in graph.inputs})

    def add_node(key, name, dtype):
        node_dtype.setdefault(key, dtype)
        if key not in node_range:
            # With stated params, a tensor may take its group's (a PAD the importer added, say).
            unranged = stated and isinstance(key, str) and key not in ranges and not graph[name].is_constant
            node_range[key] = None if unranged else _observed_range(name, graph, ranges, constant_ranges)
        groups.find(key)

    def merge(a, b) -> bool:
        ra, rb = groups.find(a), groups.find(b)
        if ra == rb:
            return True
        pa, pb = pinned.get(ra), pinned.get(rb)
        if pa is not None and pb is not None and pa != pb:
            return False  # two fixed params cannot share: the caller requantizes
        root = groups.union(ra, rb)
        pin = pa if pa is not None else pb
        pinned.pop(ra, None), pinned.pop(rb, None)
        if pin is not None:
            pinned[root] = pin
        return True

    for index, op in int8_ops:
        dtype = op_dtypes.get(id(op), base_dtype)
        rule = (INT16_RULES if dtype == INT16 else RULES)[op.type]
        skip = {rule.weight[0] if rule.weight else None, rule.bias}
        for name in op.outputs:
            add_node(name, name, dtype)
            bounds = ACTIVATION_BOUNDS.get(op.options.get("fused_activation_function", "NONE"))
            if bounds is None and op.type in ACTIVATION_BOUNDS:
                bounds = ACTIVATION_BOUNDS[op.type]
            if bounds is not None and node_range[name] is not None:
                lo, hi = node_range[name]
                node_range[name] = (min(max(lo, bounds[0]), bounds[1]), max(min(hi, bounds[1]), bounds[0]))
            if isinstance(rule.output, tuple):
                pinned[groups.find(name)] = rule.output
        for i, name in _float_inputs(op, graph, original_float):
            if i in skip:
                continue
            in_dtype = INT8 if dtype == INT16 and i in INT16_OP_INT8_INPUTS.get(op.type, ()) else dtype
            if graph[name].is_constant:
                key = (index, i)
            else:
                key = name if home_dtype.get(name, base_dtype) == in_dtype else (name, in_dtype.name)
            add_node(key, name, in_dtype)
            input_node[(index, i)] = key
        if dtype == INT16 and op.type in ("ADD", "SUB"):
            _widen_int16_sum(node_range, op.outputs[0], [input_node.get((index, i)) for i in (0, 1)])
        if _pads_for_max(op, graph):
            # The fill only has to lose every max: the data's own range is the range, and the
            # fill quantizes (clamps) to the lowest int8 value.
            data_range = node_range[input_node[(index, 0)]]
            node_range[op.outputs[0]] = data_range
            node_range[input_node[(index, 2)]] = data_range
        if rule.output == "shared":
            anchor = op.outputs[0]
            for name in op.outputs[1:]:
                merge(anchor, name)
            shared_inputs = [(i, n) for i, n in _float_inputs(op, graph, original_float)]
            for i, name in shared_inputs:
                key = input_node[(index, i)]
                # A fixed-params input (e.g. TANH's output) would pin every other input of a
                # CONCATENATION to its range; it gets requantized instead.
                pinned_among_several = len(shared_inputs) > 1 and groups.find(key) in pinned
                if pinned_among_several or not merge(anchor, key):
                    # This use gets the op's params through a requantizing QUANTIZE.
                    use = (index, i)
                    node_range[use] = node_range[key]
                    node_dtype[use] = dtype
                    groups.find(use)
                    merge(anchor, use)
                    input_node[use] = use

    for name in graph.inputs + graph.outputs:
        if io_dtype != "float32" and name in original_float:
            add_node(name, name, home_dtype.get(name, INT8))

    members: dict = {}
    for key in node_range:
        members.setdefault(groups.find(key), []).append(key)
    params = {}
    for root, keys in members.items():
        own = sorted({stated[k] for k in keys if isinstance(k, str) and k in stated})
        if root in pinned:
            scale, zero_point = pinned[root]
            if notes is not None and any(not _same_params(p, pinned[root]) for p in own):
                named = next(k for k in keys if isinstance(k, str) and k in stated)
                notes.append(f"'{named}': the int8 spec fixes (scale {scale:.6g}, zero point {zero_point}) where "
                             f"the model states {_params_text(own)}")
        elif own:
            # The widest stated range: no member is clipped more than its own params clip it.
            scale, zero_point = max(own, key=lambda p: (p[0], -p[1]))
            if notes is not None and len(own) > 1:
                named = next(k for k in keys if isinstance(k, str) and k in stated)
                notes.append(f"'{named}' and the tensors sharing its int8 params (the spec asks one scale) take "
                             f"(scale {scale:.6g}, zero point {zero_point}) of the model's {_params_text(own)}")
        else:
            missing = [k for k in keys if node_range[k] is None]
            if missing:
                raise ModelError(f"tensor '{missing[0]}' has neither a stated quantization nor a calibration range")
            lo = min(node_range[k][0] for k in keys)
            hi = max(node_range[k][1] for k in keys)
            scale, zero_point = activation_params_for(node_dtype[root], lo, hi)
        for key in keys:
            params[key] = QuantParams(scale, zero_point)
    return params, input_node


# LiteRT's general int16 ADD/SUB rescales by 2 max(input scales) / (2^15 output scale), which must stay
# below 1 (add.cc aborts otherwise): an output range this many times narrower than an input's is widened.
INT16_SUM_RANGE_RATIO = 8192


def _widen_int16_sum(node_range: dict, output: str, input_keys: list) -> None:
    widest_input = max((max(-lo, hi) for key in input_keys if key is not None and node_range.get(key) is not None
                        for lo, hi in [node_range[key]]), default=0.0)
    if node_range.get(output) is None or widest_input == 0.0:
        return
    lo, hi = node_range[output]
    floor = widest_input / INT16_SUM_RANGE_RATIO
    if max(-lo, hi) < floor:
        node_range[output] = (min(lo, -floor), max(hi, floor))


# Ops whose output lies inside their input's range, so that it may keep the input's params: data
# movement, max/min selection, averages and clamps. PyTorch's quantized kernels for these keep their
# input's params, and its QAT export puts no QuantizeLinear after them.
RANGE_KEEPING = {"MEAN", "RELU", "RELU6", "RELU_N1_TO_1"} | {t for t, r in RULES.items() if r is SHARED}


def _inherit_stated(ops: list, stated: dict, ranges: dict) -> tuple:
    """(``stated`` with the params of each range-keeping op's output that the model leaves unstated and
    uncalibrated taken from the op's first input, in graph order; the names that took them)."""
    inherited = []
    for op in ops:
        source = op.inputs[0] if op.inputs else None
        if op.type not in RANGE_KEEPING or source not in stated:
            continue
        for name in op.outputs:
            if name not in stated and name not in ranges:
                stated[name] = stated[source]
                inherited.append(name)
    return stated, inherited


def _unstated(op: Op, graph: Graph, stated: dict, ranges: dict, original_float: set) -> Optional[str]:
    """Why ``op`` stays float in a model with stated quantization: an activation it reads or writes has
    neither stated params nor a calibrated range (an op the importer adds inside a decomposed one, LayerNormalization's
    variance say, where the model has no QuantizeLinear)."""
    rule = RULES[op.type]
    skip = {rule.weight[0] if rule.weight else None, rule.bias}
    names = [n for i, n in enumerate(op.inputs) if n and i not in skip and n in original_float
             and not graph[n].is_constant]
    if not isinstance(rule.output, tuple):  # else the spec fixes the output's params
        names += [n for n in op.outputs if n in original_float]
    for name in names:
        if name not in stated and name not in ranges:
            return (f"the model states no quantization for '{name}'; calibration samples "
                    "(--calibration) would give it a range")
    return None


def _same_params(a: tuple, b: tuple) -> bool:
    return a[1] == b[1] and bool(np.float32(a[0]) == np.float32(b[0]))


def _params_text(params: list) -> str:
    return ", ".join(f"(scale {s:.6g}, zero point {z})" for s, z in params)


class _Rewriter:
    """Builds the int8 op list, inserting QUANTIZE/DEQUANTIZE where int8 and float ops meet."""

    def __init__(self, graph: Graph, params: dict, original_float: set, float_consumed: set,
                 stated_weights: Optional[dict] = None, notes: Optional[list] = None, rounding=None):
        self.graph = graph
        self.rounding = rounding  # converter.adaround.Rounding: int8 weights and biases chosen by reconstruction
        self.stated_weights = stated_weights or {}  # op name -> per-output-channel weight scales
        self.notes = notes if notes is not None else []
        self.params = params
        self.original_float = original_float
        self.float_consumed = float_consumed  # constants some float op still reads as float
        self.float_data = {n: graph[n].data for n in original_float if graph[n].is_constant}
        self.home: dict = {}  # activation name -> its integer dtype (int8, int16) | "float"
        self.views: dict = {}  # (name, params key) -> converted tensor name
        self.constants: dict = {}  # (name, params key) -> quantized constant name
        self.ops: list = []

    @staticmethod
    def _key(quant: QuantParams):
        return (quant.scale.tobytes(), quant.zero_point.tobytes(), quant.axis)

    def _new_tensor(self, base: str, like: str, dtype, quant=None, data=None) -> str:
        name = self.graph.unique_name(base)
        shape = self.graph[like].shape
        self.graph.add_tensor(Tensor(name, shape, dtype, data, quant))
        return name

    def constant(self, name: str, quant: QuantParams, data: np.ndarray) -> str:
        """The constant ``name`` stored as ``data`` with ``quant``; in place while no one else needs it."""
        key = (name, data.dtype.name, self._key(quant))
        if key in self.constants:
            return self.constants[key]
        tensor = self.graph[name]
        if tensor.dtype == FLOAT32 and name not in self.float_consumed:
            tensor.dtype, tensor.data, tensor.quant = data.dtype, data, quant
            result = name
        else:
            result = self._new_tensor(f"{name}_{data.dtype.name}", name, data.dtype, quant, data)
        self.constants[key] = result
        return result

    def as_int8(self, name: str, quant: QuantParams, dtype=INT8) -> str:
        """An int8 (or ``dtype``) activation with params ``quant`` holding the value of ``name``."""
        dtype = np.dtype(dtype)
        home = self.home.get(name, "float")
        if home == dtype and self.graph[name].quant == quant:
            return name
        key = (name, dtype.name, self._key(quant))
        if key not in self.views:
            kind = "requantized" if home == dtype else dtype.name
            view = self._new_tensor(f"{name}_{kind}", name, dtype, quant)
            self.ops.append(Op("QUANTIZE", [name], [view], name=f"{name}_{kind}"))
            self.views[key] = view
        return self.views[key]

    def as_float(self, name: str) -> str:
        if self.home.get(name, "float") == "float":
            return name
        key = (name, "float")
        if key not in self.views:
            view = self._new_tensor(f"{name}_float", name, np.float32)
            self.ops.append(Op("DEQUANTIZE", [name], [view], name=f"{name}_dequantize"))
            self.views[key] = view
        return self.views[key]

    def make_int8(self, name: str, quant: QuantParams, dtype=INT8) -> None:
        tensor = self.graph[name]
        tensor.dtype, tensor.quant = np.dtype(dtype), quant
        self.home[name] = np.dtype(dtype)

    def int8_op(self, index: int, op: Op, input_node: dict, dtype=INT8) -> None:
        """``op`` with int8 (or int16: ``dtype``) activations and int8 weights."""
        dtype = np.dtype(dtype)
        rule = (INT16_RULES if dtype == INT16 else RULES)[op.type]
        weight_index = rule.weight[0] if rule.weight else None
        for i, name in _float_inputs(op, self.graph, self.original_float):
            if i in (weight_index, rule.bias):
                continue
            quant = self.params[input_node[(index, i)]]
            stored = INT8 if dtype == INT16 and i in INT16_OP_INT8_INPUTS.get(op.type, ()) else dtype
            if name in self.float_data:
                data = quantize_affine(self.float_data[name], float(quant.scale[0]), int(quant.zero_point[0]), stored)
                op.inputs[i] = self.constant(name, quant, data)
            else:
                op.inputs[i] = self.as_int8(name, quant, stored)
        if weight_index is not None:
            bias_dtype = np.int64 if dtype == INT16 and op.type in INT64_BIAS_OPS else np.int32
            self._quantize_weights(op, rule, bias_dtype)
        if dtype == INT16 and op.type in ("ADD", "SUB"):
            # The general-scale int16 kernels, as TFLite's converter writes 16x8 ADD/SUB; the power-of-two
            # form (the schema default) is an LSTM-internal one.
            op.options = {**op.options, "pot_scale_int16": False}
        for name in op.outputs:
            self.make_int8(name, self.params[name], dtype)
        self.ops.append(op)

    def _quantize_weights(self, op: Op, rule: Rule, bias_dtype=np.int32) -> None:
        weight_index, axis = rule.weight
        if op.type == "FULLY_CONNECTED" and not PER_CHANNEL_FULLY_CONNECTED:
            axis = None
        name = op.inputs[weight_index]
        weights = self.float_data[name]
        scales = self._stated_scales(op, weights, axis)
        if scales is None:
            scales = symmetric_weight_params(weights, axis)
        weight_quant = QuantParams(scales, np.zeros(scales.size, np.int64), axis if axis is not None else 0)
        chosen = self.rounding.weights.get(name) if self.rounding is not None else None
        if chosen is not None and np.array_equal(chosen[0], scales):  # made for these scales
            integers = chosen[1]
        else:
            integers = quantize_symmetric(weights, scales, axis)
        op.inputs[weight_index] = self.constant(name, weight_quant, integers)
        bias_index = rule.bias
        if bias_index is None or bias_index >= len(op.inputs) or not op.inputs[bias_index]:
            return
        input_scale = np.float64(self.graph[op.inputs[rule.input]].quant.scale[0])
        bias_name = op.inputs[bias_index]
        bias = self.float_data[bias_name]
        if chosen is not None and self.rounding is not None and bias_name in self.rounding.biases:
            bias = self.rounding.biases[bias_name]
        bias_scales = (input_scale * scales.astype(np.float64)).astype(np.float32)
        bias_quant = QuantParams(bias_scales, np.zeros(bias_scales.size, np.int64), 0)
        op.inputs[bias_index] = self.constant(bias_name, bias_quant, quantize_bias(bias, bias_scales, bias_dtype))

    def _stated_scales(self, op: Op, weights: np.ndarray, axis: Optional[int]) -> Optional[np.ndarray]:
        """The model's own weight scales for ``op`` when they quantize its weights exactly, else None."""
        scales = self.stated_weights.get(op.name)
        if scales is None or axis is None:
            return None
        if scales.size != weights.shape[axis]:
            self.notes.append(f"{op}: the model's {scales.size} weight scales do not fit its "
                              f"{weights.shape[axis]} output channels; weights requantized")
            return None
        shape = [1] * weights.ndim
        shape[axis] = -1
        per_element = scales.astype(np.float64).reshape(shape)
        steps = weights.astype(np.float64) / per_element
        if np.max(np.abs(steps - np.round(steps)), initial=0.0) > 0.01:
            # The importer changed the weights (a folded multiplier): the stated grid no longer holds them.
            self.notes.append(f"{op}: its weights are not on the model's stated int8 grid; requantized")
            return None
        if np.max(np.abs(steps), initial=0.0) > WEIGHT_QMAX + 0.01:
            self.notes.append(f"{op}: the model's int8 weights reach -128, outside the symmetric [-127, 127] of "
                              "TFLite's int8 weights; requantized")
            return None
        return scales.astype(np.float32)

    def float_op(self, op: Op) -> None:
        op.inputs = [self.as_float(n) if n else n for n in op.inputs]
        for name in op.outputs:
            self.home[name] = "float"
        self.ops.append(op)


def _retarget_output(graph: Graph, name: str, suffix: str) -> str:
    """Point every op at a copy of ``name`` so that ``name`` itself can be made by a conversion op."""
    tensor = graph[name]
    inner = graph.unique_name(f"{name}_{suffix}")
    graph.add_tensor(Tensor(inner, tensor.shape, tensor.dtype, tensor.data, tensor.quant))
    for op in graph.ops:
        op.inputs = [inner if n == name else n for n in op.inputs]
        op.outputs = [inner if n == name else n for n in op.outputs]
    return inner


@dataclass
class GivenQuantization:
    """The quantization a quantized model states (a QDQ ONNX model's QuantizeLinear/DequantizeLinear
    pairs, see converter.onnx_import.qdq).

    ``activations``: tensor name -> (scale, zero point) as int8. ``weights``: op name -> one float32
    scale per output channel of a symmetric int8 weight. ``notes``: what was changed to fit TFLite's
    int8 spec while reading them.
    """

    activations: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def quantize_int16x8(graph: Graph, ranges: dict, io_dtype: str = "float32", keep_float: Optional[dict] = None,
                     notes: Optional[list] = None) -> Graph:
    """TFLite's 16x8 version of a float graph: the ops of ``INT16_RULES`` with int16 activations
    (symmetric, zero point 0), int8 per-channel weights and int64 biases; every other op in float,
    listed in the returned graph's ``float_ops`` with the reason. Inputs and outputs stay float32."""
    if io_dtype != "float32":
        raise ModelError(f"int16x8 models keep float32 inputs and outputs, not {io_dtype}")
    return quantize_int8(graph, ranges, io_dtype, keep_float, notes=notes, activations="int16")


def quantize_int8(graph: Graph, ranges: dict, io_dtype: str = "float32", keep_float: Optional[dict] = None,
                  given: Optional[GivenQuantization] = None, notes: Optional[list] = None, rounding=None,
                  activations: str = "int8", keep_int16: Optional[dict] = None) -> Graph:
    """The int8 version of a float graph, given calibrated activation ranges.

    ``io_dtype``: "float32" keeps float inputs/outputs with QUANTIZE/DEQUANTIZE at the edges; "int8"
    or "uint8" makes the graph's inputs and outputs integer (uint8 = the int8 params shifted by 128).
    ``keep_float``: ``{first output name: reason}`` of ops to leave in float although they have an
    int8 form (see ``converter.mixed_precision``).
    ``given``: the quantization the model states itself; it takes the place of calibrated ranges
    wherever it has params (``ranges`` may then be empty), the spec's own constraints still apply.
    ``notes``, when given, receives where the spec overrode the stated quantization.
    ``rounding``: int8 weights and biases chosen by ``converter.adaround`` in place of round-to-nearest.
    ``activations``: "int8", or "int16" for TFLite's 16x8 mode (see ``quantize_int16x8``).
    ``keep_int16``: ``{first output name: reason}`` of ops of an int8 graph to quantize with int16
    activations instead (int16 islands; ops without an int16 rule stay int8). With integer ``io_dtype``,
    a graph output an int16 island makes stays int16.
    The returned graph's ``float_ops`` lists the ops left in float, with the reason; ``int16_ops``
    the ops given int16 activations.
    """
    if io_dtype not in ("float32", "int8", "uint8"):
        raise ModelError(f"io_dtype must be float32, int8 or uint8, not {io_dtype!r}")
    if activations not in ("int8", "int16"):
        raise ModelError(f"activations must be int8 or int16, not {activations!r}")
    base_dtype = INT16 if activations == "int16" else INT8
    g = graph.copy()
    ranges = dict(ranges)
    original_float = {n for n, t in g.tensors.items() if t.dtype == FLOAT32}
    given = given or GivenQuantization()
    out_notes, notes = notes, list(given.notes)
    stated = {name: params for name, params in given.activations.items() if name in g.tensors}
    if stated:
        stated, inherited = _inherit_stated(g.ops, stated, ranges)
        if inherited:
            notes.append(f"{len(inherited)} tensors the model states no quantization for take their input's "
                         f"params through ops that keep the range ({', '.join(repr(n) for n in inherited[:3])}"
                         f"{', ...' if len(inherited) > 3 else ''})")
    constant_ranges = {}
    for clamp in [] if stated else mask_clamps(g, ranges, original_float):  # a QDQ model states its own
        if g[clamp.mask].is_constant:
            constant_ranges[clamp.mask] = clamp.mask_range
        else:
            ranges[clamp.mask] = clamp.mask_range
        for name in clamp.scores:
            ranges[name] = clamp.scores_range

    int8_ops, float_ops = [], []
    op_dtypes: dict = {}  # id(op) -> INT16 for the ops with int16 activations; int8 otherwise
    for index, op in enumerate(g.ops):
        touches_float = any(n in original_float for n in list(op.inputs) + list(op.outputs) if n)
        if not touches_float:
            continue  # integer-only ops (shape arithmetic) are left as they are
        reason = (_why_not_int8(op, g, original_float)
                  or (NO_INT16_KERNEL if base_dtype == INT16 and op.type not in INT16_RULES else None)
                  or _unquantizable_range(op, g, ranges, original_float, constant_ranges, masks=not stated)
                  or (keep_float or {}).get(op.outputs[0])
                  or (_unstated(op, g, stated, ranges, original_float) if stated else None))
        if reason is None:
            int8_ops.append((index, op))
            if base_dtype == INT16 or (op.outputs[0] in (keep_int16 or {}) and op.type in INT16_RULES):
                op_dtypes[id(op)] = INT16
        else:
            float_ops.append((op, reason))
    float_op_ids = {id(op) for op, _ in float_ops}

    # A graph output made in the other domain than io_dtype asks for is renamed inside the graph;
    # a conversion op appended at the end then makes the output itself.
    producers = g.producers()
    output_conversions = []
    for name in g.outputs:
        producer = producers.get(name)
        if producer is None or name not in original_float or name in g.inputs:
            continue
        produced_int8 = id(producer) not in float_op_ids
        produced_dtype = op_dtypes.get(id(producer), INT8)
        if io_dtype == "float32" and produced_int8:
            conversion, suffix = "DEQUANTIZE", produced_dtype.name
        elif io_dtype != "float32" and not produced_int8:
            conversion, suffix = "QUANTIZE", "float"
        else:
            continue  # an output an int16 island makes stays int16: int8 would undo the island
        inner = _retarget_output(g, name, suffix)
        original_float.add(inner)
        if name in ranges:
            ranges[inner] = ranges[name]
        output_conversions.append((conversion, inner, name))

    for inner in [inner for _, inner, name in output_conversions if name in stated]:
        stated[inner] = stated[[n for _, i, n in output_conversions if i == inner][0]]
    params, input_node = _activation_params(g, int8_ops, ranges, io_dtype, original_float, stated, notes,
                                            constant_ranges, op_dtypes, base_dtype)
    for _, inner, name in output_conversions:  # notes name the graph output, not its inner copy
        notes = [note.replace(f"'{inner}'", f"'{name}'") for note in notes]
    float_consumed = {
        n for op, _ in float_ops for n in op.inputs if n and n in original_float and g[n].is_constant
    }

    rewriter = _Rewriter(g, params, original_float, float_consumed, given.weights, notes, rounding)
    index_of = {id(op): index for index, op in int8_ops}
    for name in g.inputs:
        if name in original_float:
            if io_dtype == "float32":
                rewriter.home[name] = "float"
            else:
                rewriter.make_int8(name, params[name])
    for op in g.ops:
        if id(op) in index_of:
            rewriter.int8_op(index_of[id(op)], op, input_node, op_dtypes.get(id(op), base_dtype))
        elif id(op) in float_op_ids:
            rewriter.float_op(op)
        else:
            rewriter.ops.append(op)
    for op_type, inner, name in output_conversions:
        if op_type == "DEQUANTIZE":
            rewriter.ops.append(Op("DEQUANTIZE", [inner], [name], name=f"{name}_dequantize"))
        else:
            rewriter.make_int8(name, params[name])
            rewriter.ops.append(Op("QUANTIZE", [inner], [name], name=f"{name}_quantize"))
    int16_ops = [op for op in g.ops if op_dtypes.get(id(op)) == INT16]
    g.ops = rewriter.ops

    if io_dtype == "uint8":
        _make_io_uint8(g)
    g.remove_unused()
    g.float_ops = [f"{op} ({reason})" for op, reason in float_ops]
    g.int16_ops = [str(op) for op in int16_ops]
    if out_notes is not None:
        out_notes.extend(notes)
    return g


def _make_io_uint8(g: Graph) -> None:
    """uint8 graph inputs/outputs: the same scale with the zero point shifted by 128, converted at the edge."""

    def uint8_params(quant: QuantParams) -> QuantParams:
        return QuantParams(quant.scale, quant.zero_point + 128)

    for name in g.inputs:
        tensor = g[name]
        if tensor.dtype != np.int8:
            continue
        inner = _retarget_output(g, name, "int8")
        tensor.dtype, tensor.quant = np.dtype(np.uint8), uint8_params(tensor.quant)
        g.ops.insert(0, Op("QUANTIZE", [name], [inner], name=f"{name}_to_int8"))
    for name in g.outputs:
        tensor = g[name]
        if tensor.dtype != np.int8:
            continue
        inner = _retarget_output(g, name, "int8")
        tensor.dtype, tensor.quant = np.dtype(np.uint8), uint8_params(tensor.quant)
        g.ops.append(Op("QUANTIZE", [inner], [name], name=f"{name}_to_uint8"))


# -- dynamic range and float16 -------------------------------------------------------------------

# Dynamic-range ("hybrid") ops: int8 weights, float input and output; the kernel quantizes the input
# on the fly. (weight input index, per-channel axis, per-channel required): LiteRT's hybrid
# DEPTHWISE_CONV_2D reads one scale per channel and gives garbage for a per-tensor weight scale.
DYNAMIC_RULES = {
    "CONV_2D": (1, 0, False),
    "DEPTHWISE_CONV_2D": (1, 3, True),
    "FULLY_CONNECTED": (1, 0, False),
}


def quantize_dynamic(graph: Graph, per_channel: bool = True) -> Graph:
    """int8 symmetric weights for CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED; activations stay float.

    ``per_channel=False`` gives CONV_2D and FULLY_CONNECTED one weight scale; DEPTHWISE_CONV_2D is
    per channel regardless, the only form LiteRT's hybrid kernel computes correctly.
    """
    g = graph.copy()
    consumers = g.consumers()
    converted = {}
    for op in g.ops:
        if op.type not in DYNAMIC_RULES:
            continue
        index, axis, needs_per_channel = DYNAMIC_RULES[op.type]
        name = op.inputs[index] if index < len(op.inputs) else ""
        if not name:
            continue
        if name in converted:
            op.inputs[index] = converted[name]
            continue
        if not g[name].is_constant or g[name].dtype != FLOAT32:
            continue
        axis = axis if per_channel or needs_per_channel else None
        weights = g[name].data
        scales = symmetric_weight_params(weights, axis)
        quant = QuantParams(scales, np.zeros(scales.size, np.int64), axis if axis is not None else 0)
        data = quantize_symmetric(weights, scales, axis)
        shared = any(user.type not in DYNAMIC_RULES for user in consumers.get(name, []))
        target = g.add_constant(f"{name}_int8", data, quant=quant) if shared else name
        if not shared:
            t = g[name]
            t.dtype, t.data, t.quant = np.dtype(np.int8), data, quant
        converted[name] = target
        op.inputs[index] = target
    return g


def quantize_float16(graph: Graph) -> Graph:
    """float16 constants, each DEQUANTIZEd to float32 once before the ops that read it."""
    g = graph.copy()
    dequantized = {}
    new_ops = []
    for op in g.ops:
        for i, name in enumerate(op.inputs):
            if not name or name in g.outputs:
                continue
            tensor = g[name]
            if not tensor.is_constant or tensor.dtype != FLOAT32:
                continue
            if name not in dequantized:
                tensor.dtype, tensor.data = np.dtype(np.float16), tensor.data.astype(np.float16)
                out = g.add_activation(f"{name}_dequantized", tensor.shape, np.float32)
                new_ops.append(Op("DEQUANTIZE", [name], [out], name=f"{name}_dequantize"))
                dequantized[name] = out
            op.inputs[i] = dequantized[name]
        new_ops.append(op)
    # Dequantizing every weight first keeps each op's float input ready whenever it runs.
    g.ops = [op for op in new_ops if op.type == "DEQUANTIZE" and op.inputs[0] in dequantized] + [
        op for op in new_ops if not (op.type == "DEQUANTIZE" and op.inputs[0] in dequantized)
    ]
    return g

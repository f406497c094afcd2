"""Unary activations and math functions: float kernels, and int8 kernels that give the integers
LiteRT's reference kernels give.

Every int8 op here is elementwise, so its int8 kernel is a 256-entry lookup table built in prepare by
running TFLite's own computation on all 256 inputs, either its integer arithmetic (RELU*, LEAKY_RELU,
HARD_SWISH, RSQRT, ABS; PRELU gets a 256 x 256 table over (alpha, x)) or, where TFLite itself
fills a table from the float function (LOGISTIC, TANH, GELU, EXP, LOG: ``LUTPopulate``), that same
float computation in float32. Eval is one table lookup, exact by construction.
"""
from __future__ import annotations

import math

import numpy as np

from edgeq.runtime.fixedpoint import (
    down_scale_int32_to_int16_multiplier,
    get_inv_sqrt_quantized_multiplier_exp,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    round_half_away,
    rounding_divide_by_pot_int16,
    saturating_doubling_high_mul_int16,
    saturating_left_shift_int16,
    saturating_rounding_doubling_high_mul_int16,
)
from edgeq.runtime.kernels import check, int16_tables, register
from edgeq.runtime.kernels.common import FUSED_CLAMPS, clamp, input_tensor, require_float
from edgeq.runtime.kernels.requantize import activation_range_for
from edgeq.runtime.ir import ModelError


def _logistic(x):
    # exp of a non-positive argument never overflows; the two halves are the same function.
    e = np.exp(-np.abs(x))
    denominator = e + np.float32(1)
    return np.where(x >= 0, np.float32(1), e) / denominator


def _hard_swish(x):
    return x * np.clip(x + np.float32(3), np.float32(0), np.float32(6)) / np.float32(6)


def _rsqrt(x):
    return np.float32(1) / np.sqrt(x)


def _neg(x):
    return np.negative(x)


def _elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, np.float32(0))))


def _sign(x):
    return np.sign(x)


def _square(x):
    return np.multiply(x, x)


def _logical_not(x):
    return np.logical_not(x)


_ERFC_COEFFICIENTS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
                      0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def _erfc(z):
    """Complementary error function to ~1.2e-7 relative error everywhere (Chebyshev fit, float64)."""
    z = np.asarray(z, np.float64)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = 0.0
    for c in reversed(_ERFC_COEFFICIENTS[1:]):
        poly = t * (c + poly)
    tail = t * np.exp(-a * a + _ERFC_COEFFICIENTS[0] + poly)
    return np.where(z >= 0, tail, 2.0 - tail)


def _gelu_exact(x):
    # 0.5 x (1 + erf(x/sqrt 2)) written with erfc so negative inputs keep their relative precision.
    return (0.5 * x * _erfc(-x * np.sqrt(0.5))).astype(np.float32)


def _gelu_tanh(x):
    inner = np.float32(np.sqrt(2.0 / np.pi)) * (x + np.float32(0.044715) * x * x * x)
    return np.float32(0.5) * x * (np.float32(1) + np.tanh(inner))


_UNARY = {
    **{name: clamp(name) for name in FUSED_CLAMPS},
    "LOGISTIC": _logistic,
    "TANH": np.tanh,
    "HARD_SWISH": _hard_swish,
    "EXP": np.exp,
    "LOG": np.log,
    "SQRT": np.sqrt,
    "RSQRT": _rsqrt,
    "ABS": np.abs,
    "NEG": _neg,
    "ELU": _elu,
    "SIN": np.sin,
    "COS": np.cos,
    "SIGN": _sign,
    "SQUARE": _square,
    "FLOOR": np.floor,
    "CEIL": np.ceil,
    "ROUND": np.round,  # half to even, as TFLite's ROUND
}

_ANY_DTYPE = {"SIGN", "LOGICAL_NOT"}


# -- int8: quantization parameters and the 256-entry tables -------------------------------------

INT8_MIN, INT8_MAX = -128, 127
# Every int8 value, in table order: entry i of a table is the output for the int8 whose bits are i.
_ALL_INT8 = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.int64)


def _affine(op, graph, tensor) -> tuple:
    """(float32 scale, int zero point) of a per-tensor quantized tensor."""
    if tensor.quant is None:
        raise ModelError(f"op {op}: int8 tensor '{tensor.name}' has no quantization parameters")
    return np.float32(tensor.quant.scale[0]), int(tensor.quant.zero_point[0])


def _int8_params(op, graph):
    """(input_scale, input_zero_point, output_scale, output_zero_point) of an int8 -> int8 op."""
    x, y = graph[op.inputs[0]], graph[op.outputs[0]]
    if y.dtype != np.int8:
        raise ModelError(f"op {op}: int8 input '{x.name}' needs an int8 output, not {y.dtype}")
    return _affine(op, graph, x) + _affine(op, graph, y)


def _is_int8(op, graph) -> bool:
    return graph[op.inputs[0]].dtype == np.int8


def _table(outputs: np.ndarray) -> np.ndarray:
    """Clamp the int32 outputs for ``_ALL_INT8`` to int8: the lookup table."""
    return np.clip(outputs, INT8_MIN, INT8_MAX).astype(np.int8)


def _lookup(table: np.ndarray):
    def lookup_table(x):
        return table[x.view(np.uint8)]

    return lookup_table


def _float32_to_int32_saturating(values: np.ndarray) -> np.ndarray:
    """The float32 -> int32 conversion of LiteRT's LUTPopulate as measured: truncation toward zero,
    saturating out-of-range values (an EXP table whose exp overflows gives 127, not -128)."""
    values = values.astype(np.float64)
    values = np.where(np.isnan(values), -(2.0**31), values)
    return np.trunc(np.clip(values, -(2.0**31), 2.0**31 - 1)).astype(np.int64)


def populate_lut_int8(input_scale, input_zero_point, output_scale, output_zero_point, transform) -> np.ndarray:
    """TFLite's LUTPopulate<int8_t>: dequantize each int8 input in float32, apply ``transform``
    (float32 array -> float32 array), requantize with std::round, clamp."""
    dequantized = np.float32(input_scale) * (_ALL_INT8 - input_zero_point).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        transformed = np.asarray(transform(dequantized), dtype=np.float32)
        inverse_scale = np.float32(1) / np.float32(output_scale)
        rescaled = round_half_away((transformed * inverse_scale).astype(np.float32))
        quantized = _float32_to_int32_saturating((rescaled + np.float32(output_zero_point)).astype(np.float32))
    return _table(quantized)


def _c_math_function(name: str):
    """The C math library's float32 ``name`` (expf, tanhf) as a numpy function, or None.

    LiteRT fills its LOGISTIC, TANH, EXP and GELU tables with std::exp/std::tanh on float, that is the
    C library's expf/tanhf, and those are not correctly rounded everywhere (glibc 2.36's tanhf differs
    from the correctly rounded value on ~14% of inputs); a table entry whose value sits on a rounding
    tie then differs by one. Calling the same library gives LiteRT's integers on this machine."""
    try:
        import ctypes
    except ImportError:  # a Python built without libffi (some embedded builds): no C library calls
        return None
    # The process's own symbols first (the libm Python and LiteRT already resolve against), then by
    # name; ucrtbase is Windows' C runtime.
    for library in (None, "libm.so.6", "libm.dylib", "ucrtbase"):
        try:
            function = getattr(ctypes.CDLL(library), name)
        except (OSError, AttributeError, TypeError):
            continue
        function.restype, function.argtypes = ctypes.c_float, [ctypes.c_float]
        return np.vectorize(function, otypes=[np.float32])
    return None


_C_EXPF = _c_math_function("expf")
_C_TANHF = _c_math_function("tanhf")


# float32 libm functions: the C library's where it loads, else correctly rounded (float64, rounded once).
def _expf(v):
    if _C_EXPF is not None:
        return _C_EXPF(np.asarray(v, np.float32))
    return np.exp(v.astype(np.float64)).astype(np.float32)


def _logf(v):
    return np.log(v.astype(np.float64)).astype(np.float32)


def _tanhf(v):
    if _C_TANHF is not None:
        return _C_TANHF(np.asarray(v, np.float32))
    return np.tanh(v.astype(np.float64)).astype(np.float32)


_erfc_elementwise = np.frompyfunc(math.erfc, 1, 1)


def _erfcf(v):
    return _erfc_elementwise(v.astype(np.float64)).astype(np.float64).astype(np.float32)


def _logistic_float32(v):
    return np.float32(1) / (np.float32(1) + _expf(-v))


def _gelu_float32(v):
    return np.float32(0.5) * v * _erfcf(v * np.float32(-math.sqrt(0.5)))


_SQRT_2_OVER_PI_F32 = np.float32(2.0 / math.sqrt(math.pi) * math.sqrt(0.5))


def _gelu_approximate_float32(v):
    cubic = np.float32(0.044715) * v * v * v
    return np.float32(0.5) * v * (np.float32(1) + _tanhf(_SQRT_2_OVER_PI_F32 * (v + cubic)))


def _relu_family_table(op, graph) -> np.ndarray:
    """TFLite's QuantizedReluX: requantize x to the output scale, clamp to the activation range."""
    input_scale, input_zero_point, output_scale, output_zero_point = _int8_params(op, graph)
    multiplier, shift = quantize_multiplier(float(input_scale / output_scale))
    # The activation bounds in the output's quantized domain, roundf(bound / output_scale).
    quantized_min, quantized_max = activation_range_for(op.type, output_scale, output_zero_point, np.int8, op)
    requantized = output_zero_point + multiply_by_quantized_multiplier(
        _ALL_INT8 - input_zero_point, multiplier, shift).astype(np.int64)
    return _table(np.clip(requantized, quantized_min, quantized_max))


def _hard_swish_table(op, graph) -> np.ndarray:
    """TFLite's reference int8 HardSwish: int16 fixed point with an output multiplier and a
    "reluish" multiplier mapping [-3, 3] onto the int16 range."""
    input_scale, input_zero_point, output_scale, output_zero_point = _int8_params(op, graph)
    hires_input_scale = np.float32(1.0 / 128.0) * input_scale
    reluish_scale = np.float32(3.0 / 32768.0)
    output_multiplier_int32, output_multiplier_exponent = quantize_multiplier(float(hires_input_scale / output_scale))
    if output_multiplier_exponent > 0:
        raise ModelError(f"op {op}: HARD_SWISH output scale is too small for its input scale")
    output_multiplier_fixedpoint_int16 = down_scale_int32_to_int16_multiplier(output_multiplier_int32)
    reluish_multiplier_int32, reluish_multiplier_exponent = quantize_multiplier(float(hires_input_scale / reluish_scale))
    reluish_multiplier_fixedpoint_int16 = down_scale_int32_to_int16_multiplier(reluish_multiplier_int32)

    input_value = _ALL_INT8 - input_zero_point
    input_value_on_hires_input_scale = input_value * 128  # |.| <= 255 * 128: fits int16
    input_value_on_preshift_output_scale = saturating_rounding_doubling_high_mul_int16(
        input_value_on_hires_input_scale, output_multiplier_fixedpoint_int16)
    reluish_value = input_value_on_hires_input_scale
    if reluish_multiplier_exponent > 0:
        reluish_value = saturating_left_shift_int16(reluish_value, reluish_multiplier_exponent - 1)
    reluish_value = saturating_rounding_doubling_high_mul_int16(reluish_value, reluish_multiplier_fixedpoint_int16)
    if reluish_multiplier_exponent > 0:
        reluish_value = saturating_left_shift_int16(reluish_value, 1)
    if reluish_multiplier_exponent < 0:
        reluish_value = rounding_divide_by_pot_int16(reluish_value, -reluish_multiplier_exponent)
    reluish_value = (reluish_value.astype(np.int64) + (1 << 15)) >> 1  # [-1, 1] -> [0, 1]
    preshift_output_value = saturating_doubling_high_mul_int16(reluish_value, input_value_on_preshift_output_scale)
    output_value = rounding_divide_by_pot_int16(preshift_output_value, -output_multiplier_exponent)
    return _table(output_value.astype(np.int64) + output_zero_point)


def _rsqrt_table(op, graph) -> np.ndarray:
    """TFLite's int8 RSQRT: integer inverse square root of (x - zero point), requantized.
    Entries for x below the input zero point are unused (eval refuses such inputs)."""
    input_scale, input_zero_point, output_scale, output_zero_point = _int8_params(op, graph)
    multiplier, shift = quantize_multiplier(1.0 / float(np.sqrt(input_scale) * output_scale))
    shift_to_keep_integer = 20
    value = np.maximum(_ALL_INT8 - input_zero_point, 0)
    inv_sqrt_multiplier, inv_sqrt_shift = get_inv_sqrt_quantized_multiplier_exp(value, -1)
    data = multiply_by_quantized_multiplier(1, inv_sqrt_multiplier, inv_sqrt_shift.astype(np.int64) + shift_to_keep_integer)
    output = multiply_by_quantized_multiplier(data, multiplier, shift - shift_to_keep_integer).astype(np.int64)
    output = output + output_zero_point
    return _table(np.where(value == 0, INT8_MAX, output))


def _abs_table(op, graph) -> np.ndarray:
    """TFLite's int8 ABS: |x - input zero point|, requantized only when the scales differ."""
    input_scale, input_zero_point, output_scale, output_zero_point = _int8_params(op, graph)
    value = np.abs(_ALL_INT8 - input_zero_point)
    if input_scale != output_scale:
        multiplier, shift = quantize_multiplier(float(input_scale / output_scale))
        value = multiply_by_quantized_multiplier(value, multiplier, shift).astype(np.int64)
    return _table(value + output_zero_point)


def _float_function_table(transform):
    def build(op, graph):
        return populate_lut_int8(*_int8_params(op, graph), transform)

    return build


def _log_table(op, graph) -> np.ndarray:
    input_scale, input_zero_point, output_scale, output_zero_point = _int8_params(op, graph)
    # log of a non-positive input is the lowest representable output.
    output_min = np.float32(INT8_MIN - output_zero_point) * output_scale

    def log_or_min(v):
        return np.where(v <= 0, output_min, _logf(np.where(v > 0, v, np.float32(1))))

    return populate_lut_int8(input_scale, input_zero_point, output_scale, output_zero_point, log_or_min)


_INT8_TABLES = {
    **dict.fromkeys(FUSED_CLAMPS, _relu_family_table),
    "LOGISTIC": _float_function_table(_logistic_float32),
    "TANH": _float_function_table(_tanhf),
    "HARD_SWISH": _hard_swish_table,
    "EXP": _float_function_table(_expf),
    "LOG": _log_table,
    "RSQRT": _rsqrt_table,
    "ABS": _abs_table,
}


# int16 (16x8) tables; LiteRT's reference kernels have no int16 HARD_SWISH or RELU_N1_TO_1 (they fail at
# invoke with "Only float32, uint8 and int8 are supported"), so those are refused rather than invented.
_INT16_TABLES = {
    "RELU": int16_tables.relu_family_table,
    "RELU6": int16_tables.relu_family_table,
    "LOGISTIC": int16_tables.logistic_table,
    "TANH": int16_tables.tanh_table,
    "EXP": lambda op, graph: int16_tables.float_function_table(op, graph, _expf),
    "LOG": lambda op, graph: int16_tables.log_table(op, graph, _logf),
    "RSQRT": int16_tables.rsqrt_table,
    "ABS": int16_tables.abs_table,
    "SQRT": int16_tables.sqrt_table,
}


def _is_quantized_int16(op, graph) -> bool:
    tensor = graph[op.inputs[0]]
    return tensor.dtype == np.int16 and tensor.quant is not None


@check(*_UNARY, "GELU", "LEAKY_RELU", "PRELU")
def check_int16_activation(op, graph):
    """What the int16 (16x8) forms need, refused at load: a kernel for the op, zero points 0, Q0.15
    outputs for LOGISTIC/TANH, an int8 alpha for PRELU (LiteRT reads alpha as int8 whatever its type)."""
    if not _is_quantized_int16(op, graph):
        return
    if op.type in _UNARY and op.type not in _INT16_TABLES:
        raise ModelError(f"int16 {op.type} has no integer kernel (LiteRT's reference kernels have none either); "
                         f"int16 is supported for {', '.join(sorted(_INT16_TABLES))}, GELU, LEAKY_RELU, PRELU")
    int16_tables.check_symmetric(graph, (op.inputs[0], op.outputs[0]))
    if op.type in ("LOGISTIC", "TANH"):
        int16_tables.check_q15_output(op, graph)
    if op.type == "PRELU":
        alpha = input_tensor(op, graph, 1)
        if alpha is None or alpha.dtype != np.int8 or alpha.quant is None:
            raise ModelError("an int16 PRELU needs a quantized int8 alpha")


def _prepare_unary_int16(op, graph):
    table = _INT16_TABLES[op.type](op, graph)
    if op.type in ("RSQRT", "SQRT"):
        return _non_negative_only(table, op)
    return int16_tables.lookup(table)


def _non_negative_only(table, op):
    """RSQRT / SQRT: LiteRT fails the invoke on a negative input; so does this."""
    def lookup_non_negative_int16(x):
        if x.size and int(x.min()) < 0:
            raise ValueError(f"op {op}: {op.type} is only defined for non-negative values")
        return table[x.view(np.uint16)]

    return lookup_non_negative_int16


@register(*_UNARY)
def prepare_unary(op, graph):
    if _is_quantized_int16(op, graph):
        return _prepare_unary_int16(op, graph)
    if _is_int8(op, graph) and op.type in _INT8_TABLES:
        table = _INT8_TABLES[op.type](op, graph)
        if op.type == "RSQRT":
            return _checked_rsqrt(table, _int8_params(op, graph)[1], op)
        return _lookup(table)
    require_float(op, graph)
    return _UNARY[op.type]


def _checked_rsqrt(table, input_zero_point: int, op):
    def rsqrt(x):
        if x.size and int(x.min()) < input_zero_point:
            raise ValueError(f"op {op}: RSQRT is only defined for positive values")
        return table[x.view(np.uint8)]

    return rsqrt


@register("GELU")
def prepare_gelu(op, graph):
    approximate = op.options.get("approximate", False)
    if _is_quantized_int16(op, graph):
        transform = _gelu_approximate_float32 if approximate else _gelu_float32
        return int16_tables.lookup(int16_tables.float_function_table(op, graph, transform))
    if _is_int8(op, graph):
        transform = _gelu_approximate_float32 if approximate else _gelu_float32
        return _lookup(populate_lut_int8(*_int8_params(op, graph), transform))
    require_float(op, graph)
    return _gelu_tanh if approximate else _gelu_exact


@register("LEAKY_RELU")
def prepare_leaky_relu(op, graph):
    alpha = np.float32(op.options.get("alpha", 0.2))
    if _is_quantized_int16(op, graph):
        return int16_tables.lookup(int16_tables.leaky_relu_table(op, graph, alpha))
    if _is_int8(op, graph):
        return _lookup(_leaky_relu_table(op, graph, alpha))
    require_float(op, graph)

    def leaky_relu(x):
        return np.where(x >= 0, x, x * alpha)

    return leaky_relu


def _leaky_relu_table(op, graph, alpha) -> np.ndarray:
    """TFLite's QuantizeLeakyRelu: x - zero point >= 0 takes the identity multiplier, else the alpha
    multiplier (a negative alpha multiplies by |alpha| and negates)."""
    input_scale, input_zero_point, output_scale, output_zero_point = _int8_params(op, graph)
    alpha_multiplier, alpha_shift = quantize_multiplier(float(input_scale * alpha / output_scale))
    identity_multiplier, identity_shift = quantize_multiplier(float(input_scale / output_scale))
    input_value = _ALL_INT8 - input_zero_point
    identity = multiply_by_quantized_multiplier(input_value, identity_multiplier, identity_shift).astype(np.int64)
    scaled_alpha = multiply_by_quantized_multiplier(input_value, abs(alpha_multiplier), alpha_shift).astype(np.int64)
    if alpha_multiplier < 0:
        scaled_alpha = -scaled_alpha
    return _table(output_zero_point + np.where(input_value >= 0, identity, scaled_alpha))


@register("PRELU")
def prepare_prelu(op, graph):
    if _is_quantized_int16(op, graph):
        return _prepare_prelu_int16(op, graph)
    if _is_int8(op, graph):
        return _prepare_prelu_int8(op, graph)
    require_float(op, graph, (0, 1))

    def prelu(x, alpha):
        return np.where(x >= 0, x, x * alpha)

    return prelu


def _prepare_prelu_int8(op, graph):
    """TFLite's reference int8 PRELU (BroadcastPrelu4DSlow / Prelu): x - zero point >= 0 takes
    output_multiplier_1 = input_scale / output_scale, else (x - zp) * (alpha - alpha zp) takes
    output_multiplier_2 = input_scale * alpha_scale / output_scale. The kernel is a 256 x 256 table
    over (alpha, x), looked up with alpha broadcast against x."""
    input_scale, input_zero_point, output_scale, output_zero_point = _int8_params(op, graph)
    alpha_tensor = input_tensor(op, graph, 1)
    if alpha_tensor is None or alpha_tensor.dtype != np.int8:
        raise ModelError(f"op {op}: an int8 PRELU needs an int8 alpha")
    alpha_scale, alpha_zero_point = _affine(op, graph, alpha_tensor)
    multiplier_1, shift_1 = quantize_multiplier(float(input_scale / output_scale))
    multiplier_2, shift_2 = quantize_multiplier(float(input_scale * alpha_scale / output_scale))
    input_value = (_ALL_INT8 - input_zero_point)[None, :]
    alpha_value = (_ALL_INT8 - alpha_zero_point)[:, None]
    positive = multiply_by_quantized_multiplier(input_value, multiplier_1, shift_1).astype(np.int64)
    negative = multiply_by_quantized_multiplier(input_value * alpha_value, multiplier_2, shift_2).astype(np.int64)
    table = _table(output_zero_point + np.where(input_value >= 0, positive, negative)).ravel()

    constant_alpha_rows = None
    if alpha_tensor.data is not None:
        constant_alpha_rows = alpha_tensor.data.view(np.uint8).astype(np.intp) << 8

    def prelu(x, alpha):
        rows = constant_alpha_rows if constant_alpha_rows is not None else alpha.view(np.uint8).astype(np.intp) << 8
        return table[rows + x.view(np.uint8)]

    return prelu


def _prepare_prelu_int16(op, graph):
    """TFLite's reference int16 PRELU (16x8): int16 input and output (zero point 0), int8 alpha, the same
    two multipliers as int8; x >= 0 takes input_scale / output_scale, else x * (alpha - alpha zp) takes
    input_scale * alpha_scale / output_scale. LiteRT reads alpha as int8 whatever its type, so an int16
    alpha is refused."""
    input_scale, output_scale = int16_tables.symmetric_params(op, graph)
    alpha_tensor = input_tensor(op, graph, 1)
    alpha_scale, alpha_zero_point = _affine(op, graph, alpha_tensor)
    multiplier_1, shift_1 = quantize_multiplier(float(input_scale / output_scale))
    multiplier_2, shift_2 = quantize_multiplier(float(input_scale * alpha_scale / output_scale))
    positive_table = multiply_by_quantized_multiplier(int16_tables.ALL_INT16, multiplier_1, shift_1).astype(np.int64)
    constant_alpha = None
    if alpha_tensor.data is not None:
        constant_alpha = alpha_tensor.data.astype(np.int64) - alpha_zero_point

    def prelu_int16(x, alpha):
        alpha_value = constant_alpha if constant_alpha is not None else alpha.astype(np.int64) - alpha_zero_point
        value = x.astype(np.int64)
        negative = multiply_by_quantized_multiplier(value * alpha_value, multiplier_2, shift_2).astype(np.int64)
        positive = positive_table[x.view(np.uint16)]
        out = np.where(value >= 0, positive, negative)
        return np.clip(out, int16_tables.INT16_MIN, int16_tables.INT16_MAX).astype(np.int16)

    return prelu_int16

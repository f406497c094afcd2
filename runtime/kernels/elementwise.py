"""Binary elementwise ops with numpy broadcasting; ADD/SUB/MUL/DIV carry a fused activation."""
from __future__ import annotations

import numpy as np

from edgeq.runtime import native
from edgeq.runtime.kernels import check, register
from edgeq.runtime.kernels.buffers import OutputBuffers
from edgeq.runtime.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier, rounding_divide_by_pot
from edgeq.runtime.kernels.int16_tables import check_symmetric, checked_log2
from edgeq.runtime.kernels.common import float_activation_bounds, fused_activation, require_float, with_activation
from edgeq.runtime.kernels.requantize import activation_range, saturate, scale_and_zero_point
from edgeq.runtime.ir import ModelError

# Same-shape int8 ADD/SUB with at least this many values use a 64 KB table of every input pair.
PAIR_TABLE_MIN_VALUES = 16384


def _squared_difference(a, b):
    difference = np.subtract(a, b)
    return np.multiply(difference, difference, out=difference)


_FLOAT_FUNCTIONS = {
    "ADD": np.add,
    "SUB": np.subtract,
    "MUL": np.multiply,
    "DIV": np.divide,
    "MAXIMUM": np.maximum,
    "MINIMUM": np.minimum,
    "SQUARED_DIFFERENCE": _squared_difference,
    "POW": np.power,
}


@register("ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "POW")
def prepare_binary(op, graph):
    if graph[op.inputs[0]].dtype in (np.int8, np.uint8) and op.type in _INTEGER_PREPARES:
        return _INTEGER_PREPARES[op.type](op, graph)
    if _is_quantized_int16(op, graph) and op.type in _INT16_PREPARES:
        return _INT16_PREPARES[op.type](op, graph)
    if _is_plain_integer(op, graph) and op.type not in ("DIV", "SQUARED_DIFFERENCE"):
        return _FLOAT_FUNCTIONS[op.type]  # int32/int64 index arithmetic: numpy's integer ops agree
    if _is_plain_integer(op, graph) and op.type == "DIV":
        return _truncating_divide
    require_float(op, graph, (0, 1))
    return _prepare_float(op, graph)


def _is_quantized_int16(op, graph):
    tensor = graph[op.inputs[0]]
    return tensor.dtype == np.int16 and tensor.quant is not None


def _is_plain_integer(op, graph):
    tensors = [graph[name] for name in op.inputs[:2]]
    return all(t.dtype in (np.int32, np.int64) and t.quant is None for t in tensors)


def _truncating_divide(a, b):
    """TFLite's integer DIV divides as C++ does, rounding toward zero (numpy's // floors)."""
    with np.errstate(divide="ignore"):
        quotient = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -quotient, quotient).astype(np.result_type(a, b))


def _prepare_float(op, graph):
    function = _FLOAT_FUNCTIONS[op.type]
    activation = fused_activation(op) if op.type in ("ADD", "SUB", "MUL", "DIV") else None
    if op.type == "ADD":
        native_add = _prepare_add_float_native(op, graph, function, activation)
        if native_add is not None:
            return native_add
    if activation is None:
        return function
    return with_activation(function, activation)


def _prepare_add_float_native(op, graph, add, activation):
    """Same-shape float32 ADD (a residual connection) with a clamp or no activation: one native pass
    into a buffer kept between runs, split over the native threads; None where it does not apply."""
    bounds = float_activation_bounds(op)
    shapes = [tuple(graph[name].shape) for name in (op.inputs[0], op.inputs[1], op.outputs[0])]
    all_float32 = all(graph[name].dtype == np.float32 for name in (op.inputs[0], op.inputs[1], op.outputs[0]))
    if not native.enabled() or bounds is None or not all_float32 or len(set(shapes)) != 1 or not shapes[0]:
        return None
    low, high = bounds
    outputs = OutputBuffers(shapes[0][1:], np.float32)
    run = native.add_f32

    def add_float_native(a, b):
        if a.shape != b.shape or a.dtype != np.float32 or b.dtype != np.float32:
            out = add(a, b)
            return activation(out) if activation is not None else out
        return run(np.ascontiguousarray(a), np.ascontiguousarray(b), low, high, outputs.get(a.shape[0]))

    return add_float_native


# -- int8 / uint8 ----------------------------------------------------------------------------------
# Both inputs broadcast as numpy broadcasts (TFLite's BroadcastAdd/Mul6DSlow index the same way).

def _int_params(op, graph):
    tensors = [graph[op.inputs[0]], graph[op.inputs[1]], graph[op.outputs[0]]]
    return [scale_and_zero_point(t, op) for t in tensors], tensors[2].dtype


def _prepare_add_sub_int(op, graph):
    """TFLite's quantized ADD/SUB: both inputs are rescaled to a common scale 2 * max(s1, s2) with
    20 bits of headroom (left_shift), added (or subtracted) in int32, and requantized to the output:
    every multiplier goes through MultiplyByQuantizedMultiplierSmallerThanOneExp (double rounding).
    int16 (add.cc / sub.cc with general scales) is the same arithmetic with 15 bits of headroom, so
    65535 << 15 still fits the int32 sum."""
    ((scale_1, zero_point_1), (scale_2, zero_point_2), (output_scale, output_offset)), dtype = _int_params(op, graph)
    left_shift = 15 if dtype == np.int16 else 20
    twice_max_input_scale = 2.0 * np.float64(max(scale_1, scale_2))
    input1_multiplier, input1_shift = quantize_multiplier(np.float64(scale_1) / twice_max_input_scale)
    input2_multiplier, input2_shift = quantize_multiplier(np.float64(scale_2) / twice_max_input_scale)
    output_multiplier, output_shift = quantize_multiplier(
        twice_max_input_scale / np.float64(np.float32((1 << left_shift) * output_scale)))
    input1_offset, input2_offset = -zero_point_1, -zero_point_2
    activation_min, activation_max = activation_range(op, output_scale, output_offset, dtype)
    subtract = op.type == "SUB"
    shapes = [tuple(graph[name].shape) for name in (op.inputs[0], op.inputs[1], op.outputs[0])]
    use_native = native.enabled() and dtype == np.int8 and shapes[0] == shapes[1] == shapes[2]
    if use_native:
        # Same-shape inputs (a residual connection): one native pass, no int64 temporaries.
        params = native.AddParams(input1_offset, input2_offset, left_shift, input1_multiplier, input1_shift,
                                  input2_multiplier, input2_shift, output_multiplier, output_shift, output_offset,
                                  activation_min, activation_max, subtract)
        native_outputs = OutputBuffers(shapes[2][1:], dtype)
        isa = native.isa()
        if int(np.prod(shapes[2])) >= PAIR_TABLE_MIN_VALUES:
            # A large tensor reads each output from the table of all 65536 input pairs, made once here
            # by the same kernel: a gather instead of three requantizations per value.
            table, lookup = native.pair_table(isa, params), native.lookup_pairs_int8

            def add_sub_int8_native(a, b):
                if a.shape != b.shape:  # a batch run against a constant: numpy broadcasts
                    return add_sub_int(a, b)
                return lookup(isa, table, np.ascontiguousarray(a), np.ascontiguousarray(b),
                              native_outputs.get(a.shape[0]))
        else:
            def add_sub_int8_native(a, b):
                if a.shape != b.shape:  # a batch run against a constant: numpy broadcasts
                    return add_sub_int(a, b)
                return native.add_int8(isa, params, np.ascontiguousarray(a), np.ascontiguousarray(b),
                                       native_outputs.get(a.shape[0]))

    def add_sub_int(a, b):
        shifted_1 = (a.astype(np.int64) + input1_offset) << left_shift
        shifted_2 = (b.astype(np.int64) + input2_offset) << left_shift
        scaled_1 = multiply_by_quantized_multiplier(shifted_1, input1_multiplier, input1_shift).astype(np.int64)
        scaled_2 = multiply_by_quantized_multiplier(shifted_2, input2_multiplier, input2_shift).astype(np.int64)
        raw = scaled_1 - scaled_2 if subtract else scaled_1 + scaled_2
        out = multiply_by_quantized_multiplier(raw, output_multiplier, output_shift).astype(np.int64)
        return saturate(out + output_offset, activation_min, activation_max, dtype)

    if dtype == np.int16:
        # Each input's rescaled value depends on its int16 alone: two 65536-entry tables replace two of
        # the three requantizations.
        every_int16 = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int64)
        scaled_1_table = multiply_by_quantized_multiplier((every_int16 + input1_offset) << left_shift, input1_multiplier,
                                                          input1_shift).astype(np.int64)
        scaled_2_table = multiply_by_quantized_multiplier((every_int16 + input2_offset) << left_shift, input2_multiplier,
                                                          input2_shift).astype(np.int64)
        combine = np.subtract if subtract else np.add

        def add_sub_int16(a, b):
            raw = combine(scaled_1_table[a.view(np.uint16)], scaled_2_table[b.view(np.uint16)])
            out = multiply_by_quantized_multiplier(raw, output_multiplier, output_shift).astype(np.int64)
            return saturate(out + output_offset, activation_min, activation_max, dtype)

        return add_sub_int16
    if use_native:
        return add_sub_int8_native
    return add_sub_int


def _prepare_mul_int(op, graph):
    """reference_integer_ops::Mul: (x1 + input1_offset) * (x2 + input2_offset) requantized by
    s1 * s2 / s_out (computed in float32, as mul.cc does), double rounding."""
    ((scale_1, zero_point_1), (scale_2, zero_point_2), (output_scale, output_offset)), dtype = _int_params(op, graph)
    real_multiplier = np.float32(np.float32(scale_1) * np.float32(scale_2)) / np.float32(output_scale)
    output_multiplier, output_shift = quantize_multiplier(np.float64(np.float32(real_multiplier)))
    input1_offset, input2_offset = -zero_point_1, -zero_point_2
    activation_min, activation_max = activation_range(op, output_scale, output_offset, dtype)

    def mul_int(a, b):
        product = (a.astype(np.int64) + input1_offset) * (b.astype(np.int64) + input2_offset)
        out = multiply_by_quantized_multiplier(product, output_multiplier, output_shift).astype(np.int64)
        return saturate(out + output_offset, activation_min, activation_max, dtype)

    return mul_int


def _prepare_squared_difference_int(op, graph):
    """squared_difference.cc's int8 path: both inputs rescaled to 2 * max(s1, s2) with 7 bits of
    headroom, the difference squared in int32, requantized by (2 * max)^2 / (2^14 * s_out); every
    multiplier is below one (MultiplyByQuantizedMultiplierSmallerThanOneExp, double rounding)."""
    ((scale_1, zero_point_1), (scale_2, zero_point_2), (output_scale, output_offset)), dtype = _int_params(op, graph)
    left_shift = 7
    twice_max_input_scale = 2.0 * np.float64(max(np.float32(scale_1), np.float32(scale_2)))
    input1_multiplier, input1_shift = quantize_multiplier(np.float64(np.float32(scale_1)) / twice_max_input_scale)
    input2_multiplier, input2_shift = quantize_multiplier(np.float64(np.float32(scale_2)) / twice_max_input_scale)
    # (1 << 14) * scale is float32 arithmetic in the C++ (int times float), exact for a power of two.
    output_multiplier, output_shift = quantize_multiplier(
        twice_max_input_scale * twice_max_input_scale / np.float64(np.float32((1 << 2 * left_shift) * output_scale)))
    input1_offset, input2_offset = -zero_point_1, -zero_point_2
    low, high = np.iinfo(dtype).min, np.iinfo(dtype).max

    def squared_difference_int(a, b):
        shifted_1 = (a.astype(np.int64) + input1_offset) << left_shift
        shifted_2 = (b.astype(np.int64) + input2_offset) << left_shift
        scaled_1 = multiply_by_quantized_multiplier(shifted_1, input1_multiplier, input1_shift).astype(np.int64)
        scaled_2 = multiply_by_quantized_multiplier(shifted_2, input2_multiplier, input2_shift).astype(np.int64)
        raw = np.square(scaled_1 - scaled_2)
        out = multiply_by_quantized_multiplier(raw, output_multiplier, output_shift).astype(np.int64)
        return saturate(out + output_offset, low, high, dtype)

    return squared_difference_int


def _prepare_max_min_int(op, graph):
    """MAXIMUM/MINIMUM compare the stored integers (inputs and output share params)."""
    return np.maximum if op.type == "MAXIMUM" else np.minimum


# -- int16 (16x8: symmetric int16 activations, zero point 0) -------------------------------------

@check("ADD", "SUB", "MUL", "SQUARED_DIFFERENCE", "MAXIMUM", "MINIMUM")
def check_binary_int16(op, graph):
    """What the int16 (16x8) forms need, refused at load: zero points 0 on both inputs and the output
    (LiteRT's Prepare checks them), ADD/SUB scales LiteRT can rescale; LiteRT has no int16
    SQUARED_DIFFERENCE ("only supports FLOAT32 and INT32")."""
    if not _is_quantized_int16(op, graph):
        return
    if op.type == "SQUARED_DIFFERENCE":
        raise ModelError("int16 SQUARED_DIFFERENCE has no integer kernel (LiteRT's reference kernels have none "
                         "either)")
    check_symmetric(graph, (op.inputs[0], op.inputs[1], op.outputs[0]))
    if op.type not in ("ADD", "SUB"):
        return
    shifts = _power_of_two_shifts(op, graph)
    if shifts is None:
        _require_output_multiplier_below_one(op, graph)
    elif not (shifts[0] == 0 or shifts[1] == 0) or max(shifts) > 0:
        raise ModelError(f"power-of-two int16 {op.type} shifts one input right only (input shifts {shifts})")
    elif tuple(graph[op.inputs[0]].shape) != tuple(graph[op.inputs[1]].shape) and op.type == "ADD":
        raise ModelError("power-of-two int16 ADD does not broadcast in LiteRT (set pot_scale_int16 false)")


def _power_of_two_shifts(op, graph):
    """The input shifts of add.cc / sub.cc's power-of-two int16 path, or None when it does not apply:
    the op asks for it (pot_scale_int16, the schema default) and every scale is a power of two."""
    if not op.options.get("pot_scale_int16", True):
        return None
    logs = [checked_log2(graph[name].quant.scale[0]) for name in (op.inputs[0], op.inputs[1], op.outputs[0])]
    if not all(is_power for _, is_power in logs):
        return None
    output_log2 = logs[2][0]
    return logs[0][0] - output_log2, logs[1][0] - output_log2


def _require_output_multiplier_below_one(op, graph):
    """The general int16 path rescales the int32 sum by 2 max(s1, s2) / (2^15 s_out); LiteRT's add.cc
    aborts when that is not below one, and sub.cc then right-shifts by a negative amount (undefined in
    C), so such a file has no reference result to give."""
    scales = [np.float32(graph[name].quant.scale[0]) for name in (op.inputs[0], op.inputs[1], op.outputs[0])]
    twice_max_input_scale = 2.0 * np.float64(max(scales[0], scales[1]))
    if twice_max_input_scale / np.float64(np.float32((1 << 15) * scales[2])) >= 1.0:
        raise ModelError(f"int16 {op.type} output scale {scales[2]:g} is too fine for input scales "
                         f"{scales[0]:g}, {scales[1]:g} (2 * max input scale must be below 2^15 * output scale)")


def _prepare_add_sub_int16(op, graph):
    """int16 ADD/SUB. With general scales, the int8 arithmetic with 15 bits of headroom. With
    pot_scale_int16 and power-of-two scales (the LSTM path), one input is rounding-divided by its
    power of two and the two are added (or subtracted) in fixed point, then clamped."""
    shifts = _power_of_two_shifts(op, graph)
    if shifts is None:
        return _prepare_add_sub_int(op, graph)
    shift_1, shift_2 = shifts
    output_scale = graph[op.outputs[0]].quant.scale[0]
    activation_min, activation_max = activation_range(op, output_scale, 0, np.int16)
    subtract = op.type == "SUB"

    def add_sub_int16_power_of_two(a, b):
        scaled_1 = rounding_divide_by_pot(a, -shift_1).astype(np.int64)
        scaled_2 = rounding_divide_by_pot(b, -shift_2).astype(np.int64)
        raw = scaled_1 - scaled_2 if subtract else scaled_1 + scaled_2
        return saturate(raw, activation_min, activation_max, np.int16)

    return add_sub_int16_power_of_two


def _prepare_mul_int16(op, graph):
    """int16 MUL: reference_integer_ops::Mul on symmetric inputs, the int32 product (at most 2^30)
    requantized by s1 * s2 / s_out as the int8 kernel does."""
    return _prepare_mul_int(op, graph)


def _prepare_max_min_int16(op, graph):
    """MAXIMUM/MINIMUM compare the stored integers (inputs and output share params)."""
    return np.maximum if op.type == "MAXIMUM" else np.minimum


_INT16_PREPARES = {
    "ADD": _prepare_add_sub_int16,
    "SUB": _prepare_add_sub_int16,
    "MUL": _prepare_mul_int16,
    "MAXIMUM": _prepare_max_min_int16,
    "MINIMUM": _prepare_max_min_int16,
}


_INTEGER_PREPARES = {
    "ADD": _prepare_add_sub_int,
    "SUB": _prepare_add_sub_int,
    "MUL": _prepare_mul_int,
    "SQUARED_DIFFERENCE": _prepare_squared_difference_int,
    "MAXIMUM": _prepare_max_min_int,
    "MINIMUM": _prepare_max_min_int,
}


# -- SELECT_V2 ---------------------------------------------------------------------------------------

@register("SELECT_V2")
def prepare_select_v2(op, graph):
    """condition ? x : y, broadcasting all three. It only picks stored values, so the int8 form is
    the same (x, y and the output share one scale and zero point, as the quantizer gives them)."""
    x, y, out = graph[op.inputs[1]], graph[op.inputs[2]], graph[op.outputs[0]]
    if x.dtype != y.dtype or x.dtype != out.dtype:
        raise ModelError(f"op {op}: x ({x.dtype}), y ({y.dtype}) and output ({out.dtype}) must have one type")
    if out.quant is not None and not (x.quant == y.quant == out.quant):
        raise ModelError(f"op {op}: quantized x, y and output must share their scale and zero point")
    if graph[op.inputs[0]].dtype != np.bool_:
        raise ModelError(f"op {op}: the condition must be bool")
    return np.where

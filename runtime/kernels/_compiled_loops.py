"""The compiled loops behind ``runtime.kernels.compiled`` (numba). Importing this module imports
numba; ``compiled`` does so only when a model has an op that uses one of these loops."""
import numba
import numpy as np


_jit = numba.njit(cache=True, nogil=True)
_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


@numba.njit(cache=True, inline="always")
def _wrap_int32(x):
    return ((x - _INT32_MIN) & 0xFFFFFFFF) + _INT32_MIN


@numba.njit(cache=True, inline="always")
def _multiply_by_quantized_multiplier(x, multiplier, shift):
    """TFLite's double-rounding MultiplyByQuantizedMultiplier on int64 scalars holding int32s
    (runtime.fixedpoint._multiply_double_rounding, one element)."""
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    a = _wrap_int32(x << left)
    if a == _INT32_MIN and multiplier == _INT32_MIN:
        high = _INT32_MAX
    else:
        product = a * multiplier
        total = product + ((1 << 30) if product >= 0 else (1 - (1 << 30)))
        # C division truncates toward zero.
        high = (total >> 31) if total >= 0 else -((-total) >> 31)
    mask = (1 << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if remainder > threshold else 0)


@_jit
def requantize_rows(acc, constant_term, multipliers, shifts, output_offset, low, high, out):
    """out[r, c] = clamp(MBQM(acc[r, c] + constant_term[c], M[c], s[c]) + output_offset):
    the end of every per-channel int8 conv; ``acc`` holds exact integers (a float GEMM's)."""
    rows, channels = acc.shape
    for r in range(rows):
        for c in range(channels):
            x = np.int64(acc[r, c]) + constant_term[c]
            value = _multiply_by_quantized_multiplier(x, multipliers[c], shifts[c]) + output_offset
            out[r, c] = min(max(value, low), high)
    return out


@_jit
def requantize_rows_folded(acc, scaled_multiplier, bias_term, threshold, correction, total_shift, low, high, out):
    """requantize.folded_requantizer's numpy passes in one: out[r, c] = clamp((t - [t < T[c]] C[c])
    >> S[c]) with t = acc[r, c] * M'[c] + K[c] (the per-channel constants fold_requantization made)."""
    rows, channels = acc.shape
    for r in range(rows):
        for c in range(channels):
            t = np.int64(acc[r, c]) * scaled_multiplier[c] + bias_term[c]
            if t < threshold[c]:
                t -= correction[c]
            value = t >> total_shift[c]
            out[r, c] = min(max(value, low), high)
    return out


@_jit
def bias_clamp(out, bias, low, high):
    """out[r, c] = min(max(out[r, c] + bias[c], low), high) in place (no bias when it is empty):
    a float GEMM's epilogue in one pass instead of an add and a clip."""
    rows, channels = out.shape
    if bias.size:
        for r in range(rows):
            for c in range(channels):
                out[r, c] = min(max(out[r, c] + bias[c], low), high)
    else:
        for r in range(rows):
            for c in range(channels):
                out[r, c] = min(max(out[r, c], low), high)
    return out


@_jit
def requantize_rows_float_scale(acc, constant_term, scales, output_offset, low, high, out):
    """LiteRT's reference int8 FULLY_CONNECTED ending: round(double(acc + constant_term[c]) *
    scale[c]) with ties away from zero, cast as x86-64 casts a double to int32, + output_offset,
    clamped (fully_connected.py's numpy twin; ``scales`` has one entry or one per channel)."""
    rows, channels = acc.shape
    per_channel = scales.size > 1
    for r in range(rows):
        for c in range(channels):
            value = np.float64(np.int64(acc[r, c]) + constant_term[c]) * scales[c if per_channel else 0]
            rounded = np.rint(value)
            whole = np.trunc(value)
            if abs(value - whole) == 0.5:
                rounded = whole + (1.0 if value > 0 else -1.0)
            if rounded > -2147483649.0 and rounded < 2147483648.0:
                integer = np.int64(rounded)
            else:
                integer = np.int64(_INT32_MIN)
            out[r, c] = min(max(integer + output_offset, low), high)
    return out


@_jit
def quantize_float(x, scale, zero_point, low, high, out):
    """reference_ops::AffineQuantize on flat arrays: round(float32(x) / scale) in float32, ties
    away from zero, + zero_point, clamped (quantize_ops.py's numpy twin)."""
    for i in range(x.size):
        value = np.float32(x[i]) / scale
        rounded = np.rint(value)
        whole = np.trunc(value)
        if abs(value - whole) == 0.5:
            rounded = whole + (np.float32(1.0) if value > 0 else np.float32(-1.0))
        # static_cast<int32_t> as on x86-64 (NaN and values outside int32 give INT32_MIN), + zero_point
        # wrapping in int32
        whole = np.int64(rounded) if rounded >= -2147483648.0 and rounded < 2147483648.0 else np.int64(_INT32_MIN)
        total = (whole + zero_point + 2147483648) % 4294967296 - 2147483648
        out[i] = min(max(total, low), high)
    return out


@_jit
def im2col(x, k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left, out_h, out_w, fill, columns):
    """columns[(n, oy, ox), (ky, kx, c)] = x[n, iy, ix, c] (converted to the columns' dtype),
    or ``fill`` where the tap falls on padding: conv.py's im2col in one pass."""
    n_batch, in_h, in_w, in_c = x.shape
    row = 0
    for n in range(n_batch):
        for oy in range(out_h):
            for ox in range(out_w):
                col = 0
                for ky in range(k_h):
                    iy = oy * stride_h - pad_top + ky * dil_h
                    for kx in range(k_w):
                        ix = ox * stride_w - pad_left + kx * dil_w
                        if iy < 0 or iy >= in_h or ix < 0 or ix >= in_w:
                            for c in range(in_c):
                                columns[row, col + c] = fill
                        else:
                            for c in range(in_c):
                                columns[row, col + c] = x[n, iy, ix, c]
                        col += in_c
                row += 1
    return columns


@_jit
def depthwise_float(x, filters, bias, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left,
                    multiplier, low, high, out):
    """out[n, oy, ox, c*M+m] = sum over taps inside the input of x * w, then + bias, clamped
    to [low, high] (the fused activation; +-inf for none). x [N, H, W, C], filters [KH, KW, C*M]."""
    n_batch, in_h, in_w, in_c = x.shape
    _, out_h, out_w, out_c = out.shape
    k_h, k_w = filters.shape[0], filters.shape[1]
    acc = np.empty(out_c, np.float32)
    has_bias = bias.size > 0
    three_by_three = k_h == 3 and k_w == 3 and multiplier == 1 and dil_h == 1 and dil_w == 1
    for n in range(n_batch):
        for oy in range(out_h):
            iy0 = oy * stride_h - pad_top
            rows_inside = iy0 >= 0 and iy0 + 2 < in_h
            for ox in range(out_w):
                ix0 = ox * stride_w - pad_left
                target = out[n, oy, ox]
                if three_by_three and rows_inside and ix0 >= 0 and ix0 + 2 < in_w:
                    # A 3x3 window wholly inside (most pixels): the nine products summed in the
                    # same (ky, kx) order in one pass over the channels, with no accumulator array.
                    a0, a1, a2 = x[n, iy0, ix0], x[n, iy0, ix0 + 1], x[n, iy0, ix0 + 2]
                    b0, b1, b2 = x[n, iy0 + 1, ix0], x[n, iy0 + 1, ix0 + 1], x[n, iy0 + 1, ix0 + 2]
                    c0, c1, c2 = x[n, iy0 + 2, ix0], x[n, iy0 + 2, ix0 + 1], x[n, iy0 + 2, ix0 + 2]
                    w00, w01, w02 = filters[0, 0], filters[0, 1], filters[0, 2]
                    w10, w11, w12 = filters[1, 0], filters[1, 1], filters[1, 2]
                    w20, w21, w22 = filters[2, 0], filters[2, 1], filters[2, 2]
                    for c in range(out_c):
                        total = a0[c] * w00[c]
                        total += a1[c] * w01[c]
                        total += a2[c] * w02[c]
                        total += b0[c] * w10[c]
                        total += b1[c] * w11[c]
                        total += b2[c] * w12[c]
                        total += c0[c] * w20[c]
                        total += c1[c] * w21[c]
                        total += c2[c] * w22[c]
                        if has_bias:
                            total += bias[c]
                        target[c] = min(max(total, low), high)
                    continue
                acc[:] = 0.0
                for ky in range(k_h):
                    iy = iy0 + ky * dil_h
                    if iy < 0 or iy >= in_h:
                        continue
                    for kx in range(k_w):
                        ix = ix0 + kx * dil_w
                        if ix < 0 or ix >= in_w:
                            continue
                        if multiplier == 1:
                            for c in range(out_c):
                                acc[c] += x[n, iy, ix, c] * filters[ky, kx, c]
                        else:
                            for c in range(out_c):
                                acc[c] += x[n, iy, ix, c // multiplier] * filters[ky, kx, c]
                for c in range(out_c):
                    value = acc[c] + bias[c] if has_bias else acc[c]
                    target[c] = min(max(value, low), high)
    return out


@numba.njit(cache=True, inline="always")
def _depthwise_int8_pixel(x, filters, input_offset, n, iy0, ix0, dil_h, dil_w, multiplier, three_by_three, acc):
    """acc[c] = sum over the window taps inside the input of w * (x + input_offset), int32,
    for the window whose top-left input position is (iy0, ix0)."""
    _, in_h, in_w, _ = x.shape
    k_h, k_w, out_c = filters.shape
    if three_by_three and iy0 >= 0 and iy0 + 2 < in_h and ix0 >= 0 and ix0 + 2 < in_w:
        # A 3x3 window wholly inside: the nine products in one pass over the channels.
        a0, a1, a2 = x[n, iy0, ix0], x[n, iy0, ix0 + 1], x[n, iy0, ix0 + 2]
        b0, b1, b2 = x[n, iy0 + 1, ix0], x[n, iy0 + 1, ix0 + 1], x[n, iy0 + 1, ix0 + 2]
        c0, c1, c2 = x[n, iy0 + 2, ix0], x[n, iy0 + 2, ix0 + 1], x[n, iy0 + 2, ix0 + 2]
        w00, w01, w02 = filters[0, 0], filters[0, 1], filters[0, 2]
        w10, w11, w12 = filters[1, 0], filters[1, 1], filters[1, 2]
        w20, w21, w22 = filters[2, 0], filters[2, 1], filters[2, 2]
        for c in range(out_c):
            total = (np.int32(a0[c]) + input_offset) * w00[c]
            total += (np.int32(a1[c]) + input_offset) * w01[c]
            total += (np.int32(a2[c]) + input_offset) * w02[c]
            total += (np.int32(b0[c]) + input_offset) * w10[c]
            total += (np.int32(b1[c]) + input_offset) * w11[c]
            total += (np.int32(b2[c]) + input_offset) * w12[c]
            total += (np.int32(c0[c]) + input_offset) * w20[c]
            total += (np.int32(c1[c]) + input_offset) * w21[c]
            total += (np.int32(c2[c]) + input_offset) * w22[c]
            acc[c] = total
        return
    acc[:] = 0
    for ky in range(k_h):
        iy = iy0 + ky * dil_h
        if iy < 0 or iy >= in_h:
            continue
        for kx in range(k_w):
            ix = ix0 + kx * dil_w
            if ix < 0 or ix >= in_w:
                continue
            if multiplier == 1:
                for c in range(out_c):
                    acc[c] += (np.int32(x[n, iy, ix, c]) + input_offset) * filters[ky, kx, c]
            else:
                for c in range(out_c):
                    acc[c] += (np.int32(x[n, iy, ix, c // multiplier]) + input_offset) * filters[ky, kx, c]


@_jit
def depthwise_int8(x, filters, bias, input_offset, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left,
                   multiplier, multipliers, shifts, output_offset, low, high, out):
    """reference_integer_ops::DepthwiseConvPerChannel: acc = sum w * (x + input_offset) over the
    taps inside the input, + bias, requantized per channel, + output_offset, clamped."""
    n_batch, out_h, out_w, out_c = out.shape
    acc = np.empty(out_c, np.int32)
    has_bias = bias.size > 0
    three_by_three = filters.shape[0] == 3 and filters.shape[1] == 3 and multiplier == 1 and dil_h == 1 and dil_w == 1
    for n in range(n_batch):
        for oy in range(out_h):
            for ox in range(out_w):
                _depthwise_int8_pixel(x, filters, input_offset, n, oy * stride_h - pad_top, ox * stride_w - pad_left,
                                      dil_h, dil_w, multiplier, three_by_three, acc)
                target = out[n, oy, ox]
                for c in range(out_c):
                    total64 = np.int64(acc[c]) + (bias[c] if has_bias else 0)
                    value = _multiply_by_quantized_multiplier(total64, multipliers[c], shifts[c]) + output_offset
                    target[c] = min(max(value, low), high)
    return out


@_jit
def depthwise_int8_folded(x, filters, input_offset, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left,
                          multiplier, scaled_multiplier, bias_term, threshold, correction, total_shift,
                          low, high, out):
    """``depthwise_int8`` with the bias and the requantization in the folded form of
    requantize.fold_requantization (branch-free per channel, so it vectorizes)."""
    n_batch, out_h, out_w, out_c = out.shape
    acc = np.empty(out_c, np.int32)
    three_by_three = filters.shape[0] == 3 and filters.shape[1] == 3 and multiplier == 1 and dil_h == 1 and dil_w == 1
    for n in range(n_batch):
        for oy in range(out_h):
            for ox in range(out_w):
                _depthwise_int8_pixel(x, filters, input_offset, n, oy * stride_h - pad_top, ox * stride_w - pad_left,
                                      dil_h, dil_w, multiplier, three_by_three, acc)
                target = out[n, oy, ox]
                for c in range(out_c):
                    t = np.int64(acc[c]) * scaled_multiplier[c] + bias_term[c]
                    if t < threshold[c]:
                        t -= correction[c]
                    target[c] = min(max(t >> total_shift[c], low), high)
    return out


@_jit
def add_sub_int(a, b, input1_offset, input2_offset, left_shift, m1, s1, m2, s2, m_out, s_out,
                subtract, output_offset, low, high, out):
    """TFLite's quantized ADD/SUB on same-shape flat inputs (elementwise.py's numpy twin)."""
    for i in range(a.size):
        scaled_1 = _multiply_by_quantized_multiplier((np.int64(a[i]) + input1_offset) << left_shift, m1, s1)
        scaled_2 = _multiply_by_quantized_multiplier((np.int64(b[i]) + input2_offset) << left_shift, m2, s2)
        raw = scaled_1 - scaled_2 if subtract else scaled_1 + scaled_2
        value = _multiply_by_quantized_multiplier(raw, m_out, s_out) + output_offset
        out[i] = min(max(value, low), high)
    return out


@_jit
def max_pool(x, k_h, k_w, stride_h, stride_w, pad_top, pad_left, low, high, out):
    """Max over the window positions inside the input, clamped to [low, high]; float or int."""
    n_batch, in_h, in_w, channels = x.shape
    _, out_h, out_w, _ = out.shape
    for n in range(n_batch):
        for oy in range(out_h):
            y0 = oy * stride_h - pad_top
            for ox in range(out_w):
                x0 = ox * stride_w - pad_left
                first = True
                for ky in range(k_h):
                    iy = y0 + ky
                    if iy < 0 or iy >= in_h:
                        continue
                    for kx in range(k_w):
                        ix = x0 + kx
                        if ix < 0 or ix >= in_w:
                            continue
                        if first:
                            for c in range(channels):
                                out[n, oy, ox, c] = x[n, iy, ix, c]
                            first = False
                        else:
                            for c in range(channels):
                                value = x[n, iy, ix, c]
                                if value > out[n, oy, ox, c]:
                                    out[n, oy, ox, c] = value
                for c in range(channels):
                    out[n, oy, ox, c] = min(max(out[n, oy, ox, c], low), high)
    return out

/* int8 ADD/SUB of same-shape inputs and int8 MAX_POOL_2D, as TFLite's reference kernels compute them
 * (runtime/kernels/elementwise.py and pooling.py hold the numpy forms these equal); QUANTIZE is in
 * quantize.c. Plain C: the compiler vectorizes what it can. */
#include "native.h"

/* TFLite's MultiplyByQuantizedMultiplier (double rounding) on an int32: x * 2^left wraps in int32,
 * SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT (ties away from zero). Branch-free:
 * the signs of residual sums are random, and mispredicted branches cost more than the arithmetic. */
static inline __attribute__((always_inline)) int32_t multiply_by_quantized_multiplier(int32_t x, int32_t multiplier,
                                                                                     int32_t left, int32_t right) {
    const int32_t a = (int32_t)((uint32_t)x << left);
    const int64_t product = (int64_t)a * multiplier;
    const int64_t negative = product >> 63; /* all ones when product < 0 */
    const int64_t nudged = product + ((int64_t)1 << 30) + (negative & (1 - ((int64_t)1 << 31)));
    /* C's truncating division by 2^31: add 2^31 - 1 first when negative */
    int32_t high = (int32_t)((nudged + ((nudged >> 63) & (((int64_t)1 << 31) - 1))) >> 31);
    /* the one overflow, INT32_MIN * INT32_MIN, saturates */
    high = (a == INT32_MIN && multiplier == INT32_MIN) ? INT32_MAX : high;
    const int32_t mask = (int32_t)(((int64_t)1 << right) - 1);
    const int32_t threshold = (mask >> 1) + (int32_t)((uint32_t)high >> 31);
    return (high >> right) + ((high & mask) > threshold);
}

static inline __attribute__((always_inline)) void add_int8_body(const int8_t *restrict a, const int8_t *restrict b,
                                                               size_t count, const edgeq_add_params *params,
                                                               int8_t *restrict out) {
    const edgeq_add_params p = *params; /* a local copy: `out` may not alias it, so the loop vectorizes */
    const int32_t left_1 = p.input1_shift > 0 ? p.input1_shift : 0, right_1 = p.input1_shift > 0 ? 0 : -p.input1_shift;
    const int32_t left_2 = p.input2_shift > 0 ? p.input2_shift : 0, right_2 = p.input2_shift > 0 ? 0 : -p.input2_shift;
    const int32_t left_o = p.output_shift > 0 ? p.output_shift : 0, right_o = p.output_shift > 0 ? 0 : -p.output_shift;
    const int32_t sign = p.subtract ? -1 : 1;
    for (size_t i = 0; i < count; i++) {
        const int32_t shifted_1 = (int32_t)((uint32_t)((int32_t)a[i] + p.input1_offset) << p.left_shift);
        const int32_t shifted_2 = (int32_t)((uint32_t)((int32_t)b[i] + p.input2_offset) << p.left_shift);
        const int32_t scaled_1 = multiply_by_quantized_multiplier(shifted_1, p.input1_multiplier, left_1, right_1);
        const int32_t scaled_2 = multiply_by_quantized_multiplier(shifted_2, p.input2_multiplier, left_2, right_2);
        const int32_t raw = scaled_1 + sign * scaled_2;
        int32_t value = multiply_by_quantized_multiplier(raw, p.output_multiplier, left_o, right_o) + p.output_offset;
        value = value < p.low ? p.low : (value > p.high ? p.high : value);
        out[i] = (int8_t)value;
    }
}

static void add_int8_portable(const int8_t *a, const int8_t *b, size_t count, const edgeq_add_params *p, int8_t *out) {
    add_int8_body(a, b, count, p, out);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2"))) static void add_int8_avx2(const int8_t *a, const int8_t *b, size_t count,
                                                          const edgeq_add_params *p, int8_t *out) {
    add_int8_body(a, b, count, p, out);
}

__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) static void add_int8_avx512(
    const int8_t *a, const int8_t *b, size_t count, const edgeq_add_params *p, int8_t *out) {
    add_int8_body(a, b, count, p, out);
}
#endif

void edgeq_add_int8(int isa, const int8_t *a, const int8_t *b, size_t count, const edgeq_add_params *p,
                    int8_t *out) {
    const size_t done = edgeq_add_int8_vectors(isa, a, b, count, p, out); /* add_int8_simd.c; the tail here */
    a += done, b += done, out += done, count -= done;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (isa == EDGEQ_ISA_AVX512VNNI && edgeq_cpu_supports(isa)) {
        add_int8_avx512(a, b, count, p, out);
        return;
    }
    if ((isa == EDGEQ_ISA_AVX2 || isa == EDGEQ_ISA_AVXVNNI) && edgeq_cpu_supports(isa)) {
        add_int8_avx2(a, b, count, p, out);
        return;
    }
#endif
    (void)isa;
    add_int8_portable(a, b, count, p, out);
}

void edgeq_max_pool_int8(const edgeq_conv_geometry *g, const int8_t *x, int32_t low, int32_t high, int8_t *out) {
    const int channels = g->in_c;
    for (int n = 0; n < g->batch; n++) {
        const int8_t *image = x + (size_t)n * g->in_h * g->in_w * channels;
        for (int oy = 0; oy < g->out_h; oy++)
            for (int ox = 0; ox < g->out_w; ox++) {
                int8_t *target = out + (((size_t)n * g->out_h + oy) * g->out_w + ox) * channels;
                int first = 1;
                for (int ky = 0; ky < g->k_h; ky++) {
                    const int iy = oy * g->stride_h - g->pad_top + ky;
                    if (iy < 0 || iy >= g->in_h) continue;
                    for (int kx = 0; kx < g->k_w; kx++) {
                        const int ix = ox * g->stride_w - g->pad_left + kx;
                        if (ix < 0 || ix >= g->in_w) continue;
                        const int8_t *src = image + ((size_t)iy * g->in_w + ix) * channels;
                        if (first) {
                            for (int c = 0; c < channels; c++) target[c] = src[c];
                            first = 0;
                        } else {
                            for (int c = 0; c < channels; c++) target[c] = src[c] > target[c] ? src[c] : target[c];
                        }
                    }
                }
                if (first) /* a window entirely in the padding: max of nothing, as numpy's path has it */
                    for (int c = 0; c < channels; c++) target[c] = (int8_t)low;
                for (int c = 0; c < channels; c++)
                    target[c] = (int8_t)(target[c] < low ? low : (target[c] > high ? high : target[c]));
            }
    }
}

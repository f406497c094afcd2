/* float32 <-> int8 QUANTIZE and DEQUANTIZE with a per-tensor scale, as TFLite's reference kernels
 * (runtime/kernels/quantize_ops.py holds the numpy forms these equal), 16 or 8 values per step.
 *
 * QUANTIZE: q = round(x / scale) in float32 (ties away from zero), + zero point, clamped. The reference
 * kernel's static_cast<int32_t> gives NaN and values outside int32 INT32_MIN on x86-64, and the zero
 * point is added wrapping in int32 before the clamp; every machine here gives those integers, and the
 * vector forms give those lanes that same constant. (-2^31 itself casts to INT32_MIN, so it joins
 * them; the largest float below 2^31 plus a zero point <= 127 cannot wrap.) The rounding is exact in vectors: trunc(q) plus the sign where the
 * dropped fraction is at least one half; |q| >= 2^23 is already whole.
 * DEQUANTIZE: float((double)(x - zero_point) * (double)scale), one double product rounded once to
 * float, the same in every lane as in C. */
#include <math.h>

#include "native.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#define INT32_EDGE 2147483648.0f /* 2^31: from it on (and at -2^31) the cast gives INT32_MIN */

static inline int8_t quantize_one(float x, float scale, int32_t zero_point, int32_t low, int32_t high) {
    const float rounded = roundf(x / scale);
    const int32_t whole = (rounded > -INT32_EDGE && rounded < INT32_EDGE) ? (int32_t)rounded : INT32_MIN;
    const int32_t value = (int32_t)((uint32_t)whole + (uint32_t)zero_point);
    return (int8_t)(value < low ? low : (value > high ? high : value));
}

static void quantize_portable(const float *x, size_t count, float scale, int32_t zero_point, int32_t low,
                              int32_t high, int8_t *out) {
    for (size_t i = 0; i < count; i++) out[i] = quantize_one(x[i], scale, zero_point, low, high);
}

static void dequantize_portable(const int8_t *x, size_t count, double scale, int32_t zero_point, float *out) {
    for (size_t i = 0; i < count; i++) out[i] = (float)((double)((int32_t)x[i] - zero_point) * scale);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

/* Clamping in float before the conversion is exact: the rounded value is whole, and low - zero_point
 * and high - zero_point are small integers. */
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) static void quantize_avx512(const float *x, size_t count,
                                                                                float scale, int32_t zero_point,
                                                                                int32_t low, int32_t high,
                                                                                int8_t *out) {
    const __m512 divisor = _mm512_set1_ps(scale), half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    const __m512 edge = _mm512_set1_ps(INT32_EDGE), minus_edge = _mm512_set1_ps(-INT32_EDGE);
    const __m512 lowest = _mm512_set1_ps((float)((int64_t)low - zero_point));
    const __m512 highest = _mm512_set1_ps((float)((int64_t)high - zero_point));
    const __m512i offset = _mm512_set1_epi32(zero_point);
    /* what the reference gives NaN and out-of-range values: INT32_MIN + zero point, wrapped, clamped */
    const __m512i beyond = _mm512_set1_epi32(quantize_one(NAN, 1.0f, zero_point, low, high));
    const __m512 sign_bit = _mm512_set1_ps(-0.0f);
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        const __m512 q = _mm512_div_ps(_mm512_loadu_ps(x + i), divisor);
        const __m512 whole = _mm512_roundscale_ps(q, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        const __m512 fraction = _mm512_abs_ps(_mm512_sub_ps(q, whole));
        const __mmask16 up = _mm512_cmp_ps_mask(fraction, half, _CMP_GE_OQ);
        const __m512 step = _mm512_or_ps(one, _mm512_and_ps(q, sign_bit)); /* +-1 with q's sign */
        __m512 rounded = _mm512_mask_add_ps(whole, up, whole, step);
        const __mmask16 inside = _mm512_cmp_ps_mask(rounded, minus_edge, _CMP_GT_OQ) &
                                 _mm512_cmp_ps_mask(rounded, edge, _CMP_LT_OQ);
        rounded = _mm512_min_ps(_mm512_max_ps(rounded, lowest), highest);
        __m512i value = _mm512_add_epi32(_mm512_cvttps_epi32(rounded), offset);
        value = _mm512_mask_blend_epi32(inside, beyond, value);
        _mm_storeu_si128((__m128i *)(out + i), _mm512_cvtepi32_epi8(value));
    }
    quantize_portable(x + i, count - i, scale, zero_point, low, high, out + i);
}

__attribute__((target("avx2"))) static void quantize_avx2(const float *x, size_t count, float scale,
                                                          int32_t zero_point, int32_t low, int32_t high,
                                                          int8_t *out) {
    const __m256 divisor = _mm256_set1_ps(scale), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256 edge = _mm256_set1_ps(INT32_EDGE), minus_edge = _mm256_set1_ps(-INT32_EDGE);
    const __m256 lowest = _mm256_set1_ps((float)((int64_t)low - zero_point));
    const __m256 highest = _mm256_set1_ps((float)((int64_t)high - zero_point));
    const __m256i offset = _mm256_set1_epi32(zero_point);
    const __m256i beyond = _mm256_set1_epi32(quantize_one(NAN, 1.0f, zero_point, low, high));
    const __m256 sign_bit = _mm256_set1_ps(-0.0f), magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        const __m256 q = _mm256_div_ps(_mm256_loadu_ps(x + i), divisor);
        const __m256 whole = _mm256_round_ps(q, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        const __m256 fraction = _mm256_and_ps(_mm256_sub_ps(q, whole), magnitude);
        const __m256 up = _mm256_cmp_ps(fraction, half, _CMP_GE_OQ);
        const __m256 step = _mm256_and_ps(up, _mm256_or_ps(one, _mm256_and_ps(q, sign_bit)));
        __m256 rounded = _mm256_add_ps(whole, step);
        const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(rounded, minus_edge, _CMP_GT_OQ),
                                            _mm256_cmp_ps(rounded, edge, _CMP_LT_OQ));
        rounded = _mm256_min_ps(_mm256_max_ps(rounded, lowest), highest);
        __m256i value = _mm256_add_epi32(_mm256_cvttps_epi32(rounded), offset);
        value = _mm256_blendv_epi8(beyond, value, _mm256_castps_si256(inside));
        /* 8 int32 in [-128, 127] -> 8 bytes */
        const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(value), _mm256_extracti128_si256(value, 1));
        _mm_storel_epi64((__m128i *)(out + i), _mm_packs_epi16(words, words));
    }
    quantize_portable(x + i, count - i, scale, zero_point, low, high, out + i);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) static void dequantize_avx512(const int8_t *x, size_t count,
                                                                                  double scale, int32_t zero_point,
                                                                                  float *out) {
    const __m512d factor = _mm512_set1_pd(scale);
    const __m512i offset = _mm512_set1_epi32(zero_point);
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        const __m512i v = _mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(x + i))), offset);
        const __m256 lo = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(v)), factor));
        const __m256 hi = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(v, 1)), factor));
        _mm256_storeu_ps(out + i, lo);
        _mm256_storeu_ps(out + i + 8, hi);
    }
    dequantize_portable(x + i, count - i, scale, zero_point, out + i);
}

__attribute__((target("avx2"))) static void dequantize_avx2(const int8_t *x, size_t count, double scale,
                                                            int32_t zero_point, float *out) {
    const __m256d factor = _mm256_set1_pd(scale);
    const __m128i offset = _mm_set1_epi32(zero_point);
    size_t i = 0;
    for (; i + 4 <= count; i += 4) {
        int32_t four;
        __builtin_memcpy(&four, x + i, 4);
        const __m128i v = _mm_sub_epi32(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(four)), offset);
        _mm_storeu_ps(out + i, _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtepi32_pd(v), factor)));
    }
    dequantize_portable(x + i, count - i, scale, zero_point, out + i);
}
#endif

void edgeq_quantize_to_int8(int isa, const float *x, size_t count, float scale, int32_t zero_point, int32_t low,
                            int32_t high, int8_t *out) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    /* the float clamp needs the bounds' distance to the zero point exact in float */
    const int small = low >= -(1 << 20) && high <= (1 << 20) && zero_point > -(1 << 20) && zero_point < (1 << 20);
    if (small && isa == EDGEQ_ISA_AVX512VNNI && edgeq_cpu_supports(isa)) {
        quantize_avx512(x, count, scale, zero_point, low, high, out);
        return;
    }
    if (small && (isa == EDGEQ_ISA_AVX2 || isa == EDGEQ_ISA_AVXVNNI) && edgeq_cpu_supports(isa)) {
        quantize_avx2(x, count, scale, zero_point, low, high, out);
        return;
    }
#endif
    (void)isa;
    quantize_portable(x, count, scale, zero_point, low, high, out);
}

void edgeq_dequantize_int8(int isa, const int8_t *x, size_t count, double scale, int32_t zero_point, float *out) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (isa == EDGEQ_ISA_AVX512VNNI && edgeq_cpu_supports(isa)) {
        dequantize_avx512(x, count, scale, zero_point, out);
        return;
    }
    if ((isa == EDGEQ_ISA_AVX2 || isa == EDGEQ_ISA_AVXVNNI) && edgeq_cpu_supports(isa)) {
        dequantize_avx2(x, count, scale, zero_point, out);
        return;
    }
#endif
    (void)isa;
    dequantize_portable(x, count, scale, zero_point, out);
}

/* The folded output stage (native.h) on AVX512, 16 columns per step in 32-bit lanes.
 *
 * Where a column's folded multiplier fits in int32 (it is TFLite's Q31 multiplier, shifted left only
 * for multipliers above one), acc * multiplier is one vpmuldq on the even lanes and one on the odd
 * ones, instead of a 64-bit vpmullq (three micro-ops on one port) per 8 columns: the products, the
 * bias, the correction and the shift stay int64, exactly as the scalar form, and only the final
 * (clamped) value returns to 32 bits. The per-column constants are split into even and odd columns
 * once per column group and reused by every row. A group with a wider multiplier runs the scalar
 * form. */
#include "native.h"
#include "output_stage.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define STAGE512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))

typedef struct {
    __m512i multiplier, bias, threshold, correction, shift;
} column_constants;

/* Columns c, c+2, .., c+14 (even) or c+1, .., c+15 (odd) of a per-column int64 array, 0 past count. */
static inline STAGE512 __m512i split_columns(const int64_t *values, __mmask8 low_mask, __mmask8 high_mask,
                                             __m512i order) {
    const __m512i low = _mm512_maskz_loadu_epi64(low_mask, values);
    const __m512i high = _mm512_maskz_loadu_epi64(high_mask, values + 8);
    return _mm512_permutex2var_epi64(low, order, high);
}

static inline STAGE512 column_constants constants_for(const edgeq_output_stage *stage, int c, __mmask8 low_mask,
                                                      __mmask8 high_mask, __m512i order) {
    column_constants k;
    k.multiplier = split_columns(stage->multiplier + c, low_mask, high_mask, order);
    k.bias = split_columns(stage->bias + c, low_mask, high_mask, order);
    k.threshold = split_columns(stage->threshold + c, low_mask, high_mask, order);
    k.correction = split_columns(stage->correction + c, low_mask, high_mask, order);
    k.shift = split_columns(stage->shift + c, low_mask, high_mask, order);
    return k;
}

/* acc lanes' low 32 bits (sign-extended by vpmuldq) times the column multipliers, then the folded form. */
static inline STAGE512 __m512i folded_lanes(__m512i acc, const column_constants *k) {
    __m512i t = _mm512_add_epi64(_mm512_mul_epi32(acc, k->multiplier), k->bias);
    t = _mm512_mask_sub_epi64(t, _mm512_cmplt_epi64_mask(t, k->threshold), t, k->correction);
    return _mm512_srav_epi64(t, k->shift);
}

int edgeq_stage_avx512_narrow(const edgeq_output_stage *stage, const int32_t *acc, int acc_stride, int rows,
                              int col0, int count, int8_t *out, size_t out_stride) STAGE512;

int edgeq_stage_avx512_narrow(const edgeq_output_stage *stage, const int32_t *acc, int acc_stride, int rows,
                              int col0, int count, int8_t *out, size_t out_stride) {
    if (stage->kind != EDGEQ_STAGE_FOLDED) return 0;
    const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
    const __m512i low = _mm512_set1_epi32(stage->low), high = _mm512_set1_epi32(stage->high);
    const __m512i int32_max = _mm512_set1_epi64(INT32_MAX);
    for (int j = 0; j < count; j += 16) {
        const int c = col0 + j, left = count - j;
        const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        const __mmask8 low_mask = (__mmask8)mask, high_mask = (__mmask8)(mask >> 8);
        const __m512i m_low = _mm512_maskz_loadu_epi64(low_mask, stage->multiplier + c);
        const __m512i m_high = _mm512_maskz_loadu_epi64(high_mask, stage->multiplier + c + 8);
        if (_mm512_cmpgt_epi64_mask(m_low, int32_max) | _mm512_cmpgt_epi64_mask(m_high, int32_max)) {
            const int width = left < 16 ? left : 16;
            for (int r = 0; r < rows; r++)
                output_stage_row(stage, acc + (size_t)r * acc_stride + j, c, width, out + r * out_stride + j);
            continue;
        }
        const column_constants k_even = constants_for(stage, c, low_mask, high_mask, even);
        const column_constants k_odd = constants_for(stage, c, low_mask, high_mask, odd);
        for (int r = 0; r < rows; r++) {
            const __m512i a = _mm512_maskz_loadu_epi32(mask, acc + (size_t)r * acc_stride + j);
            const __m512i value_even = folded_lanes(a, &k_even);
            const __m512i value_odd = folded_lanes(_mm512_srli_epi64(a, 32), &k_odd);
            /* each lane's value fits in int32 (|t| < 2^62, shift >= 31): odd ones move up into place */
            __m512i value = _mm512_mask_blend_epi32((__mmask16)0xAAAA, value_even, _mm512_slli_epi64(value_odd, 32));
            value = _mm512_min_epi32(_mm512_max_epi32(value, low), high);
            _mm512_mask_cvtepi32_storeu_epi8(out + r * out_stride + j, mask, value);
        }
    }
    return 1;
}
#endif

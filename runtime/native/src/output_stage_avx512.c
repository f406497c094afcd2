/* The folded output stage (native.h) on AVX512, 16 columns per step in 32-bit lanes.
 *
 * Where a column's folded multiplier fits in int32 (it is TFLite's Q31 multiplier, shifted left only
 * for multipliers above one), acc * multiplier is one vpmuldq on the even lanes and one on the odd
 * ones, instead of a 64-bit vpmullq (three micro-ops on one port) per 8 columns: the products, the
 * bias, the correction and the shift stay int64, exactly as the scalar form, and only the final
 * (clamped) value returns to 32 bits. The per-column constants are split into even and odd columns
 * once per column group and reused by every row. A group with a wider multiplier runs the scalar
 * form.
 *
 * Cheaper still, where prepare rearranged the constants (edgeq_stage_lanes_prepare, stage->lanes): with
 * u = floor(t / 2^31), the folded r = (t - C [t < T]) >> (31 + R) is (u - [u < T / 2^31]) >> R, since C is
 * 2^31 whenever R > 0 and T is a multiple of 2^31. u is the high half of 2t, which one unsigned vpmuludq
 * per lane pair gives from x + 2^31 (x ^ 0x80000000) times 2M' plus K2 = 2K - 2^32 M' (mod 2^64: the true
 * 2t fits int64), and one vpermt2d gathers the 16 high halves; the rest is 32-bit lanes, and a saturating
 * store is the clamp whenever the fused activation clamps to no less than int8's range. About 12 vector
 * micro-ops per 16 outputs instead of 18, on the two ports 512-bit operations use. */
#include "native.h"
#include "output_stage.h"

#include <string.h>

/* One group of 16 columns: 2M' of the even columns then of the odd ones (64-bit lanes, low halves read),
 * K2 of the even then the odd columns, then per column in order the limit (subtract one where u <= it)
 * and R. Columns past the count are zeros with a limit of INT32_MIN: they give 0 and are never stored. */
typedef struct {
    uint64_t doubled_multiplier[2][8];
    uint64_t doubled_bias[2][8];
    int32_t limit[16];
    int32_t shift[16];
} stage_lane_group;

size_t edgeq_stage_lanes_bytes(int count) { return ((size_t)count + 15) / 16 * sizeof(stage_lane_group); }

int edgeq_stage_lanes_prepare(const edgeq_output_stage *stage, int count, void *lanes) {
    if (stage->kind != EDGEQ_STAGE_FOLDED || sizeof(stage_lane_group) != EDGEQ_STAGE_LANE_GROUP_BYTES) return 0;
    const size_t groups = ((size_t)count + 15) / 16;
    stage_lane_group *out = (stage_lane_group *)lanes;
    memset(out, 0, groups * sizeof(stage_lane_group));
    for (size_t c = 0; c < groups * 16; c++) out[c / 16].limit[c % 16] = INT32_MIN;
    for (int c = 0; c < count; c++) {
        const int64_t multiplier = stage->multiplier[c], shift = stage->shift[c];
        const int64_t threshold = stage->threshold[c], correction = stage->correction[c];
        const int64_t right = shift - 31;
        if (multiplier < 0 || multiplier > INT32_MAX || right < 0 || right > 31) return 0;
        if (correction != (right > 0 ? ((int64_t)1 << 31) : 0)) return 0;
        stage_lane_group *group = out + c / 16;
        const int lane = c % 16, half = lane % 2, slot = lane / 2;
        group->doubled_multiplier[half][slot] = (uint64_t)multiplier * 2;
        group->doubled_bias[half][slot] = (uint64_t)stage->bias[c] * 2 - ((uint64_t)multiplier << 32);
        group->shift[lane] = (int32_t)right;
        if (right > 0) {
            /* t < T, T a multiple of 2^31, is u < T / 2^31, i.e. u <= T / 2^31 - 1; |u| < 2^31 - 1
             * (|t| < 2^62), so a limit beyond int32 clamps without changing the comparison. */
            if (threshold % ((int64_t)1 << 31) != 0) return 0;
            const int64_t limit = threshold / ((int64_t)1 << 31) - 1;
            group->limit[lane] = limit > INT32_MAX ? INT32_MAX : (limit < INT32_MIN ? INT32_MIN : (int32_t)limit);
        }
    }
    return 1;
}

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

typedef struct {
    __m512i m_even, m_odd, k_even, k_odd, limit, shift;
} lane_constants;

static inline STAGE512 lane_constants lane_constants_of(const stage_lane_group *group) {
    lane_constants k;
    k.m_even = _mm512_loadu_si512(group->doubled_multiplier[0]);
    k.m_odd = _mm512_loadu_si512(group->doubled_multiplier[1]);
    k.k_even = _mm512_loadu_si512(group->doubled_bias[0]);
    k.k_odd = _mm512_loadu_si512(group->doubled_bias[1]);
    k.limit = _mm512_loadu_si512(group->limit);
    k.shift = _mm512_loadu_si512(group->shift);
    return k;
}

/* 16 accumulators to their int32 results before the clamp. */
static inline STAGE512 __m512i lane_values(__m512i acc, const lane_constants *k) {
    const __m512i high_halves = _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
    const __m512i biased = _mm512_xor_si512(acc, _mm512_set1_epi32(INT32_MIN));
    const __m512i even = _mm512_add_epi64(_mm512_mul_epu32(biased, k->m_even), k->k_even);
    const __m512i odd = _mm512_add_epi64(_mm512_mul_epu32(_mm512_srli_epi64(biased, 32), k->m_odd), k->k_odd);
    __m512i u = _mm512_permutex2var_epi32(even, high_halves, odd);
    u = _mm512_mask_sub_epi32(u, _mm512_cmple_epi32_mask(u, k->limit), u, _mm512_set1_epi32(1));
    return _mm512_srav_epi32(u, k->shift);
}

/* The stage from the rearranged constants; col0 is a multiple of 16. Whole groups of 32 columns are
 * narrowed with two saturating packs and one dword permute into one 32-byte store, the clamp then on
 * bytes; a last group of 16 or fewer columns with a masked saturating store. */
static STAGE512 void lanes_stage(const edgeq_output_stage *stage, const int32_t *acc, int acc_stride, int rows,
                                 int col0, int count, int8_t *out, size_t out_stride) {
    const stage_lane_group *groups = (const stage_lane_group *)stage->lanes + col0 / 16;
    const int clamp = stage->low > -128 || stage->high < 127;
    int j = 0;
    if (count >= 32) {
        const __m256i low = _mm256_set1_epi8((char)stage->low), high = _mm256_set1_epi8((char)stage->high);
        const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        for (; j + 32 <= count; j += 32) {
            const lane_constants first = lane_constants_of(groups + j / 16);
            const lane_constants second = lane_constants_of(groups + j / 16 + 1);
            for (int r = 0; r < rows; r++) {
                const int32_t *row = acc + (size_t)r * acc_stride + j;
                const __m512i values0 = lane_values(_mm512_loadu_si512(row), &first);
                const __m512i values1 = lane_values(_mm512_loadu_si512(row + 16), &second);
                /* per 128-bit lane L: int16 [v0 4L..4L+3, v1 4L..4L+3], then bytes of those twice */
                const __m512i words = _mm512_packs_epi32(values0, values1);
                const __m512i bytes = _mm512_permutexvar_epi32(order, _mm512_packs_epi16(words, words));
                __m256i result = _mm512_castsi512_si256(bytes);
                if (clamp) result = _mm256_min_epi8(_mm256_max_epi8(result, low), high);
                _mm256_storeu_si256((__m256i *)(out + r * out_stride + j), result);
            }
        }
    }
    const __m512i low = _mm512_set1_epi32(stage->low), high = _mm512_set1_epi32(stage->high);
    for (; j < count; j += 16) {
        const int left = count - j;
        const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        const lane_constants k = lane_constants_of(groups + j / 16);
        for (int r = 0; r < rows; r++) {
            __m512i value = lane_values(_mm512_maskz_loadu_epi32(mask, acc + (size_t)r * acc_stride + j), &k);
            if (clamp) value = _mm512_min_epi32(_mm512_max_epi32(value, low), high);
            _mm512_mask_cvtsepi32_storeu_epi8(out + r * out_stride + j, mask, value);
        }
    }
}

int edgeq_stage_avx512_narrow(const edgeq_output_stage *stage, const int32_t *acc, int acc_stride, int rows,
                              int col0, int count, int8_t *out, size_t out_stride) {
    if (stage->kind != EDGEQ_STAGE_FOLDED) return 0;
    if (stage->lanes && col0 % 16 == 0) {
        lanes_stage(stage, acc, acc_stride, rows, col0, count, out, out_stride);
        return 1;
    }
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

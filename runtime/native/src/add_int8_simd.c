/* int8 ADD/SUB of same-shape inputs in 32-bit vector lanes, the integers of TFLite's reference
 * kernel (elementwise.c holds the scalar form, which finishes the tail).
 *
 * Each MultiplyByQuantizedMultiplier is exact in 32-bit lanes with 64-bit products of even and odd
 * lanes: SaturatingRoundingDoublingHighMul(a, M), truncating (a*M + nudge) / 2^31 with the nudge
 * 2^30 or 1 - 2^30 by the product's sign, equals floor((a*M + 2^30) / 2^31) for every product (for
 * a negative one, the truncation of (p + 1 - 2^30) / 2^31 is its ceiling, which is that floor); its
 * one saturating case needs M = INT32_MIN, which the caller rules out. RoundingDivideByPOT is
 * (x >> r) + ((x & mask) > (mask >> 1) + (x < 0)). */
#include "native.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

typedef struct {
    int32_t left, right, multiplier, mask;
} quantized_multiplier;

static quantized_multiplier multiplier_of(int32_t multiplier, int32_t shift) {
    quantized_multiplier q;
    q.left = shift > 0 ? shift : 0;
    q.right = shift > 0 ? 0 : -shift;
    q.multiplier = multiplier;
    q.mask = (int32_t)(((int64_t)1 << q.right) - 1);
    return q;
}

#define ADD_TARGET_512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))

static inline ADD_TARGET_512 __m512i mbqm_512(__m512i x, const quantized_multiplier *q) {
    const __m512i a = _mm512_sll_epi32(x, _mm_cvtsi32_si128(q->left));
    const __m512i m = _mm512_set1_epi32(q->multiplier), nudge = _mm512_set1_epi64((int64_t)1 << 30);
    const __m512i even = _mm512_add_epi64(_mm512_mul_epi32(a, m), nudge);
    const __m512i odd = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(a, 32), m), nudge);
    /* bits 31..62 of each product: down into the even lanes, up into the odd ones */
    const __m512i high = _mm512_mask_blend_epi32((__mmask16)0xAAAA, _mm512_srli_epi64(even, 31),
                                                 _mm512_slli_epi64(odd, 1));
    const __m512i mask = _mm512_set1_epi32(q->mask);
    const __m512i threshold = _mm512_sub_epi32(_mm512_srli_epi32(mask, 1), _mm512_srai_epi32(high, 31));
    const __m512i quotient = _mm512_sra_epi32(high, _mm_cvtsi32_si128(q->right));
    const __mmask16 up = _mm512_cmpgt_epi32_mask(_mm512_and_si512(high, mask), threshold);
    return _mm512_mask_add_epi32(quotient, up, quotient, _mm512_set1_epi32(1));
}

static ADD_TARGET_512 size_t add_int8_avx512(const int8_t *a, const int8_t *b, size_t count,
                                             const edgeq_add_params *p, int8_t *out) {
    const quantized_multiplier q1 = multiplier_of(p->input1_multiplier, p->input1_shift);
    const quantized_multiplier q2 = multiplier_of(p->input2_multiplier, p->input2_shift);
    const quantized_multiplier qo = multiplier_of(p->output_multiplier, p->output_shift);
    const __m512i offset_1 = _mm512_set1_epi32(p->input1_offset), offset_2 = _mm512_set1_epi32(p->input2_offset);
    const __m512i offset_o = _mm512_set1_epi32(p->output_offset);
    const __m512i low = _mm512_set1_epi32(p->low), high = _mm512_set1_epi32(p->high);
    const __m128i left_shift = _mm_cvtsi32_si128(p->left_shift);
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        const __m512i x1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(a + i)));
        const __m512i x2 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + i)));
        const __m512i s1 = mbqm_512(_mm512_sll_epi32(_mm512_add_epi32(x1, offset_1), left_shift), &q1);
        const __m512i s2 = mbqm_512(_mm512_sll_epi32(_mm512_add_epi32(x2, offset_2), left_shift), &q2);
        const __m512i raw = p->subtract ? _mm512_sub_epi32(s1, s2) : _mm512_add_epi32(s1, s2);
        __m512i value = _mm512_add_epi32(mbqm_512(raw, &qo), offset_o);
        value = _mm512_min_epi32(_mm512_max_epi32(value, low), high);
        _mm_storeu_si128((__m128i *)(out + i), _mm512_cvtepi32_epi8(value));
    }
    return i;
}

static inline __attribute__((target("avx2"))) __m256i mbqm_256(__m256i x, const quantized_multiplier *q) {
    const __m256i a = _mm256_sll_epi32(x, _mm_cvtsi32_si128(q->left));
    const __m256i m = _mm256_set1_epi32(q->multiplier), nudge = _mm256_set1_epi64x((int64_t)1 << 30);
    const __m256i even = _mm256_add_epi64(_mm256_mul_epi32(a, m), nudge);
    const __m256i odd = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(a, 32), m), nudge);
    const __m256i high = _mm256_blend_epi32(_mm256_srli_epi64(even, 31), _mm256_slli_epi64(odd, 1), 0xAA);
    const __m256i mask = _mm256_set1_epi32(q->mask);
    const __m256i threshold = _mm256_sub_epi32(_mm256_srli_epi32(mask, 1), _mm256_srai_epi32(high, 31));
    const __m256i quotient = _mm256_sra_epi32(high, _mm_cvtsi32_si128(q->right));
    /* the compare gives -1 where the remainder passes the threshold */
    return _mm256_sub_epi32(quotient, _mm256_cmpgt_epi32(_mm256_and_si256(high, mask), threshold));
}

static __attribute__((target("avx2"))) size_t add_int8_avx2(const int8_t *a, const int8_t *b, size_t count,
                                                            const edgeq_add_params *p, int8_t *out) {
    const quantized_multiplier q1 = multiplier_of(p->input1_multiplier, p->input1_shift);
    const quantized_multiplier q2 = multiplier_of(p->input2_multiplier, p->input2_shift);
    const quantized_multiplier qo = multiplier_of(p->output_multiplier, p->output_shift);
    const __m256i offset_1 = _mm256_set1_epi32(p->input1_offset), offset_2 = _mm256_set1_epi32(p->input2_offset);
    const __m256i offset_o = _mm256_set1_epi32(p->output_offset);
    const __m256i low = _mm256_set1_epi32(p->low), high = _mm256_set1_epi32(p->high);
    const __m128i left_shift = _mm_cvtsi32_si128(p->left_shift);
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        const __m256i x1 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(a + i)));
        const __m256i x2 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + i)));
        const __m256i s1 = mbqm_256(_mm256_sll_epi32(_mm256_add_epi32(x1, offset_1), left_shift), &q1);
        const __m256i s2 = mbqm_256(_mm256_sll_epi32(_mm256_add_epi32(x2, offset_2), left_shift), &q2);
        const __m256i raw = p->subtract ? _mm256_sub_epi32(s1, s2) : _mm256_add_epi32(s1, s2);
        __m256i value = _mm256_add_epi32(mbqm_256(raw, &qo), offset_o);
        value = _mm256_min_epi32(_mm256_max_epi32(value, low), high);
        const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(value), _mm256_extracti128_si256(value, 1));
        _mm_storel_epi64((__m128i *)(out + i), _mm_packs_epi16(words, words));
    }
    return i;
}
#endif

size_t edgeq_add_int8_vectors(int isa, const int8_t *a, const int8_t *b, size_t count, const edgeq_add_params *p,
                              int8_t *out) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    /* Shifts the vector shift instructions take as given, the multipliers' saturating case ruled out,
     * and a clamp inside int8 (the packing saturates). */
    const int usable = p->input1_multiplier != INT32_MIN && p->input2_multiplier != INT32_MIN &&
                       p->output_multiplier != INT32_MIN && p->left_shift >= 0 && p->left_shift < 32 &&
                       p->input1_shift > -32 && p->input1_shift < 32 && p->input2_shift > -32 &&
                       p->input2_shift < 32 && p->output_shift > -32 && p->output_shift < 32 && p->low >= -128 &&
                       p->high <= 127;
    if (usable && isa == EDGEQ_ISA_AVX512VNNI && edgeq_cpu_supports(isa)) return add_int8_avx512(a, b, count, p, out);
    if (usable && (isa == EDGEQ_ISA_AVX2 || isa == EDGEQ_ISA_AVXVNNI) && edgeq_cpu_supports(isa))
        return add_int8_avx2(a, b, count, p, out);
#endif
    (void)isa, (void)a, (void)b, (void)count, (void)p, (void)out;
    return 0;
}

/* out[i] = table[(uint8)a[i] * 256 + (uint8)b[i]]: an int8 binary op of two same-shape int8 tensors
 * read from its table of all 65536 input pairs (made once in prepare by the op's own kernel, so the
 * integers are the kernel's). One gather of 16 (AVX512) or 8 (AVX2) lanes replaces the three
 * requantizations of an ADD; the table holds 4 spare bytes for the gathers' 32-bit reads. */
#include "native.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

static __attribute__((target("avx512f,avx512bw,avx512vl"))) size_t lookup_avx512(const int8_t *a, const int8_t *b,
                                                                                size_t count, const int8_t *table,
                                                                                int8_t *out) {
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        const __m512i high = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(a + i)));
        const __m512i low = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + i)));
        const __m512i index = _mm512_or_si512(_mm512_slli_epi32(high, 8), low);
        const __m512i value = _mm512_i32gather_epi32(index, (const void *)table, 1);
        _mm_storeu_si128((__m128i *)(out + i), _mm512_cvtepi32_epi8(value));
    }
    return i;
}

static __attribute__((target("avx2"))) size_t lookup_avx2(const int8_t *a, const int8_t *b, size_t count,
                                                          const int8_t *table, int8_t *out) {
    const __m256i byte = _mm256_set1_epi32(0xFF);
    const __m256i first_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        const __m256i high = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(a + i)));
        const __m256i low = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + i)));
        const __m256i index = _mm256_or_si256(_mm256_slli_epi32(high, 8), low);
        const __m256i value = _mm256_shuffle_epi8(
            _mm256_and_si256(_mm256_i32gather_epi32((const int *)table, index, 1), byte), first_bytes);
        const uint32_t lo = (uint32_t)_mm256_extract_epi32(value, 0), hi = (uint32_t)_mm256_extract_epi32(value, 4);
        const uint64_t bytes = (uint64_t)lo | ((uint64_t)hi << 32);
        __builtin_memcpy(out + i, &bytes, 8);
    }
    return i;
}
#endif

void edgeq_lookup_pairs_int8(int isa, const int8_t *a, const int8_t *b, size_t count, const int8_t *table,
                             int8_t *out) {
    size_t i = 0;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (isa == EDGEQ_ISA_AVX512VNNI && edgeq_cpu_supports(isa))
        i = lookup_avx512(a, b, count, table, out);
    else if ((isa == EDGEQ_ISA_AVX2 || isa == EDGEQ_ISA_AVXVNNI) && edgeq_cpu_supports(isa))
        i = lookup_avx2(a, b, count, table, out);
#endif
    (void)isa;
    for (; i < count; i++) out[i] = table[(size_t)(uint8_t)a[i] << 8 | (uint8_t)b[i]];
}

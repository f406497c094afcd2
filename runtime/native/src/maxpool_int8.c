/* int8 MAX_POOL_2D (window max over the positions inside the input, clamped; a window wholly in the
 * padding gives the low bound, as the numpy kernel) with the channels of a pixel 64 (AVX512) or 32
 * (AVX2) at a time in registers across the window; elementwise.c holds the portable form. */
#include "native.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* The input rows a window reads: up to `limit` pointers to the pixels of (n, oy, ox) inside the input. */
static inline __attribute__((always_inline)) int window_taps(const edgeq_conv_geometry *g, const int8_t *image,
                                                             int oy, int ox, const int8_t **taps, int limit) {
    int count = 0;
    for (int ky = 0; ky < g->k_h; ky++) {
        const int iy = oy * g->stride_h - g->pad_top + ky;
        if (iy < 0 || iy >= g->in_h) continue;
        for (int kx = 0; kx < g->k_w; kx++) {
            const int ix = ox * g->stride_w - g->pad_left + kx;
            if (ix < 0 || ix >= g->in_w || count == limit) continue;
            taps[count++] = image + ((size_t)iy * g->in_w + ix) * g->in_c;
        }
    }
    return count;
}

#define MAX_WINDOW 64

static __attribute__((target("avx512f,avx512bw,avx512vl"))) void max_pool_avx512(const edgeq_conv_geometry *g,
                                                                                 const int8_t *x, int32_t low,
                                                                                 int32_t high, int8_t *out) {
    const int channels = g->in_c;
    const __m512i lowest = _mm512_set1_epi8((int8_t)low), highest = _mm512_set1_epi8((int8_t)high);
    const int8_t *taps[MAX_WINDOW];
    for (int n = 0; n < g->batch; n++) {
        const int8_t *image = x + (size_t)n * g->in_h * g->in_w * channels;
        for (int oy = 0; oy < g->out_h; oy++)
            for (int ox = 0; ox < g->out_w; ox++) {
                int8_t *target = out + (((size_t)n * g->out_h + oy) * g->out_w + ox) * channels;
                const int count = window_taps(g, image, oy, ox, taps, MAX_WINDOW);
                for (int c = 0; c < channels; c += 64) {
                    const int left = channels - c;
                    const __mmask64 mask = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
                    __m512i value = lowest; /* max of nothing: the low bound */
                    if (count) {
                        value = _mm512_maskz_loadu_epi8(mask, taps[0] + c);
                        for (int t = 1; t < count; t++)
                            value = _mm512_max_epi8(value, _mm512_maskz_loadu_epi8(mask, taps[t] + c));
                    }
                    value = _mm512_min_epi8(_mm512_max_epi8(value, lowest), highest);
                    _mm512_mask_storeu_epi8(target + c, mask, value);
                }
            }
    }
}

static __attribute__((target("avx2"))) void max_pool_avx2(const edgeq_conv_geometry *g, const int8_t *x, int32_t low,
                                                          int32_t high, int8_t *out) {
    const int channels = g->in_c, whole = channels / 32 * 32;
    const __m256i lowest = _mm256_set1_epi8((int8_t)low), highest = _mm256_set1_epi8((int8_t)high);
    const int8_t *taps[MAX_WINDOW];
    for (int n = 0; n < g->batch; n++) {
        const int8_t *image = x + (size_t)n * g->in_h * g->in_w * channels;
        for (int oy = 0; oy < g->out_h; oy++)
            for (int ox = 0; ox < g->out_w; ox++) {
                int8_t *target = out + (((size_t)n * g->out_h + oy) * g->out_w + ox) * channels;
                const int count = window_taps(g, image, oy, ox, taps, MAX_WINDOW);
                for (int c = 0; c < whole; c += 32) {
                    __m256i value = lowest;
                    if (count) {
                        value = _mm256_loadu_si256((const __m256i *)(taps[0] + c));
                        for (int t = 1; t < count; t++)
                            value = _mm256_max_epi8(value, _mm256_loadu_si256((const __m256i *)(taps[t] + c)));
                    }
                    value = _mm256_min_epi8(_mm256_max_epi8(value, lowest), highest);
                    _mm256_storeu_si256((__m256i *)(target + c), value);
                }
                for (int c = whole; c < channels; c++) {
                    int value = count ? taps[0][c] : low;
                    for (int t = 1; t < count; t++) value = taps[t][c] > value ? taps[t][c] : value;
                    target[c] = (int8_t)(value < low ? low : (value > high ? high : value));
                }
            }
    }
}
#endif

void edgeq_max_pool_int8_isa(int isa, const edgeq_conv_geometry *g, const int8_t *x, int32_t low, int32_t high,
                             int8_t *out) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    const int fits = g->k_h * g->k_w <= MAX_WINDOW && low >= -128 && high <= 127 && low <= high;
    if (fits && isa == EDGEQ_ISA_AVX512VNNI && edgeq_cpu_supports(isa)) {
        max_pool_avx512(g, x, low, high, out);
        return;
    }
    if (fits && (isa == EDGEQ_ISA_AVX2 || isa == EDGEQ_ISA_AVXVNNI) && edgeq_cpu_supports(isa)) {
        max_pool_avx2(g, x, low, high, out);
        return;
    }
#endif
    (void)isa;
    edgeq_max_pool_int8(g, x, low, high, out);
}

/* int8 DEPTHWISE_CONV_2D, direct: per output pixel, the taps inside the input accumulate
 * (x - input_zero_point) * w into int32 per channel (padding contributes 0, as in TFLite's
 * reference DepthwiseConvPerChannel), then the output stage. The channel loops are plain C that the
 * compiler vectorizes; each variant instantiates them under its own target attribute. */
#include <stdlib.h>

#include "native.h"

typedef void (*block_fn)(int32_t *acc, int width, int taps, const int8_t *const *sources,
                         const int16_t *const *weights, int c0, int32_t input_offset);

typedef struct {
    const edgeq_conv_geometry *g;
    int depth_multiplier;
    const int8_t *x;
    const int16_t *filters; /* [k_h][k_w][out_c] */
    const edgeq_output_stage *stage;
    edgeq_stage_fn run_stage;
    block_fn accumulate_block;
    int8_t *out;
    int failed;
} depthwise_job;

/* Channels accumulated together over every tap of one output pixel, in registers. */
#define CHANNEL_BLOCK 32
/* Filters with more taps go through the per-tap loop instead of the tap list. */
#define MAX_TAPS 64

/* acc[c0 .. c0 + width) = sum over the taps of (x + input_offset) * w, width <= CHANNEL_BLOCK. */
static void accumulate_block_portable(int32_t *acc, int width, int taps, const int8_t *const *sources,
                                      const int16_t *const *weights, int c0, int32_t input_offset) {
    for (int c = 0; c < width; c++) acc[c0 + c] = 0;
    for (int t = 0; t < taps; t++) {
        const int8_t *src = sources[t] + c0;
        const int16_t *w = weights[t] + c0;
        for (int c = 0; c < width; c++) acc[c0 + c] += (int32_t)(int16_t)(src[c] + input_offset) * w[c];
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

__attribute__((target("avx2"))) static void accumulate_block_avx2(int32_t *acc, int width, int taps,
                                                                  const int8_t *const *sources,
                                                                  const int16_t *const *weights, int c0,
                                                                  int32_t input_offset) {
    if (width != CHANNEL_BLOCK) { /* the last channels: 8 at a time, then one by one */
        const __m256i offset = _mm256_set1_epi32(input_offset);
        int c = 0;
        for (; c + 8 <= width; c += 8) {
            __m256i a = _mm256_setzero_si256();
            for (int t = 0; t < taps; t++) {
                const __m256i x = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(sources[t] + c0 + c)));
                const __m256i w = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(weights[t] + c0 + c)));
                a = _mm256_add_epi32(a, _mm256_mullo_epi32(_mm256_add_epi32(x, offset), w));
            }
            _mm256_storeu_si256((__m256i *)(acc + c0 + c), a);
        }
        if (c < width) accumulate_block_portable(acc, width - c, taps, sources, weights, c0 + c, input_offset);
        return;
    }
    const __m256i offset = _mm256_set1_epi32(input_offset);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int t = 0; t < taps; t++) {
        const int8_t *src = sources[t] + c0;
        const int16_t *w = weights[t] + c0;
#define DW_AVX2_STEP(a, i)                                                                                  \
    a = _mm256_add_epi32(                                                                                   \
        a, _mm256_mullo_epi32(                                                                              \
               _mm256_add_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(src + 8 * i))), offset), \
               _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(w + 8 * i)))))
        DW_AVX2_STEP(a0, 0);
        DW_AVX2_STEP(a1, 1);
        DW_AVX2_STEP(a2, 2);
        DW_AVX2_STEP(a3, 3);
#undef DW_AVX2_STEP
    }
    _mm256_storeu_si256((__m256i *)(acc + c0), a0);
    _mm256_storeu_si256((__m256i *)(acc + c0 + 8), a1);
    _mm256_storeu_si256((__m256i *)(acc + c0 + 16), a2);
    _mm256_storeu_si256((__m256i *)(acc + c0 + 24), a3);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) static void accumulate_block_avx512(int32_t *acc, int width, int taps,
                                                                                const int8_t *const *sources,
                                                                                const int16_t *const *weights,
                                                                                int c0, int32_t input_offset) {
    const __m512i offset = _mm512_set1_epi32(input_offset);
    const __mmask16 low = width >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << width) - 1);
    const __mmask16 high = width >= 32 ? (__mmask16)0xFFFF : (width <= 16 ? 0 : (__mmask16)((1u << (width - 16)) - 1));
    __m512i a0 = _mm512_setzero_si512(), a1 = a0;
    for (int t = 0; t < taps; t++) {
        const int8_t *src = sources[t] + c0;
        const int16_t *w = weights[t] + c0;
        a0 = _mm512_add_epi32(a0, _mm512_mullo_epi32(
                                      _mm512_add_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(low, src)), offset),
                                      _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(low, w))));
        a1 = _mm512_add_epi32(a1, _mm512_mullo_epi32(
                                      _mm512_add_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(high, src + 16)), offset),
                                      _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(high, w + 16))));
    }
    _mm512_mask_storeu_epi32(acc + c0, low, a0);
    _mm512_mask_storeu_epi32(acc + c0 + 16, high, a1);
}
#endif

/* One output row (image n, row oy): index = n * out_h + oy. */
static inline __attribute__((always_inline)) void depthwise_row(depthwise_job *job, int index) {
    const edgeq_conv_geometry *g = job->g;
    const int out_c = g->out_c, in_c = g->in_c, multiplier = job->depth_multiplier;
    const int n = index / g->out_h, oy = index % g->out_h;
    const int32_t input_offset = -g->input_zero_point;
    const int tap_list = multiplier == 1 && g->k_h * g->k_w <= MAX_TAPS;
    /* The whole output row's accumulators, so the output stage loads each channel's constants once
     * per row instead of once per pixel. */
    int32_t *row_acc = (int32_t *)malloc(sizeof(int32_t) * out_c * g->out_w);
    if (!row_acc) {
        job->failed = 1;
        return;
    }
    const int8_t *image = job->x + (size_t)n * g->in_h * g->in_w * in_c;
    int8_t *out_row = job->out + ((size_t)n * g->out_h + oy) * g->out_w * out_c;
    for (int ox = 0; ox < g->out_w; ox++) {
        int32_t *acc = row_acc + (size_t)ox * out_c;
        if (tap_list) {
            const int8_t *sources[MAX_TAPS];
            const int16_t *weights[MAX_TAPS];
            int rows[MAX_TAPS], cols[MAX_TAPS], index[MAX_TAPS];
            const int taps = edgeq_window_taps(g, oy, ox, rows, cols, index);
            for (int t = 0; t < taps; t++) {
                sources[t] = image + ((size_t)rows[t] * g->in_w + cols[t]) * in_c;
                weights[t] = job->filters + (size_t)index[t] * out_c;
            }
            for (int c0 = 0; c0 < out_c; c0 += CHANNEL_BLOCK) {
                const int width = out_c - c0 < CHANNEL_BLOCK ? out_c - c0 : CHANNEL_BLOCK;
                job->accumulate_block(acc, width, taps, sources, weights, c0, input_offset);
            }
        } else {
            for (int c = 0; c < out_c; c++) acc[c] = 0;
            for (int ky = 0; ky < g->k_h; ky++) {
                const int iy = oy * g->stride_h - g->pad_top + ky * g->dil_h;
                if (iy < 0 || iy >= g->in_h) continue;
                for (int kx = 0; kx < g->k_w; kx++) {
                    const int ix = ox * g->stride_w - g->pad_left + kx * g->dil_w;
                    if (ix < 0 || ix >= g->in_w) continue;
                    const int8_t *src = image + ((size_t)iy * g->in_w + ix) * in_c;
                    const int16_t *w = job->filters + ((size_t)ky * g->k_w + kx) * out_c;
                    for (int c = 0; c < out_c; c++)
                        acc[c] += (int32_t)(int16_t)(src[c / multiplier] + input_offset) * w[c];
                }
            }
        }
    }
    job->run_stage(job->stage, row_acc, out_c, g->out_w, 0, out_c, out_row, (size_t)out_c);
    free(row_acc);
}

static void depthwise_portable(void *context, int index) { depthwise_row((depthwise_job *)context, index); }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2"))) static void depthwise_avx2(void *context, int index) {
    depthwise_row((depthwise_job *)context, index);
}

__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) static void depthwise_avx512(void *context, int index) {
    depthwise_row((depthwise_job *)context, index);
}
#endif

#define PARALLEL_MIN_MACS 1000000LL

int edgeq_depthwise(int isa, const edgeq_conv_geometry *g, int depth_multiplier, const int8_t *x,
                    const int16_t *filters, const edgeq_output_stage *stage, int8_t *out, int threads) {
    void (*work)(void *, int) = depthwise_portable;
    block_fn block = accumulate_block_portable;
    if (!edgeq_isa_supported(isa)) return -1;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (isa == EDGEQ_ISA_AVX512VNNI) {
        work = depthwise_avx512;
        block = accumulate_block_avx512;
    } else if (isa == EDGEQ_ISA_AVX2 || isa == EDGEQ_ISA_AVXVNNI) {
        work = depthwise_avx2;
        block = accumulate_block_avx2;
    }
#endif
    depthwise_job job = {g, depth_multiplier, x, filters, stage, edgeq_stage_for(isa), block, out, 0};
    const int rows = g->batch * g->out_h;
    if ((long long)rows * g->out_w * g->out_c * g->k_h * g->k_w < PARALLEL_MIN_MACS) threads = 1;
    edgeq_parallel_for(rows, threads, work, &job);
    return job.failed ? -2 : 0;
}

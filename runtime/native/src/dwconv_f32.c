/* float32 DEPTHWISE_CONV_2D with the bias and the fused activation (a clamp) in the same pass, and the
 * float bias + activation pass that ends a float GEMM (CONV_2D, FULLY_CONNECTED).
 *
 * Per output pixel, the filter taps that fall inside the input are listed once (padding contributes
 * nothing, as in TFLite's reference kernel), then each block of channels accumulates over that list in
 * registers, adds the bias and clamps before its one store. Taps are summed in (ky, kx) order, as the
 * numpy kernel sums them; the SIMD variants fuse multiply and add (FMA), so they differ from numpy by
 * a rounding or two, the portable one not at all. */
#include <stdlib.h>

#include "native.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define EDGEQ_X86 1
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

/* Filters with more taps go through the per-tap loop instead of the tap list. */
#define MAX_TAPS 64

/* out[c] = clamp(bias[c] + sum over taps of src[t][c] * w[t][c]) for c < width; the pointers are
 * already offset to the block's first channel; bias may be NULL. */
typedef void (*block_f32_fn)(float *out, int width, int taps, const float *const *src, const float *const *w,
                             const float *bias, float low, float high);

static inline float clampf(float v, float low, float high) {
    v = v < low ? low : v;
    return v > high ? high : v;
}

#define PORTABLE_BLOCK 16

static void block_portable(float *out, int width, int taps, const float *const *src, const float *const *w,
                           const float *bias, float low, float high) {
    for (int c0 = 0; c0 < width; c0 += PORTABLE_BLOCK) {
        const int n = width - c0 < PORTABLE_BLOCK ? width - c0 : PORTABLE_BLOCK;
        float acc[PORTABLE_BLOCK];
        for (int c = 0; c < n; c++) acc[c] = 0.0f;
        for (int t = 0; t < taps; t++) {
            const float *s = src[t] + c0, *k = w[t] + c0;
            for (int c = 0; c < n; c++) acc[c] += s[c] * k[c];
        }
        for (int c = 0; c < n; c++) out[c0 + c] = clampf(bias ? acc[c] + bias[c0 + c] : acc[c], low, high);
    }
}

#if defined(EDGEQ_X86)
/* AVX2 + FMA: 32 channels in four registers, then 8 at a time, then a masked tail. */
__attribute__((target("avx2,fma"))) static void block_avx2(float *out, int width, int taps, const float *const *src,
                                                           const float *const *w, const float *bias, float low,
                                                           float high) {
    const __m256 lo = _mm256_set1_ps(low), hi = _mm256_set1_ps(high);
    int c = 0;
    for (; c + 32 <= width; c += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int t = 0; t < taps; t++) {
            const float *s = src[t] + c, *k = w[t] + c;
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(s), _mm256_loadu_ps(k), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(s + 8), _mm256_loadu_ps(k + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(s + 16), _mm256_loadu_ps(k + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(s + 24), _mm256_loadu_ps(k + 24), a3);
        }
        if (bias) {
            a0 = _mm256_add_ps(a0, _mm256_loadu_ps(bias + c));
            a1 = _mm256_add_ps(a1, _mm256_loadu_ps(bias + c + 8));
            a2 = _mm256_add_ps(a2, _mm256_loadu_ps(bias + c + 16));
            a3 = _mm256_add_ps(a3, _mm256_loadu_ps(bias + c + 24));
        }
        /* max/min with the value second: a NaN passes through, as numpy's clip lets it */
        _mm256_storeu_ps(out + c, _mm256_min_ps(hi, _mm256_max_ps(lo, a0)));
        _mm256_storeu_ps(out + c + 8, _mm256_min_ps(hi, _mm256_max_ps(lo, a1)));
        _mm256_storeu_ps(out + c + 16, _mm256_min_ps(hi, _mm256_max_ps(lo, a2)));
        _mm256_storeu_ps(out + c + 24, _mm256_min_ps(hi, _mm256_max_ps(lo, a3)));
    }
    for (; c < width; c += 8) {
        const int n = width - c < 8 ? width - c : 8;
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 a = _mm256_setzero_ps();
        for (int t = 0; t < taps; t++)
            a = _mm256_fmadd_ps(_mm256_maskload_ps(src[t] + c, mask), _mm256_maskload_ps(w[t] + c, mask), a);
        if (bias) a = _mm256_add_ps(a, _mm256_maskload_ps(bias + c, mask));
        _mm256_maskstore_ps(out + c, mask, _mm256_min_ps(hi, _mm256_max_ps(lo, a)));
    }
}

/* AVX-512: 64 channels in four registers, then 16 at a time with a masked tail. */
__attribute__((target("avx512f"))) static void block_avx512(float *out, int width, int taps, const float *const *src,
                                                            const float *const *w, const float *bias, float low,
                                                            float high) {
    const __m512 lo = _mm512_set1_ps(low), hi = _mm512_set1_ps(high);
    int c = 0;
    for (; c + 64 <= width; c += 64) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int t = 0; t < taps; t++) {
            const float *s = src[t] + c, *k = w[t] + c;
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(s), _mm512_loadu_ps(k), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(s + 16), _mm512_loadu_ps(k + 16), a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(s + 32), _mm512_loadu_ps(k + 32), a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(s + 48), _mm512_loadu_ps(k + 48), a3);
        }
        if (bias) {
            a0 = _mm512_add_ps(a0, _mm512_loadu_ps(bias + c));
            a1 = _mm512_add_ps(a1, _mm512_loadu_ps(bias + c + 16));
            a2 = _mm512_add_ps(a2, _mm512_loadu_ps(bias + c + 32));
            a3 = _mm512_add_ps(a3, _mm512_loadu_ps(bias + c + 48));
        }
        _mm512_storeu_ps(out + c, _mm512_min_ps(hi, _mm512_max_ps(lo, a0)));
        _mm512_storeu_ps(out + c + 16, _mm512_min_ps(hi, _mm512_max_ps(lo, a1)));
        _mm512_storeu_ps(out + c + 32, _mm512_min_ps(hi, _mm512_max_ps(lo, a2)));
        _mm512_storeu_ps(out + c + 48, _mm512_min_ps(hi, _mm512_max_ps(lo, a3)));
    }
    for (; c < width; c += 16) {
        const int n = width - c < 16 ? width - c : 16;
        const __mmask16 mask = (__mmask16)((1u << n) - 1);
        __m512 a = _mm512_setzero_ps();
        for (int t = 0; t < taps; t++)
            a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, src[t] + c), _mm512_maskz_loadu_ps(mask, w[t] + c), a);
        if (bias) a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(mask, bias + c));
        _mm512_mask_storeu_ps(out + c, mask, _mm512_min_ps(hi, _mm512_max_ps(lo, a)));
    }
}
#endif

/* A 3x3 filter over a few pixels of one output row (a tile of at most DW3X3_TILE), every tap inside
 * the input: for each block of channels, the nine taps and the bias stay in registers while the block
 * runs over the tile's pixels, whose inputs stay in L1 across the channel blocks. rows[ky] is the
 * input row of tap row ky at the first pixel's first tap; `step` floats from one pixel to the next,
 * `gap` floats from one tap column to the next. Same sums in the same order as the block kernels. */
#define DW3X3_TILE 8

typedef void (*row3x3_fn)(float *out, int pixels, int channels, const float *const *rows, size_t step, size_t gap,
                          const float *filters, const float *bias, float low, float high);

/* acc = x[t] * w[t] summed over the nine taps of pixel `in` (row pointers r0..r2), in (ky, kx) order. */
#define DW3X3_TAPS(MUL, FMA, LOAD, in)                                                                     \
    acc = MUL(LOAD(r0 + (in)), w0);                                                                        \
    acc = FMA(LOAD(r0 + (in) + gap), w1, acc);                                                             \
    acc = FMA(LOAD(r0 + (in) + 2 * gap), w2, acc);                                                         \
    acc = FMA(LOAD(r1 + (in)), w3, acc);                                                                   \
    acc = FMA(LOAD(r1 + (in) + gap), w4, acc);                                                             \
    acc = FMA(LOAD(r1 + (in) + 2 * gap), w5, acc);                                                         \
    acc = FMA(LOAD(r2 + (in)), w6, acc);                                                                   \
    acc = FMA(LOAD(r2 + (in) + gap), w7, acc);                                                             \
    acc = FMA(LOAD(r2 + (in) + 2 * gap), w8, acc);

#if defined(EDGEQ_X86)
__attribute__((target("avx512f"))) static void row3x3_avx512(float *out, int pixels, int channels,
                                                             const float *const *rows, size_t step, size_t gap,
                                                             const float *filters, const float *bias, float low,
                                                             float high) {
    const __m512 lo = _mm512_set1_ps(low), hi = _mm512_set1_ps(high);
    for (int c = 0; c < channels; c += 16) {
        const int n = channels - c < 16 ? channels - c : 16;
        const __mmask16 mask = (__mmask16)((1u << n) - 1);
        const float *f = filters + c;
        const size_t C = (size_t)channels;
        const __m512 w0 = _mm512_maskz_loadu_ps(mask, f), w1 = _mm512_maskz_loadu_ps(mask, f + C),
                     w2 = _mm512_maskz_loadu_ps(mask, f + 2 * C), w3 = _mm512_maskz_loadu_ps(mask, f + 3 * C),
                     w4 = _mm512_maskz_loadu_ps(mask, f + 4 * C), w5 = _mm512_maskz_loadu_ps(mask, f + 5 * C),
                     w6 = _mm512_maskz_loadu_ps(mask, f + 6 * C), w7 = _mm512_maskz_loadu_ps(mask, f + 7 * C),
                     w8 = _mm512_maskz_loadu_ps(mask, f + 8 * C);
        const __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + c) : _mm512_setzero_ps();
        const float *r0 = rows[0] + c, *r1 = rows[1] + c, *r2 = rows[2] + c;
        float *o = out + c;
        __m512 acc;
        if (n == 16) {
            for (int p = 0; p < pixels; p++, o += C) {
#define LOAD16(q) _mm512_loadu_ps(q)
                DW3X3_TAPS(_mm512_mul_ps, _mm512_fmadd_ps, LOAD16, p * step)
#undef LOAD16
                acc = bias ? _mm512_add_ps(acc, b) : acc;
                _mm512_storeu_ps(o, _mm512_min_ps(hi, _mm512_max_ps(lo, acc)));
            }
        } else {
            for (int p = 0; p < pixels; p++, o += C) {
#define LOADM(q) _mm512_maskz_loadu_ps(mask, q)
                DW3X3_TAPS(_mm512_mul_ps, _mm512_fmadd_ps, LOADM, p * step)
#undef LOADM
                acc = bias ? _mm512_add_ps(acc, b) : acc;
                _mm512_mask_storeu_ps(o, mask, _mm512_min_ps(hi, _mm512_max_ps(lo, acc)));
            }
        }
    }
}

/* The same for many channels, pixel by pixel: every channel of a pixel before the next pixel, the taps
 * read again from L1 for each. Twice the loads of row3x3_avx512, but the input and output are walked
 * in memory order, which the prefetchers follow: 5-25% faster from 96 channels up when the layer's
 * input and output are not in L2 (as in a whole model), as fast when they are. */
__attribute__((target("avx512f"))) static void row3x3_wide_avx512(float *out, int pixels, int channels,
                                                             const float *const *rows, size_t step, size_t gap,
                                                             const float *filters, const float *bias, float low,
                                                             float high) {
    const __m512 lo = _mm512_set1_ps(low), hi = _mm512_set1_ps(high);
    const size_t C = (size_t)channels;
    for (int p = 0; p < pixels; p++) {
        const float *r0 = rows[0] + p * step, *r1 = rows[1] + p * step, *r2 = rows[2] + p * step;
        float *o = out + p * C;
        for (int c = 0; c < channels; c += 16) {
            const int n = channels - c < 16 ? channels - c : 16;
            const __mmask16 mask = (__mmask16)((1u << n) - 1);
            const float *f = filters + c;
            __m512 acc;
#define LOADM(q) _mm512_maskz_loadu_ps(mask, q)
            acc = _mm512_mul_ps(LOADM(r0 + c), LOADM(f));
            acc = _mm512_fmadd_ps(LOADM(r0 + c + gap), LOADM(f + C), acc);
            acc = _mm512_fmadd_ps(LOADM(r0 + c + 2 * gap), LOADM(f + 2 * C), acc);
            acc = _mm512_fmadd_ps(LOADM(r1 + c), LOADM(f + 3 * C), acc);
            acc = _mm512_fmadd_ps(LOADM(r1 + c + gap), LOADM(f + 4 * C), acc);
            acc = _mm512_fmadd_ps(LOADM(r1 + c + 2 * gap), LOADM(f + 5 * C), acc);
            acc = _mm512_fmadd_ps(LOADM(r2 + c), LOADM(f + 6 * C), acc);
            acc = _mm512_fmadd_ps(LOADM(r2 + c + gap), LOADM(f + 7 * C), acc);
            acc = _mm512_fmadd_ps(LOADM(r2 + c + 2 * gap), LOADM(f + 8 * C), acc);
            if (bias) acc = _mm512_add_ps(acc, LOADM(bias + c));
#undef LOADM
            _mm512_mask_storeu_ps(o + c, mask, _mm512_min_ps(hi, _mm512_max_ps(lo, acc)));
        }
    }
}

__attribute__((target("avx2,fma"))) static void row3x3_avx2(float *out, int pixels, int channels,
                                                            const float *const *rows, size_t step, size_t gap,
                                                            const float *filters, const float *bias, float low,
                                                            float high) {
    const __m256 lo = _mm256_set1_ps(low), hi = _mm256_set1_ps(high);
    for (int c = 0; c < channels; c += 8) {
        const int n = channels - c < 8 ? channels - c : 8;
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const float *f = filters + c;
        const size_t C = (size_t)channels;
        const __m256 w0 = _mm256_maskload_ps(f, mask), w1 = _mm256_maskload_ps(f + C, mask),
                     w2 = _mm256_maskload_ps(f + 2 * C, mask), w3 = _mm256_maskload_ps(f + 3 * C, mask),
                     w4 = _mm256_maskload_ps(f + 4 * C, mask), w5 = _mm256_maskload_ps(f + 5 * C, mask),
                     w6 = _mm256_maskload_ps(f + 6 * C, mask), w7 = _mm256_maskload_ps(f + 7 * C, mask),
                     w8 = _mm256_maskload_ps(f + 8 * C, mask);
        const __m256 b = bias ? _mm256_maskload_ps(bias + c, mask) : _mm256_setzero_ps();
        const float *r0 = rows[0] + c, *r1 = rows[1] + c, *r2 = rows[2] + c;
        float *o = out + c;
        __m256 acc;
        if (n == 8) {
            for (int p = 0; p < pixels; p++, o += C) {
#define LOAD8(q) _mm256_loadu_ps(q)
                DW3X3_TAPS(_mm256_mul_ps, _mm256_fmadd_ps, LOAD8, p * step)
#undef LOAD8
                acc = bias ? _mm256_add_ps(acc, b) : acc;
                _mm256_storeu_ps(o, _mm256_min_ps(hi, _mm256_max_ps(lo, acc)));
            }
        } else {
            for (int p = 0; p < pixels; p++, o += C) {
#define LOADM(q) _mm256_maskload_ps(q, mask)
                DW3X3_TAPS(_mm256_mul_ps, _mm256_fmadd_ps, LOADM, p * step)
#undef LOADM
                acc = bias ? _mm256_add_ps(acc, b) : acc;
                _mm256_maskstore_ps(o, mask, _mm256_min_ps(hi, _mm256_max_ps(lo, acc)));
            }
        }
    }
}
#endif

#if defined(__aarch64__)
/* NEON: 16 channels in four registers, then 4 at a time, then one by one. */
static void block_neon(float *out, int width, int taps, const float *const *src, const float *const *w,
                       const float *bias, float low, float high) {
    const float32x4_t lo = vdupq_n_f32(low), hi = vdupq_n_f32(high);
    int c = 0;
    for (; c + 16 <= width; c += 16) {
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
        for (int t = 0; t < taps; t++) {
            const float *s = src[t] + c, *k = w[t] + c;
            a0 = vfmaq_f32(a0, vld1q_f32(s), vld1q_f32(k));
            a1 = vfmaq_f32(a1, vld1q_f32(s + 4), vld1q_f32(k + 4));
            a2 = vfmaq_f32(a2, vld1q_f32(s + 8), vld1q_f32(k + 8));
            a3 = vfmaq_f32(a3, vld1q_f32(s + 12), vld1q_f32(k + 12));
        }
        if (bias) {
            a0 = vaddq_f32(a0, vld1q_f32(bias + c));
            a1 = vaddq_f32(a1, vld1q_f32(bias + c + 4));
            a2 = vaddq_f32(a2, vld1q_f32(bias + c + 8));
            a3 = vaddq_f32(a3, vld1q_f32(bias + c + 12));
        }
        vst1q_f32(out + c, vminq_f32(vmaxq_f32(a0, lo), hi));
        vst1q_f32(out + c + 4, vminq_f32(vmaxq_f32(a1, lo), hi));
        vst1q_f32(out + c + 8, vminq_f32(vmaxq_f32(a2, lo), hi));
        vst1q_f32(out + c + 12, vminq_f32(vmaxq_f32(a3, lo), hi));
    }
    for (; c + 4 <= width; c += 4) {
        float32x4_t a = vdupq_n_f32(0.0f);
        for (int t = 0; t < taps; t++) a = vfmaq_f32(a, vld1q_f32(src[t] + c), vld1q_f32(w[t] + c));
        if (bias) a = vaddq_f32(a, vld1q_f32(bias + c));
        vst1q_f32(out + c, vminq_f32(vmaxq_f32(a, lo), hi));
    }
    if (c < width) {
        const float *tail_src[MAX_TAPS], *tail_w[MAX_TAPS];
        for (int t = 0; t < taps; t++) {
            tail_src[t] = src[t] + c;
            tail_w[t] = w[t] + c;
        }
        block_portable(out + c, width - c, taps, tail_src, tail_w, bias ? bias + c : 0, low, high);
    }
}
#endif

typedef struct {
    const edgeq_conv_geometry *g;
    int depth_multiplier;
    const float *x, *filters, *bias;
    float low, high;
    block_f32_fn block;
    row3x3_fn row3x3; /* NULL: every pixel goes through `block` */
    float *out;
    const float *const *input_rows; /* NULL, or where each input row of image 0 is (the only image then) */
    float *row_out;                 /* NULL, or where every output row goes instead of its place in out */
} depthwise_f32_job;

/* Where input row iy of image n starts. */
static inline const float *input_row(const depthwise_f32_job *job, int n, int iy) {
    const edgeq_conv_geometry *g = job->g;
    if (job->input_rows) return job->input_rows[iy];
    return job->x + ((size_t)n * g->in_h + iy) * g->in_w * g->in_c;
}

/* The tap list of output pixel (oy, ox) of image n (at most MAX_TAPS taps): where each tap inside the
 * input reads, and its weights. */
static int pixel_taps(const depthwise_f32_job *job, int n, int oy, int ox, const float **sources,
                      const float **weights) {
    int rows[MAX_TAPS], cols[MAX_TAPS], index[MAX_TAPS];
    const int taps = edgeq_window_taps(job->g, oy, ox, rows, cols, index);
    for (int t = 0; t < taps; t++) {
        sources[t] = input_row(job, n, rows[t]) + (size_t)cols[t] * job->g->in_c;
        weights[t] = job->filters + (size_t)index[t] * job->g->out_c;
    }
    return taps;
}

/* One output row (image n, row oy): index = n * out_h + oy. */
static void depthwise_f32_row(void *context, int index) {
    const depthwise_f32_job *job = (const depthwise_f32_job *)context;
    const edgeq_conv_geometry *g = job->g;
    const int out_c = g->out_c, in_c = g->in_c, multiplier = job->depth_multiplier;
    const int n = index / g->out_h, oy = index % g->out_h;
    float *out_row = job->row_out ? job->row_out : job->out + ((size_t)n * g->out_h + oy) * g->out_w * out_c;
    const int tap_list = multiplier == 1 && g->k_h * g->k_w <= MAX_TAPS;
    /* Output columns whose every tap column is inside the input: there the tap list of one pixel,
     * shifted by the stride, is the next pixel's, so it is made once for the whole run. */
    int inner_first = g->out_w, inner_last = g->out_w;
    if (tap_list) {
        const int reach = (g->k_w - 1) * g->dil_w;
        inner_first = g->pad_left > 0 ? (g->pad_left + g->stride_w - 1) / g->stride_w : 0;
        inner_last = g->in_w - 1 - reach + g->pad_left >= 0 ? (g->in_w - 1 - reach + g->pad_left) / g->stride_w + 1 : 0;
        if (inner_last > g->out_w) inner_last = g->out_w;
        if (inner_first > inner_last) inner_first = inner_last = g->out_w;
    }
    const int row_inside = oy * g->stride_h - g->pad_top >= 0 &&
                           oy * g->stride_h - g->pad_top + (g->k_h - 1) * g->dil_h < g->in_h;
    if (inner_first < inner_last && job->row3x3 && row_inside) {
        const float *rows[3];
        const int ix0 = inner_first * g->stride_w - g->pad_left;
        const size_t step = (size_t)g->stride_w * in_c;
        for (int ky = 0; ky < 3; ky++) {
            const int iy = oy * g->stride_h - g->pad_top + ky * g->dil_h;
            rows[ky] = input_row(job, n, iy) + (size_t)ix0 * in_c;
        }
        for (int ox = inner_first; ox < inner_last; ox += DW3X3_TILE) {
            const int pixels = inner_last - ox < DW3X3_TILE ? inner_last - ox : DW3X3_TILE;
            job->row3x3(out_row + (size_t)ox * out_c, pixels, out_c, rows, step, (size_t)g->dil_w * in_c,
                        job->filters, job->bias, job->low, job->high);
            for (int ky = 0; ky < 3; ky++) rows[ky] += DW3X3_TILE * step;
        }
    } else if (inner_first < inner_last) {
        const float *sources[MAX_TAPS], *weights[MAX_TAPS];
        const int taps = pixel_taps(job, n, oy, inner_first, sources, weights);
        const size_t step = (size_t)g->stride_w * in_c;
        for (int ox = inner_first; ox < inner_last; ox++) {
            job->block(out_row + (size_t)ox * out_c, out_c, taps, sources, weights, job->bias, job->low, job->high);
            for (int t = 0; t < taps; t++) sources[t] += step;
        }
    }
    for (int ox = 0; ox < g->out_w; ox++) {
        float *target = out_row + (size_t)ox * out_c;
        if (ox == inner_first && inner_first < inner_last) {
            ox = inner_last - 1; /* done above */
            continue;
        }
        if (tap_list) {
            const float *sources[MAX_TAPS], *weights[MAX_TAPS];
            const int taps = pixel_taps(job, n, oy, ox, sources, weights);
            job->block(target, out_c, taps, sources, weights, job->bias, job->low, job->high);
            continue;
        }
        /* A channel multiplier or a very large filter: one tap at a time, in the output. */
        for (int c = 0; c < out_c; c++) target[c] = 0.0f;
        for (int ky = 0; ky < g->k_h; ky++) {
            const int iy = oy * g->stride_h - g->pad_top + ky * g->dil_h;
            if (iy < 0 || iy >= g->in_h) continue;
            for (int kx = 0; kx < g->k_w; kx++) {
                const int ix = ox * g->stride_w - g->pad_left + kx * g->dil_w;
                if (ix < 0 || ix >= g->in_w) continue;
                const float *src = input_row(job, n, iy) + (size_t)ix * in_c;
                const float *w = job->filters + ((size_t)ky * g->k_w + kx) * out_c;
                for (int c = 0; c < out_c; c++) target[c] += src[c / multiplier] * w[c];
            }
        }
        for (int c = 0; c < out_c; c++)
            target[c] = clampf(job->bias ? target[c] + job->bias[c] : target[c], job->low, job->high);
    }
}

int edgeq_float_level(int isa) {
#if defined(EDGEQ_X86)
    if (isa == EDGEQ_ISA_AVX512VNNI && edgeq_cpu_supports(isa)) return EDGEQ_FLOAT_AVX512;
    if ((isa == EDGEQ_ISA_AVX2 || isa == EDGEQ_ISA_AVXVNNI || isa == EDGEQ_ISA_AVX512VNNI) &&
        edgeq_cpu_supports(EDGEQ_ISA_AVX2)) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("fma")) return EDGEQ_FLOAT_AVX2;
    }
#endif
#if defined(__aarch64__)
    if (isa == EDGEQ_ISA_NEON || isa == EDGEQ_ISA_NEON_DOTPROD) return EDGEQ_FLOAT_NEON;
#endif
    (void)isa;
    return EDGEQ_FLOAT_PORTABLE;
}

/* Past this many channels, AVX-512 runs the 3x3 rows pixel by pixel (row3x3_wide_avx512). */
#define WIDE_CHANNELS 64

/* The 3x3 row kernel of a variant, or NULL where there is none (the block kernels run). */
static row3x3_fn row3x3_for(int level, int channels) {
    switch (level) {
#if defined(EDGEQ_X86)
    case EDGEQ_FLOAT_AVX512:
        return channels > WIDE_CHANNELS ? row3x3_wide_avx512 : row3x3_avx512;
    case EDGEQ_FLOAT_AVX2:
        return row3x3_avx2;
#endif
    default:
        return NULL;
    }
}

static block_f32_fn block_for(int level) {
    switch (level) {
#if defined(EDGEQ_X86)
    case EDGEQ_FLOAT_AVX512:
        return block_avx512;
    case EDGEQ_FLOAT_AVX2:
        return block_avx2;
#endif
#if defined(__aarch64__)
    case EDGEQ_FLOAT_NEON:
        return block_neon;
#endif
    default:
        return block_portable;
    }
}

#define PARALLEL_MIN_MACS 1000000LL

int edgeq_depthwise_f32(int isa, const edgeq_conv_geometry *g, int depth_multiplier, const float *x,
                        const float *filters, const float *bias, float low, float high, float *out, int threads) {
    if (!edgeq_isa_supported(isa) || depth_multiplier < 1) return -1;
    const int level = edgeq_float_level(isa);
    const int three_by_three = g->k_h == 3 && g->k_w == 3 && depth_multiplier == 1;
    depthwise_f32_job job = {g,    depth_multiplier, x, filters, bias, low, high, block_for(level),
                             three_by_three ? row3x3_for(level, g->out_c) : NULL, out, NULL, NULL};
    const int rows = g->batch * g->out_h;
    if ((long long)rows * g->out_w * g->out_c * g->k_h * g->k_w < PARALLEL_MIN_MACS) threads = 1;
    edgeq_parallel_for(rows, threads, depthwise_f32_row, &job);
    return 0;
}

/* -- a CONV_2D straight into a 3x3 DEPTHWISE_CONV_2D (and on into a 1x1 CONV_2D) ------------------- */

typedef struct {
    depthwise_f32_job depthwise; /* g: the depthwise's geometry; x, out: unset (per image) */
    int isa, depth;              /* depth: the first convolution's GEMM depth (in_c for a 1x1) */
    const edgeq_conv_geometry *first; /* NULL for a 1x1 first convolution, else its geometry (im2col) */
    const float *x, *packed, *conv_bias;
    float conv_low, conv_high;
    const edgeq_pointwise_f32 *project; /* NULL, or a 1x1 convolution of the depthwise's output rows */
    float *out, *rings; /* per task: 3 expanded rows, a depthwise row if there is a project, and a row
                         * of patches if the first convolution is not 1x1 */
    int rows_per_task;
} pointwise_depthwise_job;

/* Output rows [first, last) of every image: each expanded input row is made by the 1x1 GEMM once, into
 * a ring of three rows (input row iy in slot iy % 3), just before the first output row that reads it. */
static void pointwise_depthwise_task(void *context, int index) {
    const pointwise_depthwise_job *job = (const pointwise_depthwise_job *)context;
    const edgeq_conv_geometry *g = job->depthwise.g;
    const size_t row_floats = (size_t)g->in_w * g->in_c;
    const size_t out_row_floats = (size_t)g->out_w * g->out_c, patch_floats = (size_t)g->in_w * job->depth;
    float *ring = job->rings + (size_t)index * (3 * row_floats + (job->project ? out_row_floats : 0) +
                                                (job->first ? patch_floats : 0));
    float *patches = ring + 3 * row_floats + (job->project ? out_row_floats : 0);
    const float *slots[3] = {ring, ring + row_floats, ring + 2 * row_floats};
    const int first = index * job->rows_per_task;
    const int last = first + job->rows_per_task < g->out_h ? first + job->rows_per_task : g->out_h;
    const float *input_rows[EDGEQ_FUSED_MAX_ROWS];
    depthwise_f32_job depthwise = job->depthwise;
    depthwise.input_rows = input_rows;
    const edgeq_pointwise_f32 *project = job->project;
    if (project) depthwise.row_out = ring + 3 * row_floats;
    for (int n = 0; n < g->batch; n++) {
        const float *image = job->x + (size_t)n * g->in_h * g->in_w * job->depth; /* a 1x1's input */
        depthwise.out = job->out + (size_t)n * g->out_h * g->out_w * g->out_c;
        int made = -1; /* the last input row made for this image and task */
        for (int oy = first; oy < last; oy++) {
            const int top = oy * g->stride_h - g->pad_top;
            for (int iy = top < 0 ? 0 : top; iy <= top + 2 && iy < g->in_h; iy++) {
                if (iy <= made && made - iy < 3) continue; /* still in the ring */
                float *slot = (float *)slots[iy % 3];
                const float *a = image + (size_t)iy * g->in_w * job->depth;
                if (job->first) {
                    edgeq_im2col_rows_f32(job->first, job->x, 0.0f, ((size_t)n * g->in_h + iy) * g->in_w,
                                          (size_t)g->in_w, patches);
                    a = patches;
                }
                edgeq_sgemm(job->isa, g->in_w, job->depth, g->in_c, a, (size_t)job->depth, job->packed,
                            job->conv_bias, job->conv_low, job->conv_high, slot, 1);
                input_rows[iy] = slot;
                made = iy;
            }
            depthwise_f32_row(&depthwise, oy);
            if (project)
                edgeq_sgemm(job->isa, g->out_w, g->out_c, project->n, depthwise.row_out, (size_t)g->out_c,
                            project->packed, project->bias, project->low, project->high,
                            job->out + ((size_t)n * g->out_h + oy) * g->out_w * project->n, 1);
        }
    }
}

int edgeq_pointwise_depthwise_f32(int isa, const edgeq_conv_geometry *g, const edgeq_conv_geometry *first,
                                  int in_c, const float *x, const float *packed, const float *conv_bias,
                                  float conv_low, float conv_high, const float *filters, const float *bias, float low,
                                  float high, const edgeq_pointwise_f32 *project, float *out, int threads) {
    if (!edgeq_isa_supported(isa) || g->k_h != 3 || g->k_w != 3 || g->dil_h != 1 || g->dil_w != 1 ||
        g->stride_h < 1 || g->stride_h > 3 || g->in_h > EDGEQ_FUSED_MAX_ROWS || g->out_c != g->in_c || in_c < 1)
        return -1;
    if (first && (first->batch != g->batch || first->out_h != g->in_h || first->out_w != g->in_w ||
                  first->out_c != g->in_c || first->in_c != in_c))
        return -1;
    const int depth = first ? first->k_h * first->k_w * in_c : in_c;
    const int level = edgeq_float_level(isa);
    pointwise_depthwise_job job = {
        {g, 1, NULL, filters, bias, low, high, block_for(level), row3x3_for(level, g->out_c), NULL, NULL, NULL},
        isa, depth, first, x, packed, conv_bias, conv_low, conv_high, project, out, NULL, 0};
    if (project && project->n < 1) return -1;
    const long long macs = (long long)g->out_h * g->out_w * g->out_c * (9 + depth + (project ? project->n : 0));
    if (macs < PARALLEL_MIN_MACS || threads < 1) threads = 1;
    if (threads > g->out_h) threads = g->out_h > 0 ? g->out_h : 1;
    job.rows_per_task = (g->out_h + threads - 1) / threads;
    const int tasks = job.rows_per_task ? (g->out_h + job.rows_per_task - 1) / job.rows_per_task : 0;
    const size_t per_task = 3 * (size_t)g->in_w * g->in_c + (project ? (size_t)g->out_w * g->out_c : 0) +
                            (first ? (size_t)g->in_w * depth : 0);
    job.rings = (float *)malloc(sizeof(float) * per_task * (tasks > 0 ? tasks : 1));
    if (!job.rings) return -2;
    edgeq_parallel_for(tasks, threads, pointwise_depthwise_task, &job);
    free(job.rings);
    return 0;
}

/* -- bias + activation over a GEMM's [rows, channels] output, in place ------------------------------- */

static inline __attribute__((always_inline)) void bias_activation_body(float *restrict out, size_t rows,
                                                                      int channels, const float *restrict bias,
                                                                      float low, float high) {
    for (size_t r = 0; r < rows; r++) {
        float *row = out + r * (size_t)channels;
        if (bias)
            for (int c = 0; c < channels; c++) row[c] = clampf(row[c] + bias[c], low, high);
        else
            for (int c = 0; c < channels; c++) row[c] = clampf(row[c], low, high);
    }
}

static void bias_activation_portable(float *out, size_t rows, int channels, const float *bias, float low,
                                     float high) {
    bias_activation_body(out, rows, channels, bias, low, high);
}

#if defined(EDGEQ_X86)
__attribute__((target("avx2,fma"))) static void bias_activation_avx2(float *out, size_t rows, int channels,
                                                                     const float *bias, float low, float high) {
    bias_activation_body(out, rows, channels, bias, low, high);
}

__attribute__((target("avx512f"))) static void bias_activation_avx512(float *out, size_t rows, int channels,
                                                                      const float *bias, float low, float high) {
    bias_activation_body(out, rows, channels, bias, low, high);
}
#endif

void edgeq_bias_activation_f32(int isa, float *out, size_t rows, int channels, const float *bias, float low,
                               float high) {
    switch (edgeq_float_level(isa)) {
#if defined(EDGEQ_X86)
    case EDGEQ_FLOAT_AVX512:
        bias_activation_avx512(out, rows, channels, bias, low, high);
        return;
    case EDGEQ_FLOAT_AVX2:
        bias_activation_avx2(out, rows, channels, bias, low, high);
        return;
#endif
    default: /* aarch64's baseline is NEON: the portable loop vectorizes there */
        bias_activation_portable(out, rows, channels, bias, low, high);
    }
}

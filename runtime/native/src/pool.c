/* float32 MAX_POOL_2D and AVERAGE_POOL_2D, int8 AVERAGE_POOL_2D, and the float32 im2col of a CONV_2D.
 *
 * Pools read only the window positions inside the input, as TFLite's reference kernels do: the max
 * of those, or their sum divided by their count (float32 division; for int8, the int32 sum divided
 * with ties away from zero), then the fused activation as a clamp. Sums run in (ky, kx) order, as in
 * the numpy kernels, so every variant gives their very values. The loops are plain C over channels;
 * each variant compiles them under its own target attribute, where the compiler vectorizes them. */
#include "native.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EDGEQ_X86 1
#endif

#define POOL_MAX 0
#define POOL_AVERAGE 1

/* One output pixel's window: the first and last input rows and columns inside the input. */
typedef struct {
    int y0, y1, x0, x1;
} window;

static inline window window_at(const edgeq_conv_geometry *g, int oy, int ox) {
    window w;
    const int top = oy * g->stride_h - g->pad_top, left = ox * g->stride_w - g->pad_left;
    w.y0 = top < 0 ? 0 : top;
    w.y1 = top + g->k_h > g->in_h ? g->in_h : top + g->k_h;
    w.x0 = left < 0 ? 0 : left;
    w.x1 = left + g->k_w > g->in_w ? g->in_w : left + g->k_w;
    return w;
}

static inline __attribute__((always_inline)) void pool_f32_body(int kind, const edgeq_conv_geometry *g,
                                                               const float *restrict x, float low, float high,
                                                               float *restrict out) {
    const int channels = g->in_c;
    for (int n = 0; n < g->batch; n++) {
        const float *image = x + (size_t)n * g->in_h * g->in_w * channels;
        for (int oy = 0; oy < g->out_h; oy++)
            for (int ox = 0; ox < g->out_w; ox++) {
                float *restrict target = out + (((size_t)n * g->out_h + oy) * g->out_w + ox) * channels;
                const window w = window_at(g, oy, ox);
                int count = 0;
                for (int iy = w.y0; iy < w.y1; iy++)
                    for (int ix = w.x0; ix < w.x1; ix++) {
                        const float *restrict src = image + ((size_t)iy * g->in_w + ix) * channels;
                        if (count++ == 0)
                            for (int c = 0; c < channels; c++) target[c] = src[c];
                        else if (kind == POOL_MAX)
                            for (int c = 0; c < channels; c++) target[c] = src[c] > target[c] ? src[c] : target[c];
                        else
                            for (int c = 0; c < channels; c++) target[c] += src[c];
                    }
                if (count == 0) { /* a window wholly in the padding: max of nothing, sum of nothing */
                    for (int c = 0; c < channels; c++) target[c] = kind == POOL_MAX ? low : 0.0f;
                    count = 1;
                }
                const float divisor = (float)count;
                for (int c = 0; c < channels; c++) {
                    float v = kind == POOL_MAX ? target[c] : target[c] / divisor;
                    v = v < low ? low : v;
                    target[c] = v > high ? high : v;
                }
            }
    }
}

static inline __attribute__((always_inline)) void average_pool_int8_body(const edgeq_conv_geometry *g,
                                                                        const int8_t *restrict x, int32_t low,
                                                                        int32_t high, int32_t *restrict acc,
                                                                        int8_t *restrict out) {
    const int channels = g->in_c;
    for (int n = 0; n < g->batch; n++) {
        const int8_t *image = x + (size_t)n * g->in_h * g->in_w * channels;
        for (int oy = 0; oy < g->out_h; oy++)
            for (int ox = 0; ox < g->out_w; ox++) {
                int8_t *restrict target = out + (((size_t)n * g->out_h + oy) * g->out_w + ox) * channels;
                const window w = window_at(g, oy, ox);
                for (int c = 0; c < channels; c++) acc[c] = 0;
                for (int iy = w.y0; iy < w.y1; iy++)
                    for (int ix = w.x0; ix < w.x1; ix++) {
                        const int8_t *restrict src = image + ((size_t)iy * g->in_w + ix) * channels;
                        for (int c = 0; c < channels; c++) acc[c] += src[c];
                    }
                int32_t count = (w.y1 - w.y0) * (w.x1 - w.x0);
                count = count > 0 ? count : 1;
                const int32_t half = count / 2;
                for (int c = 0; c < channels; c++) {
                    /* acc / count with ties away from zero (C division truncates toward zero) */
                    int32_t v = acc[c] > 0 ? (acc[c] + half) / count : (acc[c] - half) / count;
                    v = v < low ? low : (v > high ? high : v);
                    target[c] = (int8_t)v;
                }
            }
    }
}

static void max_pool_f32_portable(const edgeq_conv_geometry *g, const float *x, float low, float high, float *out) {
    pool_f32_body(POOL_MAX, g, x, low, high, out);
}
static void average_pool_f32_portable(const edgeq_conv_geometry *g, const float *x, float low, float high,
                                      float *out) {
    pool_f32_body(POOL_AVERAGE, g, x, low, high, out);
}
static void average_pool_int8_portable(const edgeq_conv_geometry *g, const int8_t *x, int32_t low, int32_t high,
                                       int32_t *acc, int8_t *out) {
    average_pool_int8_body(g, x, low, high, acc, out);
}

#if defined(EDGEQ_X86)
__attribute__((target("avx2"))) static void max_pool_f32_avx2(const edgeq_conv_geometry *g, const float *x, float low,
                                                              float high, float *out) {
    pool_f32_body(POOL_MAX, g, x, low, high, out);
}
__attribute__((target("avx2"))) static void average_pool_f32_avx2(const edgeq_conv_geometry *g, const float *x,
                                                                  float low, float high, float *out) {
    pool_f32_body(POOL_AVERAGE, g, x, low, high, out);
}
__attribute__((target("avx2"))) static void average_pool_int8_avx2(const edgeq_conv_geometry *g, const int8_t *x,
                                                                   int32_t low, int32_t high, int32_t *acc,
                                                                   int8_t *out) {
    average_pool_int8_body(g, x, low, high, acc, out);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void max_pool_f32_avx512(const edgeq_conv_geometry *g,
                                                                                     const float *x, float low,
                                                                                     float high, float *out) {
    pool_f32_body(POOL_MAX, g, x, low, high, out);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void average_pool_f32_avx512(const edgeq_conv_geometry *g,
                                                                                         const float *x, float low,
                                                                                         float high, float *out) {
    pool_f32_body(POOL_AVERAGE, g, x, low, high, out);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void average_pool_int8_avx512(
    const edgeq_conv_geometry *g, const int8_t *x, int32_t low, int32_t high, int32_t *acc, int8_t *out) {
    average_pool_int8_body(g, x, low, high, acc, out);
}
#endif

/* 2: AVX-512, 1: AVX2, 0: the portable loops (NEON on aarch64, where it is the baseline). */
static int vector_level(int isa) {
#if defined(EDGEQ_X86)
    if (isa == EDGEQ_ISA_AVX512VNNI && edgeq_cpu_supports(isa)) return 2;
    if ((isa == EDGEQ_ISA_AVX2 || isa == EDGEQ_ISA_AVXVNNI) && edgeq_cpu_supports(EDGEQ_ISA_AVX2)) return 1;
#endif
    (void)isa;
    return 0;
}

void edgeq_pool_f32(int isa, int average, const edgeq_conv_geometry *g, const float *x, float low, float high,
                    float *out) {
    switch (vector_level(isa)) {
#if defined(EDGEQ_X86)
    case 2:
        (average ? average_pool_f32_avx512 : max_pool_f32_avx512)(g, x, low, high, out);
        return;
    case 1:
        (average ? average_pool_f32_avx2 : max_pool_f32_avx2)(g, x, low, high, out);
        return;
#endif
    default:
        (average ? average_pool_f32_portable : max_pool_f32_portable)(g, x, low, high, out);
    }
}

void edgeq_average_pool_int8(int isa, const edgeq_conv_geometry *g, const int8_t *x, int32_t low, int32_t high,
                             int32_t *scratch, int8_t *out) {
    switch (vector_level(isa)) {
#if defined(EDGEQ_X86)
    case 2:
        average_pool_int8_avx512(g, x, low, high, scratch, out);
        return;
    case 1:
        average_pool_int8_avx2(g, x, low, high, scratch, out);
        return;
#endif
    default:
        average_pool_int8_portable(g, x, low, high, scratch, out);
    }
}

/* columns[r - first][(ky, kx, c)] = x[n, iy, ix, c] for the output pixels r = (n, oy, ox) in
 * [first, first + count), or `fill` where the tap falls on padding. */
void edgeq_im2col_rows_f32(const edgeq_conv_geometry *g, const float *x, float fill, size_t first, size_t count,
                           float *columns) {
    const int in_c = g->in_c;
    const size_t patch = (size_t)g->k_h * g->k_w * in_c, pixels = (size_t)g->out_h * g->out_w;
    /* Without dilation, a filter row whose taps are all inside the input is k_w * in_c consecutive
     * floats of the input row: one copy instead of k_w bounds checks and copies. */
    const int span = g->k_w * in_c, contiguous = g->dil_w == 1;
    for (size_t r = first; r < first + count; r++) {
        const int n = (int)(r / pixels), oy = (int)(r % pixels / g->out_w), ox = (int)(r % g->out_w);
        const float *image = x + (size_t)n * g->in_h * g->in_w * in_c;
        float *row = columns + (r - first) * patch;
        const int left = ox * g->stride_w - g->pad_left;
        const int row_inside = contiguous && left >= 0 && left + g->k_w <= g->in_w;
        for (int ky = 0; ky < g->k_h; ky++) {
            const int iy = oy * g->stride_h - g->pad_top + ky * g->dil_h;
            if (row_inside && iy >= 0 && iy < g->in_h) {
                const float *src = image + ((size_t)iy * g->in_w + left) * in_c;
                for (int j = 0; j < span; j++) row[j] = src[j];
                row += span;
                continue;
            }
            for (int kx = 0; kx < g->k_w; kx++, row += in_c) {
                const int ix = ox * g->stride_w - g->pad_left + kx * g->dil_w;
                if (iy < 0 || iy >= g->in_h || ix < 0 || ix >= g->in_w) {
                    for (int c = 0; c < in_c; c++) row[c] = fill;
                } else {
                    const float *src = image + ((size_t)iy * g->in_w + ix) * in_c;
                    for (int c = 0; c < in_c; c++) row[c] = src[c];
                }
            }
        }
    }
}

/* columns[(n, oy, ox)][(ky, kx, c)] = x[n, iy, ix, c], or `fill` where the tap falls on padding. */
void edgeq_im2col_f32(const edgeq_conv_geometry *g, const float *x, float fill, float *columns) {
    edgeq_im2col_rows_f32(g, x, fill, 0, (size_t)g->batch * g->out_h * g->out_w, columns);
}

/* Every native variant this build holds and this CPU runs against a plain C reference float32
 * depthwise convolution and GEMM (bias and clamp included) and float32 max / average pooling, on
 * random shapes: depthwise and GEMM within a few float32 roundings (the variants fuse multiply and add), pools
 * exactly. Built and run by scripts/check_native_kernels.sh, natively or cross-compiled for aarch64
 * under qemu (where the NEON variant cannot be checked from Python). Exit status 0 when all agree. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../runtime/native/src/native.h"

static unsigned long long state = 2463534242ULL;
static int random_below(int n) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (int)(state % (unsigned long long)n);
}
static float random_float(void) { return (float)(random_below(20001) - 10000) / 5000.0f; }

static void random_geometry(edgeq_conv_geometry *g, int multiplier, int dilate) {
    g->batch = 1 + random_below(2);
    g->in_h = 1 + random_below(10);
    g->in_w = 1 + random_below(10);
    g->in_c = 1 + random_below(80);
    g->out_c = g->in_c * multiplier;
    g->k_h = 1 + random_below(4);
    g->k_w = 1 + random_below(4);
    g->stride_h = 1 + random_below(2);
    g->stride_w = 1 + random_below(2);
    g->dil_h = dilate ? 1 + random_below(2) : 1;
    g->dil_w = dilate ? 1 + random_below(2) : 1;
    g->pad_top = random_below(g->k_h);
    g->pad_left = random_below(g->k_w);
    g->out_h = (g->in_h + 2 * g->pad_top - (g->k_h - 1) * g->dil_h - 1) / g->stride_h + 1;
    g->out_w = (g->in_w + 2 * g->pad_left - (g->k_w - 1) * g->dil_w - 1) / g->stride_w + 1;
    if (g->out_h < 1) g->out_h = 1;
    if (g->out_w < 1) g->out_w = 1;
    g->input_zero_point = 0;
}

static float *random_array(size_t n) {
    float *a = (float *)malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) a[i] = random_float();
    return a;
}

static int check_depthwise(int isa, int trial) {
    edgeq_conv_geometry g;
    const int multiplier = trial % 5 == 4 ? 2 : 1;
    random_geometry(&g, multiplier, 1);
    const size_t in_n = (size_t)g.batch * g.in_h * g.in_w * g.in_c, out_n = (size_t)g.batch * g.out_h * g.out_w * g.out_c;
    float *x = random_array(in_n), *w = random_array((size_t)g.k_h * g.k_w * g.out_c), *bias = random_array(g.out_c);
    float *out = (float *)malloc(sizeof(float) * out_n);
    const float low = trial % 3 ? -1.5f : -INFINITY, high = trial % 3 ? 2.5f : INFINITY;
    const int threads = 1 + trial % 2;
    int failures = edgeq_depthwise_f32(isa, &g, multiplier, x, w, trial % 7 ? bias : NULL, low, high, out, threads) != 0;
    for (int n = 0; n < g.batch; n++)
        for (int oy = 0; oy < g.out_h; oy++)
            for (int ox = 0; ox < g.out_w; ox++)
                for (int c = 0; c < g.out_c; c++) {
                    float acc = 0.0f, magnitude = 0.0f;
                    for (int ky = 0; ky < g.k_h; ky++)
                        for (int kx = 0; kx < g.k_w; kx++) {
                            const int iy = oy * g.stride_h - g.pad_top + ky * g.dil_h;
                            const int ix = ox * g.stride_w - g.pad_left + kx * g.dil_w;
                            if (iy < 0 || iy >= g.in_h || ix < 0 || ix >= g.in_w) continue;
                            const float p = x[(((size_t)n * g.in_h + iy) * g.in_w + ix) * g.in_c + c / multiplier] *
                                            w[((size_t)ky * g.k_w + kx) * g.out_c + c];
                            acc += p;
                            magnitude += fabsf(p);
                        }
                    if (trial % 7) acc += bias[c];
                    acc = acc < low ? low : (acc > high ? high : acc);
                    const float got = out[(((size_t)n * g.out_h + oy) * g.out_w + ox) * g.out_c + c];
                    if (fabsf(got - acc) > 1e-6f * (magnitude + 1.0f)) failures++;
                }
    free(x), free(w), free(bias), free(out);
    return failures;
}

static int check_pool(int isa, int trial) {
    edgeq_conv_geometry g;
    random_geometry(&g, 1, 0);
    const int average = trial % 2;
    const size_t in_n = (size_t)g.batch * g.in_h * g.in_w * g.in_c, out_n = (size_t)g.batch * g.out_h * g.out_w * g.in_c;
    float *x = random_array(in_n), *out = (float *)malloc(sizeof(float) * out_n);
    const float low = trial % 3 ? 0.0f : -INFINITY, high = trial % 3 ? 1.5f : INFINITY;
    edgeq_pool_f32(isa, average, &g, x, low, high, out);
    int failures = 0;
    for (int n = 0; n < g.batch; n++)
        for (int oy = 0; oy < g.out_h; oy++)
            for (int ox = 0; ox < g.out_w; ox++)
                for (int c = 0; c < g.in_c; c++) {
                    float value = 0.0f;
                    int count = 0;
                    for (int ky = 0; ky < g.k_h; ky++)
                        for (int kx = 0; kx < g.k_w; kx++) {
                            const int iy = oy * g.stride_h - g.pad_top + ky, ix = ox * g.stride_w - g.pad_left + kx;
                            if (iy < 0 || iy >= g.in_h || ix < 0 || ix >= g.in_w) continue;
                            const float v = x[(((size_t)n * g.in_h + iy) * g.in_w + ix) * g.in_c + c];
                            value = count == 0 ? v : (average ? value + v : (v > value ? v : value));
                            count++;
                        }
                    if (count == 0) value = average ? 0.0f : low;
                    if (average) value /= (float)(count ? count : 1);
                    value = value < low ? low : (value > high ? high : value);
                    if (out[(((size_t)n * g.out_h + oy) * g.out_w + ox) * g.in_c + c] != value) failures++;
                }
    free(x), free(out);
    return failures;
}

static int check_sgemm(int isa, int trial) {
    const int m = 1 + random_below(trial % 4 ? 40 : 300), k = 1 + random_below(trial % 3 ? 70 : 600);
    const int n = 1 + random_below(trial % 5 ? 70 : 200), lda = k + random_below(3);
    float *a = random_array((size_t)m * lda), *w = random_array((size_t)n * k), *bias = random_array((size_t)n + 32);
    float *packed = (float *)malloc(sizeof(float) * edgeq_sgemm_packed_floats(isa, k, n));
    float *c = (float *)malloc(sizeof(float) * (size_t)m * n);
    for (int j = n; j < n + 32; j++) bias[j] = 0.0f; /* padding past the last column */
    const float low = trial % 3 ? -4.0f : -INFINITY, high = trial % 3 ? 3.0f : INFINITY;
    edgeq_sgemm_pack(isa, k, n, w, packed);
    int failures = edgeq_sgemm(isa, m, k, n, a, (size_t)lda, packed, trial % 7 ? bias : NULL, low, high, c,
                               1 + trial % 2) != 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            float acc = 0.0f, magnitude = 0.0f;
            for (int p = 0; p < k; p++) {
                const float product = a[(size_t)i * lda + p] * w[(size_t)j * k + p];
                acc += product;
                magnitude += fabsf(product);
            }
            if (trial % 7) acc += bias[j];
            acc = acc < low ? low : (acc > high ? high : acc);
            if (fabsf(c[(size_t)i * n + j] - acc) > 1e-6f * (magnitude + 1.0f)) failures++;
        }
    free(a), free(w), free(bias), free(packed), free(c);
    return failures;
}

int main(void) {
    int failures = 0, variants = 0;
    for (int isa = 0; isa < EDGEQ_ISA_COUNT; isa++) {
        if (!edgeq_isa_supported(isa)) continue;
        variants++;
        int isa_failures = 0;
        for (int trial = 0; trial < 300; trial++) isa_failures += check_depthwise(isa, trial) + check_pool(isa, trial) + check_sgemm(isa, trial);
        printf("variant %d: %s\n", isa,
               isa_failures ? "MISMATCH" : "float32 equal to the reference on 300 depthwise convolutions, 300 pools and 300 GEMMs");
        failures += isa_failures;
    }
    printf("%d variants checked, %d failures\n", variants, failures);
    return failures || !variants;
}

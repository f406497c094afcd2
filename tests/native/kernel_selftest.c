/* Every native variant this build holds and this CPU runs against a plain C reference convolution
 * and depthwise convolution, on random shapes: the integers must be equal. Built and run by
 * scripts/check_native_kernels.sh, natively or cross-compiled for aarch64 under qemu (the aarch64
 * variants cannot be checked from Python on an x86-64 machine). Exit status 0 when all agree. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../runtime/native/src/native.h"

static unsigned long long state = 88172645463325252ULL;
static int random_below(int n) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (int)(state % (unsigned long long)n);
}
static int8_t random_int8(void) { return (int8_t)(random_below(256) - 128); }
/* Odd trials use small values and a scale of 1, so an accumulator off by one changes the output;
 * even trials the whole int8 range (sign and overflow handling) under a small scale. */
static int small_values;
static int8_t random_value(void) { return small_values ? (int8_t)(random_below(7) - 3) : random_int8(); }

/* The output stage every variant shares: round(double(acc + bias) * scale) + offset, clamped. */
static int8_t reference_stage(int64_t acc, int64_t bias, double scale, int32_t offset) {
    double v = round((double)(acc + bias) * scale);
    int64_t q = (int64_t)v + offset;
    return (int8_t)(q < -128 ? -128 : (q > 127 ? 127 : q));
}

static int check_conv(int isa, int trial) {
    edgeq_conv_geometry g;
    g.batch = 1 + random_below(2);
    g.in_h = 1 + random_below(9);
    g.in_w = 1 + random_below(9);
    g.in_c = 1 + random_below(40);
    g.out_c = 1 + random_below(70);
    g.k_h = 1 + random_below(3);
    g.k_w = 1 + random_below(3);
    g.stride_h = 1 + random_below(2);
    g.stride_w = 1 + random_below(2);
    g.dil_h = g.dil_w = 1;
    g.pad_top = random_below(g.k_h);
    g.pad_left = random_below(g.k_w);
    g.out_h = (g.in_h + 2 * g.pad_top - g.k_h) / g.stride_h + 1;
    g.out_w = (g.in_w + 2 * g.pad_left - g.k_w) / g.stride_w + 1;
    if (g.out_h < 1 || g.out_w < 1) return 0;
    small_values = trial % 2;
    g.input_zero_point = random_value();
    const int depth = g.k_h * g.k_w * g.in_c;
    const size_t x_size = (size_t)g.batch * g.in_h * g.in_w * g.in_c;
    const size_t out_size = (size_t)g.batch * g.out_h * g.out_w * g.out_c;
    int8_t *x = malloc(x_size), *w = malloc((size_t)g.out_c * depth);
    int8_t *packed = malloc(edgeq_packed_bytes(g.out_c, depth)), *out = malloc(out_size), *expected = malloc(out_size);
    int64_t *bias = malloc(sizeof(int64_t) * g.out_c), *kernel_bias = malloc(sizeof(int64_t) * g.out_c);
    double *scale = malloc(sizeof(double) * g.out_c);
    for (size_t i = 0; i < x_size; i++) x[i] = random_value();
    for (int i = 0; i < g.out_c * depth; i++) w[i] = random_value();
    const int shift = edgeq_isa_input_shift(isa);
    for (int c = 0; c < g.out_c; c++) {
        int64_t sum = 0;
        for (int d = 0; d < depth; d++) sum += w[c * depth + d];
        bias[c] = random_below(20001) - 10000;
        kernel_bias[c] = bias[c] - (int64_t)shift * sum;  /* the kernel adds `shift` to every input */
        scale[c] = small_values ? 1.0 : 1.0 / (64.0 * (1 + random_below(64)) * sqrt((double)depth));
        if (small_values) kernel_bias[c] -= bias[c], bias[c] = 0;
    }
    /* reference: zero-point fill on padding, raw int8 products */
    for (int n = 0; n < g.batch; n++)
        for (int oy = 0; oy < g.out_h; oy++)
            for (int ox = 0; ox < g.out_w; ox++)
                for (int c = 0; c < g.out_c; c++) {
                    int64_t acc = 0;
                    for (int ky = 0; ky < g.k_h; ky++)
                        for (int kx = 0; kx < g.k_w; kx++)
                            for (int i = 0; i < g.in_c; i++) {
                                const int iy = oy * g.stride_h - g.pad_top + ky, ix = ox * g.stride_w - g.pad_left + kx;
                                const int v = (iy >= 0 && iy < g.in_h && ix >= 0 && ix < g.in_w)
                                                  ? x[(((size_t)n * g.in_h + iy) * g.in_w + ix) * g.in_c + i]
                                                  : g.input_zero_point;
                                acc += (int64_t)v * w[(size_t)c * depth + (ky * g.k_w + kx) * g.in_c + i];
                            }
                    expected[(((size_t)n * g.out_h + oy) * g.out_w + ox) * g.out_c + c] =
                        reference_stage(acc, bias[c], scale[c], 3);
                }
    edgeq_output_stage stage = {EDGEQ_STAGE_FLOAT_SCALE, 3, -128, 127, NULL, kernel_bias, NULL, NULL, NULL, scale};
    edgeq_pack_weights(g.out_c, depth, w, packed);
    int status = edgeq_conv(isa, &g, x, packed, &stage, out, 1 + random_below(3));
    int bad = status != 0 || memcmp(out, expected, out_size) != 0;
    if (bad)
        printf("isa %d conv trial %d: status %d, %dx%dx%d k%dx%d s%d,%d -> %d differs\n", isa, trial, status, g.in_h,
               g.in_w, g.in_c, g.k_h, g.k_w, g.stride_h, g.stride_w, g.out_c);
    free(x), free(w), free(packed), free(out), free(expected), free(bias), free(kernel_bias), free(scale);
    return bad;
}

static int check_depthwise(int isa, int trial) {
    edgeq_conv_geometry g;
    const int multiplier = 1 + random_below(2);
    g.batch = 1;
    g.in_h = 1 + random_below(9);
    g.in_w = 1 + random_below(9);
    g.in_c = 1 + random_below(80);
    g.out_c = g.in_c * multiplier;
    g.k_h = g.k_w = 3;
    g.stride_h = g.stride_w = 1 + random_below(2);
    g.dil_h = g.dil_w = 1;
    g.pad_top = g.pad_left = 1;
    g.out_h = (g.in_h + 2 - 3) / g.stride_h + 1;
    g.out_w = (g.in_w + 2 - 3) / g.stride_w + 1;
    small_values = trial % 2;
    g.input_zero_point = random_value();
    const size_t x_size = (size_t)g.in_h * g.in_w * g.in_c, out_size = (size_t)g.out_h * g.out_w * g.out_c;
    int8_t *x = malloc(x_size), *out = malloc(out_size), *expected = malloc(out_size);
    int16_t *w = malloc(sizeof(int16_t) * 9 * g.out_c);
    int64_t *bias = malloc(sizeof(int64_t) * g.out_c);
    double *scale = malloc(sizeof(double) * g.out_c);
    for (size_t i = 0; i < x_size; i++) x[i] = random_value();
    for (int i = 0; i < 9 * g.out_c; i++) w[i] = random_value();
    for (int c = 0; c < g.out_c; c++) {
        bias[c] = small_values ? 0 : random_below(2001) - 1000;
        scale[c] = small_values ? 1.0 : 1.0 / (100.0 * (1 + random_below(64)));
    }
    for (int oy = 0; oy < g.out_h; oy++)
        for (int ox = 0; ox < g.out_w; ox++)
            for (int c = 0; c < g.out_c; c++) {
                int64_t acc = 0;
                for (int ky = 0; ky < 3; ky++)
                    for (int kx = 0; kx < 3; kx++) {
                        const int iy = oy * g.stride_h - 1 + ky, ix = ox * g.stride_w - 1 + kx;
                        if (iy < 0 || iy >= g.in_h || ix < 0 || ix >= g.in_w) continue;
                        acc += (int64_t)(x[((size_t)iy * g.in_w + ix) * g.in_c + c / multiplier] - g.input_zero_point) *
                               w[(ky * 3 + kx) * g.out_c + c];
                    }
                expected[((size_t)oy * g.out_w + ox) * g.out_c + c] = reference_stage(acc, bias[c], scale[c], -7);
            }
    edgeq_output_stage stage = {EDGEQ_STAGE_FLOAT_SCALE, -7, -128, 127, NULL, bias, NULL, NULL, NULL, scale};
    int status = edgeq_depthwise(isa, &g, multiplier, x, w, &stage, out, 1);
    int bad = status != 0 || memcmp(out, expected, out_size) != 0;
    if (bad) printf("isa %d depthwise trial %d: status %d, %dx%dx%d m%d differs\n", isa, trial, status, g.in_h, g.in_w,
                    g.in_c, multiplier);
    free(x), free(out), free(expected), free(w), free(bias), free(scale);
    return bad;
}

int main(void) {
    int failures = 0, variants = 0;
    for (int isa = 0; isa < EDGEQ_ISA_COUNT; isa++) {
        if (!edgeq_isa_supported(isa)) continue;
        variants++;
        int isa_failures = 0;
        for (int trial = 0; trial < 300; trial++) isa_failures += check_conv(isa, trial) + check_depthwise(isa, trial);
        printf("variant %d: %s\n", isa, isa_failures ? "MISMATCH" : "equal to the reference on 300 convolutions and 300 depthwise");
        failures += isa_failures;
    }
    printf("%d variants checked, %d failures\n", variants, failures);
    return failures || !variants;
}
